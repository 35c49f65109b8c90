"""Shared fixtures: tiny model folders written once per test session (no network)."""

from __future__ import annotations

import logging

import pytest
import torch

from drf_core.tiny import TinyModelPaths, write_tiny_models

torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModelPaths:
    """Tiny Wan and Qwen2.5-VL folders, written by `drf_core.tiny` into a session temp dir."""
    logging.getLogger("drf_core").setLevel(logging.INFO)
    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))

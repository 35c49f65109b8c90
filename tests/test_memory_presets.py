"""Memory presets (drf_core/memory_presets.py): what they set, "auto", and the check before step 1.

The estimates come from `drf_core/memory_estimates.json`, written by `bench/memory.py`; its tiny rows
are traced again here (fake copies of the tiny models) and must match byte for byte.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from bench.memory import PRESETS, TINY, MemorySettings, preset_settings, trace_tiny
from drf_core import api, memory_presets
from drf_core.config import ModelsConfig, RunConfig, TrainConfig
from drf_core.critics import load_critic
from drf_core.errors import DRFInputError
from drf_core.memory_presets import (
    MEMORY_CHOICES,
    MEMORY_PRESETS,
    apply_run_preset,
    apply_train_preset,
    estimate_card_gib,
    identify_models,
    load_estimates,
    resolve_memory_preset,
)
from drf_core.models import load_video_backend
from drf_core.reward import DRFReward


def test_presets_set_their_settings_and_custom_changes_nothing():
    base = TrainConfig(prompts=["a cat"])
    assert apply_train_preset(base, "custom") == base
    fitted = apply_train_preset(base, "24GB")
    assert fitted.memory == "24GB" and fitted.offload == "phase" and fitted.release_text_encoder
    assert fitted.decode.checkpoint_residual_blocks and fitted.decode.frame_by_frame_backward
    assert fitted.critic_input.max_questions_per_batch == 1
    assert apply_train_preset(base, "16GB").critic_input.height == 336
    assert dataclasses.replace(apply_train_preset(base, "48GB+"), memory="custom") == base
    assert MEMORY_CHOICES[:2] == ["custom", "auto"] and set(MEMORY_PRESETS.names()) == {"48GB+", "24GB", "16GB"}
    with pytest.raises(DRFInputError, match=r"unknown memory preset '12GB'.*24GB"):
        apply_train_preset(base, "12GB")


def test_the_memory_tool_traces_exactly_what_each_preset_sets():
    for name in MEMORY_PRESETS:
        traced = preset_settings(name).train_config(1)
        applied = apply_train_preset(MemorySettings().train_config(1), name)
        assert dataclasses.replace(applied, memory="custom") == traced, name


def test_auto_without_cuda_picks_48gb_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="drf_core.memory_presets"):
        assert resolve_memory_preset("auto", "cpu", "Wan2.1-T2V-1.3B", "7B") == "48GB+"
    assert "not a CUDA device" in caplog.text


def test_a_run_config_gets_the_preset_before_models_load():
    run = RunConfig(models=ModelsConfig("v", "c", video_device="cpu"), train=TrainConfig(prompts=["a"], memory="auto"))
    fitted = apply_run_preset(run)
    assert fitted.train.memory == "48GB+" and fitted.train.offload == "none"  # the CPU: nothing to fit
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, memory="16GB"))
    assert apply_run_preset(run).train.offload == "phase"


def test_stored_tiny_estimates_match_the_tool():
    row = next(r for r in load_estimates()["rows"] if r["video_model"] == "tiny" and r["preset"] == "24GB")
    summary = trace_tiny(dataclasses.replace(TINY, **PRESETS["24GB"]))
    assert summary["peak_bytes"] == row["peak_bytes"]


@pytest.fixture(scope="module")
def tiny_pair(tiny_models):
    return load_video_backend(tiny_models.wan, "fp32", "cpu"), load_critic(tiny_models.qwen, "fp32", "cpu")


def test_a_run_that_will_not_fit_stops_before_step_1_naming_the_preset(tiny_pair, monkeypatch):
    backend, critic = tiny_pair
    config = dataclasses.replace(TINY.train_config(1), memory="48GB+")
    reward = DRFReward(critic, config.reward, config.critic_input)
    assert identify_models(backend, reward) == ("tiny", "tiny")
    need = {name: estimate_card_gib(name, "tiny", "tiny") for name in MEMORY_PRESETS}
    free = (need["48GB+"] + min(need.values())) / 2
    assert need["48GB+"] > free
    advised = next(name for name in MEMORY_PRESETS if need[name] <= free)  # the largest preset that fits
    monkeypatch.setattr(memory_presets, "free_memory_gib", lambda device: free)
    with pytest.raises(DRFInputError, match=rf"needs about {need['48GB+']:.1f} GiB.*set memory to '{advised}'"):
        api.fit_memory(config, backend, reward)
    monkeypatch.setattr(memory_presets, "free_memory_gib", lambda device: need["48GB+"] + 0.1)
    assert api.fit_memory(config, backend, reward).memory == "48GB+"

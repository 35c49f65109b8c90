"""Which ComfyUI V3 API the bridge builds nodes with, on fake `comfy_api` layouts (no ComfyUI needed).

The real ComfyUI 0.3.64 side (it must pick `comfy_api.v0_0_2`) is checked in `test_comfyui_nodes.py`.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def version_module(pack_nodes):
    return importlib.import_module("comfyui_diffusiondrf.nodes.comfy_api_version")


def fake_comfy(versions: list[str] | None, modules: dict[str, object]):
    """An import function over fake modules: `comfy_api.version_list` lists `versions` (None: absent)."""
    table: dict[str, ModuleType] = {}
    if versions is not None:
        table["comfy_api.version_list"] = SimpleNamespace(
            supported_versions=[SimpleNamespace(VERSION=v) for v in versions]
        )
    for name, io in modules.items():
        table[name] = SimpleNamespace(io=io) if io is not None else SimpleNamespace()

    def import_module(name: str):
        if name not in table:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return table[name]

    return import_module


def test_versioned_module_names_newest_first(version_module):
    assert version_module.versioned_modules(["latest", "0.0.1", "0.0.10", "0.0.2"]) == [
        "comfy_api.v0_0_10",
        "comfy_api.v0_0_2",
        "comfy_api.v0_0_1",
    ]


def test_newest_versioned_api_with_io_wins_over_latest(version_module):
    imports = fake_comfy(
        ["latest", "0.0.3", "0.0.2", "0.0.1"],
        {"comfy_api.v0_0_2": "io 0.0.2", "comfy_api.v0_0_1": None, "comfy_api.latest": "io latest"},
    )
    # 0.0.3 is listed but not importable, 0.0.1 has no io: 0.0.2 is the one.
    assert version_module.pick_io(imports) == ("io 0.0.2", "comfy_api.v0_0_2")


def test_falls_back_to_latest_without_a_versioned_api(version_module):
    assert version_module.pick_io(fake_comfy(None, {"comfy_api.latest": "io latest"})) == (
        "io latest",
        "comfy_api.latest",
    )
    only_latest = fake_comfy(["latest"], {"comfy_api.latest": "io latest"})
    assert version_module.pick_io(only_latest) == ("io latest", "comfy_api.latest")


def test_errors_from_comfyui_are_told_apart_from_missing_packages(pack_nodes):
    pack = importlib.import_module("comfyui_diffusiondrf")
    assert pack._raised_by_comfyui(ImportError("cannot import name 'io'", name="comfy_api.latest"))
    assert pack._raised_by_comfyui(AttributeError("no ProgressBar", obj=ModuleType("comfy.utils")))
    assert not pack._raised_by_comfyui(ModuleNotFoundError("No module named 'peft'", name="peft"))
    assert not pack._raised_by_comfyui(AttributeError("x", obj=ModuleType("torch")))

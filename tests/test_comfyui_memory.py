"""The pack's own models (critic, diffusers video model) under ComfyUI's memory manager (set COMFYUI_DIR).

Runs `comfy_scripts/memory_host.py` with ComfyUI's interpreter on the tiny models. The server-level
check (/free through the HTTP API) is in test_comfyui_nodes.py.
"""

from __future__ import annotations

import pytest

from tests.comfy_checkout import comfyui_checkout
from tests.comfy_pack import comfy_script_report

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> dict:
    comfyui_checkout()  # skip before building the tiny models
    tiny_models = request.getfixturevalue("tiny_models")
    work = tmp_path_factory.mktemp("memory_host")
    return comfy_script_report(
        "memory_host.py", work, "--wan", tiny_models.wan, "--qwen", tiny_models.qwen, timeout=600
    )


def test_the_critic_is_one_of_comfyuis_loaded_models(report):
    assert report["critic_loaded_after_get"]
    assert len(report["listed_after_critic"]) == 1 and report["listed_after_critic"][0].startswith("critic ")


def test_unload_models_and_memory_requests_unload_the_critic_and_its_next_use_loads_it_back(report):
    assert report["critic_loaded_after_unload_all"] is False
    assert report["critic_loaded_after_forward"] is True
    assert report["logits_equal_after_reload"] and report["pixel_grad_equal_after_reload"]
    assert report["critic_loaded_after_free_memory"] is False
    assert report["critic_loaded_after_get_again"] is True
    assert report["cache_loads_critic"] == 1  # moved by ComfyUI, never read from disk again


def test_a_diffusers_video_model_is_managed_per_module_and_a_released_text_encoder_leaves(report):
    parts = [name.rsplit(" ", 1)[1] for name in report["listed_with_video_model"] if name.startswith("video_model")]
    assert sorted(parts) == ["text_encoder", "transformer", "vae"]
    after = [name.rsplit(" ", 1)[1] for name in report["listed_after_text_encoder_release"]]
    assert sorted(after) == ["model", "transformer", "vae"]

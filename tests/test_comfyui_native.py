"""The ComfyUI backend (Video Model from ComfyUI) against core ComfyUI nodes (set COMFYUI_DIR; skipped otherwise).

Runs `comfy_scripts/native_backend.py` with ComfyUI's interpreter on the tiny Wan in ComfyUI's own
format, a full-size Wan 2.1 VAE with random weights (ComfyUI fixes the VAE's size) and conditioning
tensors in place of the text encoder: ComfyUI builds UMT5-XXL at its fixed full size, so the CLIP
path is not run here; the CONDITIONING path (core CLIP Text Encode's output) is.
"""

from __future__ import annotations

import pytest

from drf_core.tiny import write_tiny_wan_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_pack import comfy_script_report

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> dict:
    comfyui_checkout()  # skip before building the tiny models
    tiny_models = request.getfixturevalue("tiny_models")
    work = tmp_path_factory.mktemp("native")
    model_file = write_tiny_wan_native(tiny_models.wan, work / "wan_tiny_native.safetensors")
    return comfy_script_report("native_backend.py", work, "--model", model_file, timeout=1800)


def test_sampling_equals_core_ksampler_and_vae_decode(report):
    assert report["weights_are_inference_tensors"]  # loaded as ComfyUI's executor loads them
    assert report["vae_class"] == "comfy.ldm.wan.vae.WanVAE"
    labels = {"euler/simple", "uni_pc/simple", "uni_pc/simple shift 3"}
    assert set(report["ksampler_equality"]) == labels
    for label, result in report["ksampler_equality"].items():
        assert result["latent_max_abs_diff"] == 0.0, label
        assert result["frames_max_abs_diff"] == 0.0, label
        assert result["latent_scale"] > 1.0, label  # not an empty result
    # the shift core ModelSamplingSD3 sets reaches our sampling (the result differs from Wan's default 8)
    shifted = report["ksampler_equality"]["uni_pc/simple shift 3"]["latent_scale"]
    assert shifted != report["ksampler_equality"]["uni_pc/simple"]["latent_scale"]


def test_decoding_some_frames_equals_those_frames_of_the_whole_decode(report):
    assert report["frame_subset_frames"] == 5
    assert report["frame_subset_max_abs_diff"] == 0.0


def test_the_frame_by_frame_backward_keeps_frames_and_gradient(report):
    """decode.frame_by_frame_backward on ComfyUI's Wan VAE, whole and in 2x2 tiles: the same frames, the same
    gradient (up to float32 summation order), and the gradient reaches the first latent frame through the caches."""
    assert set(report["frame_by_frame"]) == {"whole", "tiles 2"}
    for name, result in report["frame_by_frame"].items():
        assert result["frames_max_abs_diff"] == 0.0, name
        assert result["grad_max_abs_diff"] <= 1e-5 * result["grad_scale"], name
        assert result["first_latent_frame_grad"] > 0, name
    # The tiles cut ComfyUI's decoder into a trunk and a tail that compute exactly what it computes.
    assert report["split"]["max_abs_diff"] == 0.0
    assert report["split"]["halo"] > 0 and report["split"]["trunk_slots"] > 0


def test_inference_tensors_fail_without_the_fix(report):
    assert "Inference tensors cannot be saved for backward" in report["without_fix_error"]


def test_gradients_reach_only_the_adapters(report):
    assert report["adapter_tensors"] == 2 * report["down_tensors"] == 40  # attention + ffn, 2 blocks
    # ComfyUI's adapters start with down = 0, so at the first step only `down` gets gradient
    assert report["down_with_gradient"] == report["down_tensors"]
    assert report["all_grads_finite"]
    assert report["base_params_with_grad"] == report["vae_params_with_grad"] == report["base_requires_grad"] == 0
    assert report["adapted_clone_loaded_by_comfyui"]


def test_trained_lora_round_trip_through_core_nodes(report):
    rewards = report["train_rewards"]
    assert len(rewards) == 2 and all(r == r for r in rewards)
    assert all(".lora_" in k or k.endswith(".alpha") for k in report["lora_keys"])
    assert report["lora_keys"][0].startswith("diffusion_model.blocks.")
    assert report["patched_layers"] == 20
    assert report["lora_changes_weights"] > 1e-3
    assert report["patched_weight_max_abs_diff"] <= 1e-6
    assert report["core_changed_other_weights"] == []
    assert report["lora_changes_sample"] > 1e-3
    assert report["sample_video_lora_vs_core_max_abs_diff"] == 0.0
    assert report["sample_video_base_vs_core_max_abs_diff"] == 0.0


def test_comfyui_unloads_the_video_model(report):
    assert report["loaded_before_unload"] >= 1
    assert report["loaded_after_unload"] == 0


def test_a_stop_ends_comfyuis_sampling_thread(report):
    assert report["stop_error"] and "step 3 of 4" in report["stop_error"]
    assert report["steps_before_stop"] == 2
    assert report["threads_left"] == 0

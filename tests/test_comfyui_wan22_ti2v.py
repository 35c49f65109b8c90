"""Wan 2.2 TI2V-5B through Video Model from ComfyUI (set COMFYUI_DIR; skipped otherwise).

Runs `comfy_scripts/wan22_ti2v.py` with ComfyUI's interpreter: a tiny TI2V-5B in ComfyUI's format
(`drf_core.tiny.write_tiny_wan_ti2v_native`), the Wan 2.2 VAE at the size ComfyUI fixes (705 M
parameters, random weights), conditioning tensors for the text; ComfyUI's own TI2V-5B template gives
the sampler, scheduler, steps, CFG, shift and frame rate. About a minute; 6.5 GB of memory at most.
"""

from __future__ import annotations

import pytest

from drf_core.tiny import write_tiny_wan_ti2v_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_pack import comfy_script_report

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    comfyui_checkout()  # skip before building the tiny model
    work = tmp_path_factory.mktemp("wan22_ti2v")
    model = write_tiny_wan_ti2v_native(work / "wan2.2_ti2v_tiny.safetensors")
    return comfy_script_report("wan22_ti2v.py", work, "--model", model, timeout=1200)


def test_comfyui_loads_the_tiny_model_as_ti2v_5b_with_the_wan22_vae(report):
    assert report["model_class"] == "WAN22"
    assert report["vae_class"] == "comfy.ldm.wan.vae2_2.WanVAE"
    assert report["vae_parameters"] > 700_000_000  # ComfyUI's fixed size, not a small stand-in
    assert report["template"]["vae_file"] == "wan2.2_vae.safetensors"


def test_the_backend_follows_the_template(report):
    template, backend = report["template"], report["backend"]
    assert (backend["sampler"], backend["scheduler"]) == (template["sampler"], template["scheduler"])
    assert backend["shift"] == template["shift"]
    assert backend["frame_rate"] == template["fps"] == 24
    assert backend["vae"] == "Wan 2.2 VAE"


def test_sampling_equals_the_templates_ksampler_and_vae_decode(report):
    sampling = report["sampling"]
    assert sampling["noise_shape"] == sampling["empty_latent_shape"] == [1, 48, 2, 2, 2]  # 16x, 4n+1 frames
    assert sampling["latent_max_abs_diff"] == 0.0
    assert sampling["latent_scale"] > 1.0  # not an empty result
    assert sampling["frames_shape"] == [1, 5, 3, 32, 32] and sampling["core_pixels_shape"] == [5, 32, 32, 3]
    assert sampling["frames_max_abs_diff"] == 0.0


def test_decoding_some_frames_equals_those_frames_of_the_whole_decode(report):
    assert report["frame_subsets"] == {"[0]": 0.0, "[2, 4]": 0.0}


def test_the_decode_options_backward_agree_on_the_wan22_vae(report):
    """Frame by frame (residual blocks checkpointed, caches on the host) vs the plain decode: the same frames,
    the same gradient (up to float32 summation order), reaching the first latent frame."""
    result = report["decode_backward"]
    assert result["frames_max_abs_diff"] == 0.0
    assert result["grad_max_abs_diff"] <= 1e-5 * result["grad_scale"]
    assert result["first_latent_frame_grad"] > 0


def test_the_tiled_backward_agrees_on_the_wan22_vae(report):
    """decode.backward_tiles 2 (the 16GB preset) on the Wan 2.2 VAE: the plain decode's frames and gradient
    (up to float summation order), through a trunk/tail split that equals the decoder exactly."""
    tiled = report["tiled_backward"]
    assert tiled["split_max_abs_diff"] == 0.0 and tiled["halo"] > 0 and tiled["trunk_slots"] > 0
    assert tiled["tail_input_width"] > 2 * tiled["halo"]  # a tile and its halo are narrower than the frame
    assert tiled["frames_max_abs_diff"] == 0.0
    assert tiled["grad_max_abs_diff"] <= 1e-3 * tiled["grad_scale"]


def test_a_training_step_puts_gradient_on_the_adapters_only(report):
    gradients = report["gradients"]
    assert gradients["adapters"] == gradients["with_gradient"] == 20  # attention + ffn, 2 blocks
    assert gradients["finite"]
    assert gradients["model_weights_with_grad"] == gradients["vae_weights_with_grad"] == 0


def test_the_trained_lora_through_core_lora_loader_equals_sample_video(report):
    lora = report["lora"]
    assert lora["layers"] == 20
    assert lora["latent_max_abs_diff"] == 0.0
    assert lora["frames_max_abs_diff"] == 0.0 and lora["node_frames_shape"] == [1, 32, 32, 3]
    assert lora["differs_from_base"] > 0.01 * lora["latent_scale"]


def test_the_wan21_vae_is_refused_with_the_one_to_connect(report):
    message = report["wrong_vae_error"]
    assert message and "48 latent channels" in message and "wan2.2_vae.safetensors" in message


def test_training_warns_when_the_critic_is_told_another_frame_rate(report):
    warned = report["frame_rate_warnings"]
    assert len(warned["video_fps 16 (the default)"]) == 1
    assert "makes 24 fps videos; set video_fps to 24" in warned["video_fps 16 (the default)"][0]
    assert warned["video_fps 24"] == []

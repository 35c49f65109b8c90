"""Flux dev (an image family) through Video Model from ComfyUI (set COMFYUI_DIR; skipped otherwise).

Runs `comfy_scripts/flux_image.py` with ComfyUI's interpreter. ComfyUI's Flux detection fixes the width
(3072, 24 heads, text width 4096) and reads only the block counts, so the model is the smallest Flux it
loads (one double and one single block, 545 million parameters, random weights) from a file through core
UNETLoader; Flux's VAE at its fixed size through core VAELoader; the text as conditioning tensors through
core FluxGuidance (T5-XXL and CLIP-L have fixed sizes). The template's settings: euler, simple, cfg 1.0,
guidance 3.5, EmptySD3LatentImage. Critique Video and Evaluate LoRA score its images in image mode, as
the trainer does; num_frames other than 1 is refused.
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
    work = tmp_path_factory.mktemp("flux")
    return comfy_script_report("flux_image.py", work, "--qwen", tiny_models.qwen, timeout=1200)


def test_core_unet_loader_loads_the_smallest_flux(report):
    assert report["model_class"] == "Flux" and report["family"] == "flux"
    assert report["model_config"] == {"image_model": "flux", "hidden_size": 3072, "depth": 1, "guidance_embed": True}
    assert report["vae_class"] == "AutoencodingEngine"


def test_sampling_equals_core_ksampler_and_sample_video_equals_vae_decode(report):
    sampling = report["sampling"]
    assert sampling["latent_shape"] == [1, 16, 4, 4] and sampling["frames_shape"] == [1, 32, 32, 3]  # one image
    assert sampling["latent_max_abs_diff"] == 0.0 and sampling["latent_scale"] > 1.0
    assert sampling["pixels_max_abs_diff"] == 0.0 and sampling["pixels_std"] > 0.01


def test_gradient_reaches_every_adapter_and_no_weight_through_the_image_critic(report):
    gradients = report["gradients"]
    assert gradients["frames_shape"] == [1, 1, 3, 32, 32] and gradients["critic_modes"] == ["images"]
    assert gradients["adapters"] == gradients["with_gradient"] == 10 and gradients["finite"]
    assert set(gradients["adapter_layers"]) >= {"img_attn.qkv", "txt_attn.proj", "linear1", "linear2", "img_mlp.2"}
    assert gradients["model_weights_with_grad"] == 0 and gradients["vae_weights_with_grad"] == 0
    # ComfyUI's Flux blocks add to tensors in place; the gradient still equals the reward's central difference.
    derivative = report["directional_derivative"]
    assert derivative["autograd"] == pytest.approx(derivative["central_difference"], rel=0.05)


def test_training_asks_the_critic_about_a_picture_without_motion_questions(report):
    training = report["training"]
    assert training["critic_modes"] == ["images"] and training["questions_asked"] > 0
    assert training["temporal_questions_in_set"] > 0 and training["temporal_questions_asked"] == []
    assert training["lora_family"] == "flux" and training["lora_keys"] == 3 * 6  # attention preset: 6 layers
    assert all(key.startswith("diffusion_model.double_blocks.0.") for key in training["lora_key_examples"])


def test_the_saved_lora_in_core_lora_loader_equals_sample_video_with_it(report):
    lora = report["lora"]
    assert lora["latent_max_abs_diff"] == 0.0 and lora["pixels_max_abs_diff"] == 0.0
    assert lora["lora_changes_latents"] > 0.1 and lora["lora_changes_pixels"] > 0.01


def test_critique_video_scores_the_one_frame_image_as_the_trainer_does(report):
    critique = report["critique"]
    assert critique["critic_modes"] == ["images"] and critique["questions_asked"] > 0
    assert critique["temporal_questions_asked"] == [] and critique["says_still_image"]
    assert critique["total"] == critique["trainer_reward"]  # exact: the trainer's code path


def test_evaluate_lora_scores_flux_samples_as_still_images(report):
    evaluate = report["evaluate"]
    assert evaluate["critic_modes"] == ["images"] and evaluate["questions_asked"] > 0
    assert evaluate["temporal_questions_asked"] == [] and evaluate["says_one_image"]
    # The base sample at the node's seed is Sample Video's image: the trainer's reward for it, as Critique Video's.
    assert evaluate["base_cell"] == f"{report['critique']['trainer_reward']:+.4f}"
    assert evaluate["win_rate"] in (0.0, 0.5, 1.0)


def test_num_frames_other_than_one_is_refused_before_any_expensive_work(report):
    refused = report["num_frames_refused"]
    for node in ("sample", "train", "evaluate"):
        message = refused["messages"][node]
        assert message is not None, f"{node} accepted num_frames 5 for Flux"
        assert message.startswith("DRFInputError: num_frames is 5") and "image model" in message
        assert "set num_frames to 1 on Train LoRA, Sample Video and Evaluate LoRA" in message
    assert refused["prompts_encoded"] == 0

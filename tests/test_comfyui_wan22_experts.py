"""Wan 2.2 A14B's two experts through Video Model from ComfyUI (set COMFYUI_DIR; skipped otherwise).

Runs `comfy_scripts/wan22_experts.py` with ComfyUI's interpreter: two tiny Wans in ComfyUI's format
(different seeds) as the high-noise and the low-noise expert, the Wan 2.1 VAE at ComfyUI's fixed size,
conditioning tensors for the text (ComfyUI builds UMT5-XXL at its fixed size).
"""

from __future__ import annotations

import pytest

from drf_core.tiny import write_tiny_wan, write_tiny_wan_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_pack import comfy_script_report

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> dict:
    comfyui_checkout()  # skip before building the tiny models
    tiny_models = request.getfixturevalue("tiny_models")
    work = tmp_path_factory.mktemp("wan22")
    high = write_tiny_wan_native(tiny_models.wan, work / "high_noise.safetensors")
    low = write_tiny_wan_native(write_tiny_wan(work / "low_noise_folder", seed=1), work / "low_noise.safetensors")
    return comfy_script_report("wan22_experts.py", work, "--high", high, "--low", low, timeout=1200)


def test_sampling_equals_the_templates_two_ksampler_advanced(report):
    assert set(report["chain"]) == {"euler switch 2/4", "uni_pc switch 2/4", "uni_pc switch 1/4"}
    for label, result in report["chain"].items():
        assert result["latent_max_abs_diff"] == 0.0, label
        assert result["differs_from_high_only"] > 0.1 * result["scale"], label  # the low-noise expert ran


def test_gradients_reach_the_trained_experts_adapters_only(report):
    low = report["gradients"]["low_noise K=1"]
    assert low["adapters"] == low["with_gradient"] > 0 and low["finite"] and low["adapters_on_the_trained_expert"]
    assert low["model_weights_with_grad"] == 0
    high_k1 = report["gradients"]["high_noise K=1"]
    assert not high_k1["loss_requires_grad"] and high_k1["with_gradient"] == 0
    through = report["gradients"]["high_noise K=4"]  # K spans the switch: back through the low-noise steps
    assert through["adapters"] == through["with_gradient"] > 0 and through["finite"]
    assert through["model_weights_with_grad"] == 0 and through["adapters_on_the_trained_expert"]


def test_the_lora_names_its_expert_and_is_refused_on_the_other(report):
    assert report["lora_metadata_expert"] == "low_noise"
    assert "set its trained_expert to low_noise" in report["wrong_expert_error"]


def test_training_the_high_noise_expert_with_k1_says_what_to_change(report):
    message = report["high_noise_k1_training_error"]
    assert message and "truncated_backprop_steps" in message and "low-noise expert" in message


def test_both_experts_get_gradient_once_it_reaches_the_high_noise_steps(report):
    gradients = report["both_gradients"]
    for expert in ("high_noise", "low_noise"):
        spanning = gradients[f"{expert} K=4"]  # K spans the switch: every adapter of both experts
        assert spanning["adapters"] == spanning["with_gradient"] > 0 and spanning["finite"], expert
    assert gradients["low_noise K=1"]["with_gradient"] == gradients["low_noise K=1"]["adapters"] > 0
    assert gradients["high_noise K=1"]["with_gradient"] == 0  # K = 1 runs only the low-noise expert
    assert gradients["model weights with grad K=1"] == gradients["model weights with grad K=4"] == 0
    message = report["both_k1_training_error"]
    assert message and "truncated_backprop_steps to at least 3" in message and "low_noise" in message


def test_a_lora_on_both_experts_is_two_files_core_nodes_apply_as_sample_video_does(report):
    lora = report["both_lora"]
    assert lora["metadata_expert"] == "both"
    high_file, low_file = "drf/a14b_high_noise_00001.safetensors", "drf/a14b_low_noise_00001.safetensors"
    assert sorted(lora["saved_names"]) == [high_file, low_file] and lora["file_experts"] == ["high_noise", "low_noise"]
    assert lora["file_pairs"] == {high_file: low_file, low_file: high_file}  # each file names its partner
    assert lora["file_layers"][high_file] == lora["trained_layers"]["high_noise"] > 0
    assert lora["file_layers"][low_file] == lora["trained_layers"]["low_noise"] > 0
    assert all(lora["loaded_equal_trained"].values())  # Load LoRA of either file brings back both, exactly
    assert lora["core_vs_preview_max_abs_diff"] == 0.0  # two LoraLoaderModelOnly + the template's chain
    assert lora["lora_changes_the_chain"] > 0
    assert all(change > 0 for change in lora["changes_per_expert"].values())  # both files carry a trained LoRA


def test_a_two_expert_lora_is_refused_where_it_cannot_go_whole(report):
    errors = report["both_placement_errors"]
    assert "set its trained_expert to both" in errors["both on low_noise"]
    assert "connect the A14B experts" in errors["both on one MODEL"]


def test_switching_the_adapters_off_gives_the_base_model_for_the_drift_penalty(report):
    switched = report["adapters_disabled"]
    assert switched["off_vs_base_chain"] == 0.0 and switched["on_vs_core_lora"] == 0.0
    assert switched["drift"] > 0 and switched["drift_requires_grad"]

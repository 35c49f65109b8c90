"""Training on fp8 video-model weights loaded by core Load Diffusion Model (set COMFYUI_DIR; skipped otherwise).

Runs `comfy_scripts/fp8_weights.py` with ComfyUI's interpreter on the tiny Wan in ComfyUI's format, loaded
`default` (fp32), `fp8_e4m3fn`, `fp8_e4m3fn_fast` and as an `fp8_scaled` checkpoint.
"""

from __future__ import annotations

import pytest

from drf_core.tiny import write_tiny_wan_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_pack import comfy_script_report

pytestmark = pytest.mark.comfyui

FP8_WAYS = ("fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_scaled")
# fp8 keeps 3 mantissa bits: the measured cosine of the LoRA gradient with the fp32 run's is 0.993 (e4m3fn)
# and 0.994 (scaled) on the tiny Wan; a LoRA sitting on uncast or wrongly scaled weights falls far below.
MIN_GRAD_COSINE = 0.98


@pytest.fixture(scope="module")
def report(request, tmp_path_factory) -> dict:
    comfyui_checkout()  # skip before building the tiny models
    tiny_models = request.getfixturevalue("tiny_models")
    work = tmp_path_factory.mktemp("fp8")
    model = write_tiny_wan_native(tiny_models.wan, work / "tiny_wan.safetensors")
    return comfy_script_report("fp8_weights.py", work, "--model", model, timeout=1200)


def test_weights_stay_fp8_and_sampling_equals_core_ksampler(report):
    assert report["default"]["q_weight_dtype"] == "float32"
    for way in FP8_WAYS:
        assert report[way]["q_weight_dtype"] == "float8_e4m3fn", way
        assert report[way]["ksampler_max_abs_diff"] == 0.0, way
    assert report["fp8_scaled"]["q_scaled"] and not report["fp8_e4m3fn"]["q_scaled"]


def test_lora_gradients_on_fp8_weights_are_finite_adapter_only_and_close_to_fp32(report):
    for way in ("default", *FP8_WAYS):
        assert report[way]["grads_finite"] and report[way]["model_params_with_grad"] == 0, way
    for way in FP8_WAYS:
        assert MIN_GRAD_COSINE <= report[way]["grad_cosine_vs_fp32"] < 1.0, way


def test_an_adapted_layer_computes_with_the_trained_weight(report):
    for way in ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast"):
        assert report[way]["forward_vs_trained_weight"] == 0.0, way
    assert report["fp8_scaled"]["forward_vs_trained_weight"] < 1e-5  # (W_q + dW / s) * s against W_q * s + dW


def test_core_lora_loader_gives_the_trained_weights_up_to_fp8_rounding(report):
    assert report["default"]["core_lora_vs_trained"] <= 1e-6
    for way in FP8_WAYS:  # ComfyUI rounds W + dW stochastically to a neighbouring fp8 value
        assert report[way]["core_lora_vs_trained"] < 2.0, way

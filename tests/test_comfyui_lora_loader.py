"""Our ComfyUI-format LoRA, applied by a REAL ComfyUI's own loader (needs COMFYUI_DIR; skipped otherwise).

The test builds a small diffusers `WanTransformer3DModel`, writes its weights in the original Wan
layout, trains-like perturbs a LoRA on every Linear/Conv layer, exports it with `save_lora(...,
"comfyui")`, and runs `comfy_scripts/apply_lora.py` with ComfyUI's interpreter. That script loads
the model with `comfy.sd.load_diffusion_model_state_dict` (ComfyUI's own family detection), applies
the LoRA with `comfy.sd.load_lora_for_models` (as core LoraLoaderModelOnly does) and patches the
weights. Checked: ComfyUI recognises the model without missing/unexpected weights, loads every LoRA
key (no "lora key not loaded"), changes exactly the LoRA layers' weights, and each patched weight
equals `W + (alpha / rank) * B @ A`.

ComfyUI derives the number of heads as `dim // 128` and fixes the text width at 4096, so the models
here (and `drf_core.tiny`'s) have dim 128 (one head of 128) and text_dim 4096.

`test_comfyui_applies_a_trained_demo_lora` does what a user does: trains a LoRA on the tiny Wan folder
with the engine (`api.train_lora`, as the demo does), saves it in ComfyUI format, and has ComfyUI
apply it to the same transformer written as an original-layout checkpoint (`write_tiny_wan_native`).

Environment: COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (default
$COMFYUI_DIR/../venv/bin/python).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from drf_core.config import LoRAConfig
from drf_core.lora import add_lora, lora_module_weights, lora_parameters, save_lora
from drf_core.models.wan_keys import diffusers_to_native_wan_module, native_wan_state_dict
from tests.comfy_checkout import comfyui_checkout

pytestmark = pytest.mark.comfyui

SCRIPT = Path(__file__).parent / "comfy_scripts" / "apply_lora.py"
RANK, ALPHA = 4, 6.0


def _comfyui() -> tuple[Path, Path]:
    return comfyui_checkout()


def _wan_for_comfyui(image_to_video: bool):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(3)
    extra = {"in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 128} if image_to_video else {"in_channels": 16}
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=1,
        attention_head_dim=128,
        out_channels=16,
        text_dim=4096,  # fixed in ComfyUI's Wan model (UMT5-XXL width)
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=32,
        **extra,
    ).eval()


def _native_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in native_wan_state_dict(model.state_dict()).items()}


@pytest.mark.parametrize("image_to_video", [False, True], ids=["t2v", "i2v"])
def test_comfyui_applies_every_key_of_our_lora(tmp_path, image_to_video):
    comfy_dir, python = _comfyui()
    model = _wan_for_comfyui(image_to_video)
    model_file = tmp_path / "wan_native.safetensors"
    safetensors.torch.save_file(_native_state_dict(model), str(model_file))

    layer_types = (nn.Linear, nn.Conv3d)
    targets = [name for name, module in model.named_modules() if isinstance(module, layer_types)]
    add_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA), targets)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    files = {
        fmt: save_lora(
            tmp_path / f"drf_{fmt}.safetensors",
            model,
            LoRAConfig(rank=RANK, alpha=ALPHA),
            fmt,
            diffusers_to_native_wan_module,
            {"family": "wan"},
        )
        for fmt in ("comfyui", "diffusers")
    }

    # The diffusers-format file is the negative control: ComfyUI must NOT apply diffusers names to Wan,
    # and must say so, which shows that the warning capture and the weight comparison can fail.
    command = [str(python), str(SCRIPT), "--comfyui-dir", str(comfy_dir), "--model", str(model_file)]
    command += ["--lora", str(files["comfyui"]), "--lora", str(files["diffusers"]), "--out-dir", str(tmp_path)]
    run = subprocess.run(command, cwd=comfy_dir, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"ComfyUI script failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    ours, control = report["loras"]
    summary = {k: v for k, v in ours.items() if k not in ("max_abs_diff", "changed_weights")}
    summary["largest_difference_to_expected"] = max(ours["max_abs_diff"].values(), default=None)
    print(json.dumps({**report, "loras": None, "comfyui_lora": summary}, indent=1))  # noqa: T201

    assert report["model_class"] == "WAN21"
    assert report["model_type"] == ("i2v" if image_to_video else "t2v")
    assert report["load_warnings"] == [], "ComfyUI found missing/unexpected weights in our original-layout model"
    assert ours["lora_warnings"] == [], "ComfyUI did not apply every LoRA key"
    assert ours["missing_weights"] == []
    expected_weights = {f"diffusion_model.{diffusers_to_native_wan_module(m)}.weight" for m in targets}
    assert ours["lora_layers"] == len(targets)
    assert set(ours["changed_weights"]) == expected_weights, "ComfyUI changed other weights than the LoRA layers"
    assert ours["largest_lora_delta"] > 1e-3  # the LoRA really changes the weights
    assert max(ours["max_abs_diff"].values()) <= 1e-6, "ComfyUI's patched weights differ from W + alpha/rank B@A"

    assert any("lora key not loaded" in message for message in control["lora_warnings"])
    assert control["changed_weights"] == []

    # Our side: ComfyUI's patched weights equal the weights our in-memory LoRA model computes with.
    patched = safetensors.torch.load_file(str(tmp_path / "patched_0.safetensors"))
    for name, weights in lora_module_weights(model).items():
        layer = model.get_submodule(name)
        base = layer.base_layer.weight.detach()
        delta = (weights.up.flatten(1) @ weights.down.flatten(1)).reshape(base.shape)
        expected = base + layer.scaling["drf"] * delta
        got = patched[f"diffusion_model.{diffusers_to_native_wan_module(name)}.weight"]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"patched weight of {name}")


def _apply_with_comfyui(comfy_dir: Path, python: Path, model_file: Path, loras: list[Path], out_dir: Path) -> dict:
    command = [str(python), str(SCRIPT), "--comfyui-dir", str(comfy_dir), "--model", str(model_file)]
    for lora in loras:
        command += ["--lora", str(lora)]
    run = subprocess.run(
        [*command, "--out-dir", str(out_dir)], cwd=comfy_dir, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"ComfyUI script failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return json.loads((out_dir / "report.json").read_text())


def test_comfyui_applies_a_trained_demo_lora(tiny_models, tmp_path):
    comfy_dir, python = _comfyui()
    from drf_core.api import save_trained_lora, train_lora
    from drf_core.config import CriticInputConfig, DecodeConfig, SamplerConfig, TrainConfig, VideoSpec
    from drf_core.critics import load_critic
    from drf_core.decompose import decompose
    from drf_core.models import load_video_backend
    from drf_core.reward import DRFReward
    from drf_core.tiny import write_tiny_wan_native

    prompt = "two red apples on a wooden table, the camera slowly pans left"
    config = TrainConfig(
        prompts=[prompt],
        steps=2,
        video=VideoSpec(32, 32, 5),
        sampler=SamplerConfig(num_inference_steps=3, truncated_backprop_steps=1, guidance_scale=3.0),
        decode=DecodeConfig("all", 1),
        critic_input=CriticInputConfig(height=28, width=28),
        lora=LoRAConfig(rank=4, alpha=4.0, target_preset="attention_ffn"),
    )
    backend = load_video_backend(tiny_models.wan, "fp32", "cpu")
    critic = load_critic(tiny_models.qwen, "fp32", "cpu")
    reward = DRFReward(critic, config.reward, config.critic_input)
    trained = train_lora(backend, reward, [decompose(prompt)], config, tmp_path / "run", resume=False)
    lora_file = save_trained_lora(trained.lora, tmp_path / "drf_lora.safetensors", "wan", "comfyui")
    model_file = write_tiny_wan_native(tiny_models.wan, tmp_path / "wan_tiny_native.safetensors")

    report = _apply_with_comfyui(comfy_dir, python, model_file, [lora_file], tmp_path)
    (applied,) = report["loras"]
    assert report["model_class"] == "WAN21" and report["model_type"] == "t2v"
    assert report["load_warnings"] == []
    assert applied["lora_warnings"] == [], "ComfyUI reported LoRA keys it did not load"
    assert applied["missing_weights"] == []
    expected = {f"diffusion_model.{diffusers_to_native_wan_module(m)}.weight" for m in trained.lora.modules}
    assert set(applied["changed_weights"]) == expected
    assert max(applied["max_abs_diff"].values()) <= 1e-6

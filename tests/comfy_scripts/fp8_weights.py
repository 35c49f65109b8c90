"""Training on fp8 video-model weights as ComfyUI loads them, in ComfyUI's interpreter; a JSON report.

    python fp8_weights.py --comfyui-dir DIR --pack-dir REPO --model tiny_native.safetensors --out-dir DIR

The tiny Wan in ComfyUI's format is loaded by core Load Diffusion Model (UNETLoader) four ways:
`default` (its fp32 weights), `fp8_e4m3fn`, `fp8_e4m3fn_fast` (the CPU has no fp8 matrix multiply,
so ComfyUI computes as for `fp8_e4m3fn`), and an `fp8_scaled` checkpoint written here in ComfyUI's
scaled-fp8 layout (`scaled_fp8` marker, fp8 linear weights with a per-layer `scale_weight`). The VAE is
the Wan 2.1 VAE at ComfyUI's fixed size, the text is conditioning tensors. For each way it reports:

1. the weights keep their storage dtype and sampling with gradients off equals core KSampler;
2. one training step's LoRA gradients (same adapter values everywhere): finite, on the adapters only,
   and their cosine with the fp32 run's;
3. an adapted layer's forward computes with `W + dW` (for scaled fp8 the adapter's difference is
   divided by the layer's scale, which ComfyUI multiplies in after the weight functions);
4. the LoRA saved from the adapters, applied by core LoraLoaderModelOnly: the weights ComfyUI computes
   with (dequantized) against the trained ones `W + dW`, in fp8 steps at each value (ComfyUI stores
   `W + dW` back in fp8 with stochastic rounding, so the patched model is the trained one rounded to
   a neighbouring fp8 value: fewer than two steps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfy_boot import start

SEED, STEPS, CFG = 3, 3, 3.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5
TEXT_TOKENS, TEXT_WIDTH = 12, 4096
FP8_MAX = 448.0  # float8_e4m3fn
SCALED_LAYERS = (".self_attn.", ".cross_attn.", ".ffn.")


def write_scaled_fp8(source: Path, target: Path, torch, load_file, save_file) -> None:
    """ComfyUI's `fp8_scaled` layout: the attention and feed-forward weights as fp8 over a float32 scale."""
    state = load_file(str(source))
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and any(part in key for part in SCALED_LAYERS):
            scale = value.abs().max().float() / FP8_MAX
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    save_file(out, str(target))


def main() -> int:
    options = start("--model", "--out-dir")
    out_dir = Path(options.out_dir)

    import comfy.model_management as mm
    import comfy.sd
    import folder_paths
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
    from comfy_models import random_wan_vae_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import LoRAConfig, SamplerConfig, VideoSpec
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes.comfy_backend import ComfyVideoBackend
    from drf_pack.nodes.comfy_prompts import ComfyPrompts
    from safetensors.torch import load_file, save_file

    import nodes as core

    models = out_dir / "diffusion_models"
    loras = out_dir / "loras"
    models.mkdir(exist_ok=True)
    loras.mkdir(exist_ok=True)
    (models / "tiny.safetensors").symlink_to(Path(options.model).resolve())
    write_scaled_fp8(Path(options.model), models / "tiny_fp8_scaled.safetensors", torch, load_file, save_file)
    folder_paths.add_model_folder_path("diffusion_models", str(models))
    folder_paths.add_model_folder_path("loras", str(loras))

    spec = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=LENGTH)
    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
    negative = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=random_wan_vae_state(WanVAE, torch))
        (latent,) = EmptyHunyuanLatentVideo().generate(WIDTH, HEIGHT, LENGTH, 1)
    prompts = ComfyPrompts(encoded={"p": positive[0][0].clone(), "n": negative[0][0].clone()})

    report: dict = {}
    gradients = {}
    for label, file, weight_dtype in (
        ("default", "tiny.safetensors", "default"),
        ("fp8_e4m3fn", "tiny.safetensors", "fp8_e4m3fn"),
        ("fp8_e4m3fn_fast", "tiny.safetensors", "fp8_e4m3fn_fast"),
        ("fp8_scaled", "tiny_fp8_scaled.safetensors", "default"),
    ):
        with torch.inference_mode():
            (model,) = core.UNETLoader().load_unet(file, weight_dtype)
            (core_samples,) = core.common_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative,
                                                   latent)  # fmt: skip
        backend = ComfyVideoBackend(model, vae, prompts, "euler", "simple")
        q = backend.denoiser.blocks[0].self_attn.q
        entry = {"q_weight_dtype": str(q.weight.dtype).removeprefix("torch."), "q_scaled": hasattr(q, "scale_weight")}
        with torch.inference_mode(False):
            embeddings = backend.encode_prompts(["p"], "n", CFG)
            config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG)
            with torch.no_grad():
                noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
                ours = sample_latents(backend, embeddings, noise, config, 0)
            entry["ksampler_max_abs_diff"] = (ours.cpu() - core_samples["samples"]).abs().max().item()

            named = backend.add_lora(LoRAConfig(rank=2, alpha=2.0, target_preset="attention_ffn"), "probe")
            with torch.no_grad():  # the same adapter values for every way of loading
                for index, (_name, param) in enumerate(sorted(named.items())):
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(index)) * 0.05)
            noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
            latents = sample_latents(backend, embeddings, noise, config, 1)
            backend.decode(latents, frame_indices=[0, 4]).mean().backward()
            grads = torch.cat([p.grad.flatten().float() for _n, p in sorted(named.items())])
            gradients[label] = grads
            entry["grads_finite"] = bool(torch.isfinite(grads).all())
            entry["model_params_with_grad"] = sum(1 for p in model.model.parameters() if p.grad is not None)

            trained = backend.adapted_weights("probe")  # W + dW
            # the forward of an adapted layer computes with exactly that weight (scaled fp8: (W_q + dW/s) * s)
            mm.load_models_gpu([backend.patcher], force_full_load=True)
            x = torch.randn(1, 4, q.in_features, generator=torch.Generator().manual_seed(9))
            with torch.no_grad():
                bias = q.bias.float() if q.bias is not None else None
                expected = torch.nn.functional.linear(x, trained["diffusion_model.blocks.0.self_attn.q.weight"], bias)
                entry["forward_vs_trained_weight"] = (q(x) - expected).abs().max().item()
            lora_file = api.save_trained_lora(backend.snapshot_lora("probe"), loras / f"{label}.safetensors", "wan",
                                              "comfyui")  # fmt: skip
            backend.remove_lora("probe")
        with torch.inference_mode():
            (patched,) = core.LoraLoaderModelOnly().load_lora_model_only(model, lora_file.name, 1.0)
            mm.load_models_gpu([patched], force_full_load=True)
            worst = 0.0
            for key, want in trained.items():
                layer = patched.model.get_submodule(key.removesuffix(".weight"))
                got = layer.weight.float()
                if hasattr(layer, "scale_weight"):
                    got = got * layer.scale_weight.float()
                if layer.weight.dtype == torch.float8_e4m3fn:  # in fp8 steps at each stored value
                    scale = layer.scale_weight.float() if hasattr(layer, "scale_weight") else torch.tensor(1.0)
                    stored = (want / scale).abs().clamp_min(2**-6)  # below 2^-6 e4m3 steps are 2^-9
                    step = scale * torch.exp2(torch.floor(torch.log2(stored)) - 3)
                    worst = max(worst, ((got - want).abs() / step).max().item())
                else:
                    worst = max(worst, (got - want).abs().max().item())
            entry["core_lora_vs_trained"] = worst
            mm.unload_all_models()
        report[label] = entry

    for label in ("fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_scaled"):
        cosine = torch.nn.functional.cosine_similarity(gradients[label], gradients["default"], dim=0).item()
        report[label]["grad_cosine_vs_fp32"] = cosine
    (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

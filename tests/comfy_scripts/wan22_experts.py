"""Wan 2.2 A14B's two experts through Video Model from ComfyUI, in ComfyUI's interpreter; a JSON report.

    python wan22_experts.py --comfyui-dir DIR --pack-dir REPO --high H.safetensors --low L.safetensors --out-dir DIR

Two tiny Wans in ComfyUI's format (different weights) stand in for the high-noise and the
low-noise expert; the VAE is the Wan 2.1 VAE at ComfyUI's fixed size with random weights; the
text is conditioning tensors. Reports:

1. sampling with gradients off equals ComfyUI's Wan 2.2 template chain (KSamplerAdvanced on the
   high-noise MODEL for steps [0, b) returning leftover noise, then KSamplerAdvanced on the
   low-noise MODEL from step b without added noise) for euler and uni_pc and two switch points,
   and differs from sampling the high-noise expert alone;
2. training the low-noise expert (the default) with K = 1 puts gradient on its adapters and on no
   weight of either model; with the high-noise expert and K = 1 (only a low-noise step carries
   gradient) nothing does; with K spanning the switch the gradient flows back through the
   low-noise expert's steps to the high-noise adapters;
3. the saved LoRA names its expert, and previewing it on the other expert is refused;
4. training the high-noise expert with K = 1 stops before the first update with what to change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfy_boot import start

SEED, STEPS, CFG = 5, 4, 3.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5
TEXT_TOKENS, TEXT_WIDTH = 12, 4096
POSITIVE_TEXT, NEGATIVE_TEXT = "a paper boat floats down a stream", ""


def main() -> int:
    options = start("--high", "--low", "--out-dir")
    out_dir = Path(options.out_dir)

    import comfy.sd
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
    from comfy_models import random_wan_vae_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import DecodeConfig, LoRAConfig, SamplerConfig, TrainConfig, VideoSpec
    from drf_pack.drf_core.decompose import decompose
    from drf_pack.drf_core.errors import DRFInputError
    from drf_pack.drf_core.reward import RewardFunction, RewardResult
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes.loaders import VideoModelFromComfy
    from drf_pack.nodes.local import LocalContext, LocalFolders

    import nodes as core

    report: dict = {}
    spec = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=LENGTH)
    with torch.inference_mode():
        high = comfy.sd.load_diffusion_model(options.high, model_options={"dtype": torch.float32})
        low = comfy.sd.load_diffusion_model(options.low, model_options={"dtype": torch.float32})
        vae = comfy.sd.VAE(sd=random_wan_vae_state(WanVAE, torch))
        generator = torch.Generator().manual_seed(1)
        positive = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
        negative = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
        (latent,) = EmptyHunyuanLatentVideo().generate(WIDTH, HEIGHT, LENGTH, 1)
    ctx = LocalContext(LocalFolders(out_dir / "local"))

    def backend(sampler_name="euler", low_noise_from=0.5, trained_expert="low_noise"):
        node = VideoModelFromComfy.run(
            ctx, high, vae, sampler_name, "simple", POSITIVE_TEXT, NEGATIVE_TEXT, low_noise_from=low_noise_from,
            trained_expert=trained_expert, positive=positive, negative=negative, model_low_noise=low,
        )  # fmt: skip
        return node.outputs[0].get()

    def ours(video_backend, grad_steps=0):
        embeddings = video_backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
        noise = video_backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG)
        return sample_latents(video_backend, embeddings, noise, config, grad_steps)

    # 1. the template's two-KSamplerAdvanced chain
    chain = {}
    for sampler_name, switch in (("euler", 0.5), ("uni_pc", 0.5), ("uni_pc", 0.25)):
        boundary = round(switch * STEPS)
        with torch.inference_mode():
            sampler = core.KSamplerAdvanced()
            (first,) = sampler.sample(high, "enable", SEED, STEPS, CFG, sampler_name, "simple", positive, negative,
                                      latent, 0, boundary, "enable")  # fmt: skip
            (second,) = sampler.sample(low, "disable", SEED, STEPS, CFG, sampler_name, "simple", positive, negative,
                                       first, boundary, 10000, "disable")  # fmt: skip
            (high_only,) = core.common_ksampler(high, SEED, STEPS, CFG, sampler_name, "simple", positive, negative,
                                                latent)  # fmt: skip
        with torch.inference_mode(False), torch.no_grad():
            latents = ours(backend(sampler_name, switch)).cpu()
        chain[f"{sampler_name} switch {boundary}/{STEPS}"] = {
            "latent_max_abs_diff": (latents - second["samples"]).abs().max().item(),
            "differs_from_high_only": (latents - high_only["samples"]).abs().max().item(),
            "scale": second["samples"].abs().max().item(),
        }
    report["chain"] = chain

    # 2. gradients: the low-noise expert with K = 1; the high-noise expert through the switch
    gradients = {}
    for expert, grad_steps in (("low_noise", 1), ("high_noise", 1), ("high_noise", STEPS)):
        video_backend = backend("euler", 0.5, expert)
        with torch.inference_mode(False):
            named = video_backend.add_lora(LoRAConfig(rank=2, alpha=2.0), "probe")
            loss = ours(video_backend, grad_steps).square().mean()
            if loss.requires_grad:
                loss.backward()
            downs = [p.grad for n, p in named.items() if n.endswith("lora_down.weight")]
            gradients[f"{expert} K={grad_steps}"] = {
                "loss_requires_grad": loss.requires_grad,
                "adapters": len(downs),
                "with_gradient": sum(1 for g in downs if g is not None and bool(g.abs().sum() > 0)),
                "finite": all(bool(torch.isfinite(g).all()) for g in downs if g is not None),
                "model_weights_with_grad": sum(
                    1 for m in (high, low) for p in m.model.parameters() if p.grad is not None
                ),
                "adapters_on_the_trained_expert": video_backend.denoiser
                is (low if expert == "low_noise" else high).model.diffusion_model,
            }
            if expert == "low_noise":
                report["lora_metadata_expert"] = video_backend.snapshot_lora("probe").metadata.get("drf_wan_expert")
                saved = video_backend.snapshot_lora("probe")
            video_backend.remove_lora("probe")
    report["gradients"] = gradients

    # 3. a low-noise LoRA is refused on the high-noise expert
    try:
        backend("euler", 0.5, "high_noise").apply_lora(saved, "preview")
        report["wrong_expert_error"] = None
    except DRFInputError as error:
        report["wrong_expert_error"] = str(error)

    # 4. the trainer says what to change when no trained weight is on the gradient path
    class Brightness(RewardFunction):
        def __call__(self, frames, questions):
            return RewardResult(total=frames.mean())

    config = TrainConfig(
        prompts=[POSITIVE_TEXT], negative_prompt=NEGATIVE_TEXT, steps=1, video=spec, checkpoint_interval=0,
        sampler=SamplerConfig(num_inference_steps=STEPS, truncated_backprop_steps=1, guidance_scale=CFG),
        decode=DecodeConfig("all", 1), lora=LoRAConfig(rank=2, alpha=2.0),
    )  # fmt: skip
    try:
        with torch.inference_mode(False):
            api.train_lora(backend("euler", 0.5, "high_noise"), Brightness(), [decompose(POSITIVE_TEXT)], config,
                           out_dir / "run_high", resume=False)  # fmt: skip
        report["high_noise_k1_training_error"] = None
    except DRFInputError as error:
        report["high_noise_k1_training_error"] = str(error)

    (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

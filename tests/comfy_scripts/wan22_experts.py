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
4. training the high-noise expert with K = 1 stops before the first update with what to change;
5. both experts at once (`trained_expert` both): with K spanning the switch every adapter of both
   experts gets gradient, with K = 1 only the low-noise ones, and training with K = 1 is refused;
   a trained two-expert LoRA is saved by Save LoRA as two files, each applied by core
   LoraLoaderModelOnly on its own expert in the template's chain equal to Sample Video with the
   LoRA Load LoRA brings back from either file; a LoRA mixed up with the wrong MODELs is refused;
6. with the adapters switched off (`adapters_disabled`, the drift penalty's base model) sampling equals
   the base chain exactly, and the drift penalty of a trained LoRA is its measured difference.
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
    import comfy.utils
    import folder_paths
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
    from comfy_models import random_wan_vae_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import DecodeConfig, LoRAConfig, SamplerConfig, TrainConfig, VideoSpec
    from drf_pack.drf_core.decompose import decompose
    from drf_pack.drf_core.errors import DRFInputError
    from drf_pack.drf_core.regularize import DriftPenalty
    from drf_pack.drf_core.reward import RewardFunction, RewardResult
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes.loaders import VideoModelFromComfy
    from drf_pack.nodes.local import LocalContext, LocalFolders
    from drf_pack.nodes.lora import LoadLoRA, SaveLoRA, TrainedLoRAWire

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

    def backend(sampler_name="euler", low_noise_from=0.5, trained_expert="low_noise", low_noise_model=low):
        node = VideoModelFromComfy.run(
            ctx, high, vae, sampler_name, "simple", POSITIVE_TEXT, NEGATIVE_TEXT, low_noise_from=low_noise_from,
            trained_expert=trained_expert, positive=positive, negative=negative, model_low_noise=low_noise_model,
        )  # fmt: skip
        return node.outputs[0].get()

    def ours(video_backend, grad_steps=0, grad_step_hook=None):
        embeddings = video_backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
        noise = video_backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG)
        return sample_latents(video_backend, embeddings, noise, config, grad_steps, grad_step_hook=grad_step_hook)

    def template_chain(high_model, low_model, sampler_name="euler", boundary=STEPS // 2):
        with torch.inference_mode():
            sampler = core.KSamplerAdvanced()
            (first,) = sampler.sample(high_model, "enable", SEED, STEPS, CFG, sampler_name, "simple", positive,
                                      negative, latent, 0, boundary, "enable")  # fmt: skip
            (second,) = sampler.sample(low_model, "disable", SEED, STEPS, CFG, sampler_name, "simple", positive,
                                       negative, first, boundary, 10000, "disable")  # fmt: skip
        return second["samples"]

    # 1. the template's two-KSamplerAdvanced chain
    chain = {}
    for sampler_name, switch in (("euler", 0.5), ("uni_pc", 0.5), ("uni_pc", 0.25)):
        boundary = round(switch * STEPS)
        second = template_chain(high, low, sampler_name, boundary)
        with torch.inference_mode():
            (high_only,) = core.common_ksampler(high, SEED, STEPS, CFG, sampler_name, "simple", positive, negative,
                                                latent)  # fmt: skip
        with torch.inference_mode(False), torch.no_grad():
            latents = ours(backend(sampler_name, switch)).cpu()
        chain[f"{sampler_name} switch {boundary}/{STEPS}"] = {
            "latent_max_abs_diff": (latents - second).abs().max().item(),
            "differs_from_high_only": (latents - high_only["samples"]).abs().max().item(),
            "scale": second.abs().max().item(),
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

    # 5. both experts: gradients, the refusal, training, the two files in core nodes, placement errors
    both_gradients = {}
    for grad_steps in (1, STEPS):
        video_backend = backend("euler", 0.5, "both")
        with torch.inference_mode(False):
            named = video_backend.add_lora(LoRAConfig(rank=2, alpha=2.0), "probe")
            ours(video_backend, grad_steps).square().mean().backward()
            for expert in ("high_noise", "low_noise"):
                downs = [p.grad for n, p in named.items() if n.startswith(f"{expert}/") and n.endswith("down.weight")]
                both_gradients[f"{expert} K={grad_steps}"] = {
                    "adapters": len(downs),
                    "with_gradient": sum(1 for g in downs if g is not None and bool(g.abs().sum() > 0)),
                    "finite": all(bool(torch.isfinite(g).all()) for g in downs if g is not None),
                }
            both_gradients[f"model weights with grad K={grad_steps}"] = sum(
                1 for m in (high, low) for p in m.model.parameters() if p.grad is not None
            )
            video_backend.remove_lora("probe")
    report["both_gradients"] = both_gradients
    try:
        with torch.inference_mode(False):
            api.train_lora(backend("euler", 0.5, "both"), Brightness(), [decompose(POSITIVE_TEXT)], config,
                           out_dir / "run_both_k1", resume=False)  # fmt: skip
        report["both_k1_training_error"] = None
    except DRFInputError as error:
        report["both_k1_training_error"] = str(error)

    both_config = TrainConfig(
        prompts=[POSITIVE_TEXT], negative_prompt=NEGATIVE_TEXT, steps=2, video=spec, checkpoint_interval=0,
        sampler=SamplerConfig(num_inference_steps=STEPS, truncated_backprop_steps=STEPS, guidance_scale=CFG),
        decode=DecodeConfig("all", 1), lora=LoRAConfig(rank=2, alpha=2.0),
    )  # fmt: skip
    with torch.inference_mode(False):
        trained = api.train_lora(backend("euler", 0.5, "both"), Brightness(), [decompose(POSITIVE_TEXT)],
                                 both_config, out_dir / "run_both", resume=False)  # fmt: skip
    wire = TrainedLoRAWire(trained.lora, trained.family, "trained")
    (saved_names,) = SaveLoRA.run(ctx, wire, "drf/a14b", "comfyui", "fp32").outputs
    saved_names = saved_names.split("\n")
    loras = ctx.folders.save_dir("loras")
    files = {name: comfy.utils.load_torch_file(str(loras / name), return_metadata=True) for name in saved_names}
    headers = {name: header for name, (_, header) in files.items()}
    files = {name: tensors for name, (tensors, _) in files.items()}
    folder_paths.add_model_folder_path("loras", str(loras))
    on_expert = {headers[name]["drf_wan_expert"]: name for name in saved_names}
    with torch.inference_mode():
        (high_lora,) = core.LoraLoaderModelOnly().load_lora_model_only(high, on_expert["high_noise"], 1.0)
        (low_lora,) = core.LoraLoaderModelOnly().load_lora_model_only(low, on_expert["low_noise"], 1.0)
    core_lora = template_chain(high_lora, low_lora)
    base_chain = template_chain(high, low)
    loaded = {name: LoadLoRA.run(ctx, name, "wan").outputs[0] for name in saved_names}
    preview_backend = backend("euler", 0.5, "both")
    with torch.inference_mode(False), torch.no_grad():
        preview_backend.apply_lora(loaded[on_expert["high_noise"]].weights, "preview")
        preview = ours(preview_backend).cpu()
        preview_backend.remove_lora("preview")
    trained_modules = trained.lora.modules
    report["both_lora"] = {
        "metadata_expert": trained.lora.metadata.get("drf_wan_expert"),
        "saved_names": saved_names,
        "file_experts": sorted(on_expert),
        "file_pairs": {name: headers[name].get("drf_wan_expert_pair") for name in saved_names},
        "file_layers": {name: sum(1 for key in file if key.endswith(".alpha")) for name, file in files.items()},
        "trained_layers": {e: sum(1 for n in trained_modules if n.startswith(f"{e}/")) for e in on_expert},
        "loaded_equal_trained": {
            name: sorted(wire_.weights.modules) == sorted(trained_modules)
            and all(
                torch.equal(wire_.weights.modules[n].down, w.down) and torch.equal(wire_.weights.modules[n].up, w.up)
                for n, w in trained_modules.items()
            )
            for name, wire_ in loaded.items()
        },
        "core_vs_preview_max_abs_diff": (preview - core_lora).abs().max().item(),
        "lora_changes_the_chain": (core_lora - base_chain).abs().max().item(),
        "changes_per_expert": {
            expert: (template_chain(*models) - base_chain).abs().max().item()
            for expert, models in (("high_noise", (high_lora, low)), ("low_noise", (high, low_lora)))
        },
    }
    joined = loaded[saved_names[0]].weights
    placement_errors = {}
    for label, make in (
        ("both on low_noise", lambda: backend("euler", 0.5, "low_noise")),
        ("both on one MODEL", lambda: backend("euler", 0.5, "low_noise", low_noise_model=None)),
    ):
        try:
            with torch.inference_mode(False), torch.no_grad():
                make().apply_lora(joined, "preview")
            placement_errors[label] = None
        except DRFInputError as error:
            placement_errors[label] = str(error)
    report["both_placement_errors"] = placement_errors

    # 6. the adapters switched off: the base chain exactly; the drift penalty measures the difference
    drift_backend = backend("euler", 0.5, "both")
    with torch.inference_mode(False):
        drift_backend.apply_lora(joined, "trained", trainable=True)
        with torch.no_grad():
            with drift_backend.adapters_disabled():
                switched_off = ours(drift_backend).cpu()
            switched_on = ours(drift_backend).cpu()
        penalty = DriftPenalty(drift_backend)
        ours(drift_backend, STEPS, grad_step_hook=penalty)
        drift = penalty.value()
    report["adapters_disabled"] = {
        "off_vs_base_chain": (switched_off - base_chain).abs().max().item(),
        "on_vs_core_lora": (switched_on - core_lora).abs().max().item(),
        "drift": float(drift),
        "drift_requires_grad": drift.requires_grad,
    }

    (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pack's ComfyUI backend against core ComfyUI nodes, in ComfyUI's own interpreter; a JSON report.

    python native_backend.py --comfyui-dir DIR --pack-dir REPO --model tiny_wan_native.safetensors --out-dir DIR

Loads the tiny Wan (ComfyUI's format) as core UNETLoader does, under `torch.inference_mode()` like
ComfyUI's executor, a full-size Wan 2.1 VAE with random weights (ComfyUI fixes its size) as core
VAELoader does, and conditioning tensors in place of UMT5-XXL (which cannot be built small: ComfyUI
fixes its size too). Then, each with numbers in the report:

1. sampling with gradients off equals core KSampler (and the decode equals core VAEDecode) for
   euler/simple, uni_pc/simple (ComfyUI's Wan 2.1 text-to-video template) and uni_pc after core
   ModelSamplingSD3 (shift 8);
2. without `make_autograd_safe` a training step fails with ComfyUI's inference tensors;
3. a training step's gradients reach every adapter and no base weight; the video model was loaded
   by ComfyUI's memory manager;
4. a LoRA trained with the pack's trainer (an injected reward, no critic), saved in ComfyUI's layout,
   loaded by core LoraLoaderModelOnly: patched weights equal the trained adapters' weights, and
   core KSampler + VAEDecode on it equal Sample Video (the node) with the LoRA;
5. `unload_all_models` (what "Unload Models" and /free call) takes the video model off the list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfy_boot import start

SEED, STEPS, CFG = 7, 4, 3.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5
TEXT_TOKENS, TEXT_WIDTH = 12, 4096
POSITIVE_TEXT, NEGATIVE_TEXT = "two red apples on a wooden table", ""


def main() -> int:
    options = start("--model", "--out-dir")
    out_dir = Path(options.out_dir)
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_models import random_wan_vae_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import (
        DecodeConfig,
        LoRAConfig,
        OptimizerConfig,
        SamplerConfig,
        TrainConfig,
        VideoSpec,
    )
    from drf_pack.drf_core.decompose import decompose
    from drf_pack.drf_core.models.base import DecodeOptions
    from drf_pack.drf_core.reward import RewardFunction, RewardResult
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes import comfy_backend
    from drf_pack.nodes.loaders import VideoModelFromComfy
    from drf_pack.nodes.local import LocalContext, LocalFolders
    from drf_pack.nodes.sample import SampleVideo

    import nodes as core

    report: dict = {}

    def save() -> None:
        with open(out_dir / "report.json", "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)

    spec = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=LENGTH)
    with torch.inference_mode():  # as ComfyUI runs every prompt: loaded weights are inference tensors
        model = comfy.sd.load_diffusion_model(options.model, model_options={"dtype": torch.float32})
        vae = comfy.sd.VAE(sd=random_wan_vae_state(WanVAE, torch))
        generator = torch.Generator().manual_seed(1)
        positive = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
        negative = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
        (latent,) = EmptyHunyuanLatentVideo().generate(WIDTH, HEIGHT, LENGTH, 1)
    report["vae_class"] = type(vae.first_stage_model).__module__ + "." + type(vae.first_stage_model).__name__
    report["weights_are_inference_tensors"] = bool(next(model.model.parameters()).is_inference())

    ctx = LocalContext(LocalFolders(out_dir / "local"))

    def backend_for(patcher, sampler_name="uni_pc", scheduler="simple"):
        (wire,) = VideoModelFromComfy.run(
            ctx,
            patcher,
            vae,
            sampler_name,
            scheduler,
            POSITIVE_TEXT,
            NEGATIVE_TEXT,
            positive=positive,
            negative=negative,
        ).outputs
        return wire

    def core_sample(patcher, sampler_name, scheduler):
        with torch.inference_mode():
            (samples,) = core.common_ksampler(
                patcher, SEED, STEPS, CFG, sampler_name, scheduler, positive, negative, latent
            )
            (pixels,) = core.VAEDecode().decode(vae, samples)
        return samples["samples"], pixels

    # 1. sampling equals core KSampler
    shifted = ModelSamplingSD3().patch(model, 3.0)[0]  # Wan's own default is 8
    equality = {}
    for label, patcher, sampler_name, scheduler in (
        ("euler/simple", model, "euler", "simple"),
        ("uni_pc/simple", model, "uni_pc", "simple"),
        ("uni_pc/simple shift 3", shifted, "uni_pc", "simple"),
    ):
        core_latents, core_pixels = core_sample(patcher, sampler_name, scheduler)
        backend = backend_for(patcher, sampler_name, scheduler).get()
        with torch.inference_mode(False):
            embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
            noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
            config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG)
            ours = sample_latents(backend, embeddings, noise, config, 0)
            frames = backend.decode(ours)
        equality[label] = {
            "latent_max_abs_diff": (ours.cpu() - core_latents.cpu()).abs().max().item(),
            "frames_max_abs_diff": (frames[0].permute(0, 2, 3, 1).cpu() - core_pixels.cpu()).abs().max().item(),
            "latent_scale": core_latents.abs().max().item(),
            "shape": list(ours.shape),
            "frames": list(frames.shape),
        }
    report["ksampler_equality"] = equality
    # decoding a subset of frames (what the reward and held-out checks ask for) equals those frames of the whole
    subset_backend = backend_for(model).get()
    with torch.inference_mode(False), torch.no_grad():
        latents = torch.randn(1, 16, 2, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(5))
        whole = subset_backend.decode(latents)
        report["frame_subset_max_abs_diff"] = max(
            (subset_backend.decode(latents, frame_indices=[i])[0, 0] - whole[0, i]).abs().max().item()
            for i in range(whole.shape[1])
        )
        report["frame_subset_frames"] = whole.shape[1]
    # the frame-by-frame backward (decode.frame_by_frame_backward, caches on the host; whole frames and in 2x2
    # tiles, on a 64x64 clip so that tiles are smaller than the frame): same frames and gradient
    with torch.inference_mode(False):
        wide = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(6))
        savers = {
            "whole": {"checkpoint_residual_blocks": True, "frame_by_frame_backward": True, "cache_host": "cpu"},
            "tiles 2": {"frame_by_frame_backward": True, "cache_host": "cpu", "backward_tiles": 2},
        }
        report["frame_by_frame"] = {}
        for name, saver in savers.items():
            results = []
            for kwargs in ({}, saver):
                x = wide.clone().requires_grad_()
                frames = subset_backend.decode(x, [0, 4], DecodeOptions(**kwargs))
                (frames * torch.linspace(0, 1, frames.numel()).view_as(frames)).sum().backward()
                results.append((frames.detach(), x.grad))
            (plain, plain_grad), (saved, saved_grad) = results
            report["frame_by_frame"][name] = {
                "frames_max_abs_diff": (saved - plain).abs().max().item(),
                "grad_max_abs_diff": (saved_grad - plain_grad).abs().max().item(),
                "grad_scale": plain_grad.abs().max().item(),
                "first_latent_frame_grad": plain_grad[:, :, 0].abs().sum().item(),
            }
        # ComfyUI's decoder cut into trunk and tail computes what the decoder computes
        from comfy.ldm.wan.vae import count_conv3d
        from drf_pack.drf_core.models.vae_backward import split_decoder

        stage = subset_backend.vae.first_stage_model
        split = split_decoder(stage.decoder)
        z = stage.conv2(wide.to(subset_backend.vae.vae_dtype))
        whole_cache = [None] * count_conv3d(stage.decoder)
        parts_cache = list(whole_cache)
        diffs = []
        with torch.no_grad():
            for index in range(z.shape[2]):
                frame = z[:, :, index : index + 1]
                whole = stage.decoder(frame, feat_cache=whole_cache, feat_idx=[0])
                parts = split.tail(split.trunk(frame, index, parts_cache), index, parts_cache)
                diffs.append((parts - whole).abs().max().item())
        report["split"] = {"max_abs_diff": max(diffs), "halo": split.halo, "trunk_slots": split.trunk_slots}
    save()

    # 2. inference tensors: the failure without make_autograd_safe, reproduced on a fresh load
    with torch.inference_mode():
        fresh = comfy.sd.load_diffusion_model(options.model, model_options={"dtype": torch.float32})
    saved_fix = comfy_backend.make_autograd_safe
    comfy_backend.make_autograd_safe = lambda module, *holders: 0
    try:
        failure = None
        backend = backend_for(fresh, "euler").get()
        with torch.inference_mode(False):
            try:
                backend.add_lora(LoRAConfig(rank=2, alpha=2.0), "probe")
                embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
                noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
                sample_latents(
                    backend, embeddings, noise, SamplerConfig(num_inference_steps=2, guidance_scale=CFG), 1
                ).sum().backward()
            except RuntimeError as error:
                failure = str(error)
            finally:
                backend.remove_lora("probe")
    finally:
        comfy_backend.make_autograd_safe = saved_fix
    report["without_fix_error"] = failure
    save()

    # 3. gradients: only adapter weights; loaded through ComfyUI's memory manager
    backend = backend_for(model, "uni_pc").get()
    with torch.inference_mode(False):
        named = backend.add_lora(LoRAConfig(rank=4, alpha=4.0, target_preset="attention_ffn"), "grad")
        embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
        noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        latents = sample_latents(
            backend, embeddings, noise, SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG), 2
        )
        report["adapted_clone_loaded_by_comfyui"] = any(m.model is backend.patcher for m in mm.current_loaded_models)
        backend.decode(latents, [0, 4], DecodeOptions(checkpoint_per_latent_frame=True)).mean().backward()
        down = {n: p.grad for n, p in named.items() if n.endswith("lora_down.weight")}
        report["adapter_tensors"] = len(named)
        report["down_with_gradient"] = sum(1 for g in down.values() if g is not None and g.abs().sum() > 0)
        report["down_tensors"] = len(down)
        report["all_grads_finite"] = all(
            bool(torch.isfinite(p.grad).all()) for p in named.values() if p.grad is not None
        )
        report["base_params_with_grad"] = sum(1 for p in model.model.parameters() if p.grad is not None)
        report["vae_params_with_grad"] = sum(1 for p in vae.first_stage_model.parameters() if p.grad is not None)
        report["base_requires_grad"] = sum(1 for p in model.model.parameters() if p.requires_grad)
        backend.remove_lora("grad")
    save()

    # 4. train with the pack's trainer, save, load with core LoraLoaderModelOnly, compare
    class Brightness(RewardFunction):
        """Mean brightness: differentiable, needs no critic."""

        def __call__(self, frames, questions):
            return RewardResult(total=frames.mean())

    config = TrainConfig(
        prompts=[POSITIVE_TEXT],
        negative_prompt=NEGATIVE_TEXT,
        steps=2,
        seed=0,
        video=spec,
        sampler=SamplerConfig(num_inference_steps=STEPS, truncated_backprop_steps=1, guidance_scale=CFG),
        decode=DecodeConfig("all", 1),
        lora=LoRAConfig(rank=4, alpha=4.0, target_preset="attention_ffn"),
        optimizer=OptimizerConfig(learning_rate=5e-2),
        checkpoint_interval=0,
    )
    wire = backend_for(model, "uni_pc")
    backend = wire.get()
    with torch.inference_mode(False):
        trained = api.train_lora(
            backend, Brightness(), [decompose(POSITIVE_TEXT)], config, out_dir / "run", resume=False
        )
    report["train_rewards"] = [row["reward"] for row in trained.run.metrics]
    loras = out_dir / "loras"
    loras.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras))
    lora_file = api.save_trained_lora(trained.lora, loras / "drf_native.safetensors", trained.family, "comfyui")
    report["lora_keys"] = sorted(comfy.utils.load_torch_file(str(lora_file)))[:3]

    base_weights = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    with torch.inference_mode():
        (core_lora_model,) = core.LoraLoaderModelOnly().load_lora_model_only(model, lora_file.name, 1.0)
        mm.load_models_gpu([core_lora_model])  # as KSampler loads it: ComfyUI patches the weights
        core_weights = {k: v.detach().clone() for k, v in core_lora_model.model.state_dict().items()}
    with torch.inference_mode(False):
        backend.apply_lora(trained.lora, "check", trainable=True)
        ours = backend.adapted_weights("check")
        backend.remove_lora("check")
    report["patched_layers"] = len(ours)
    report["patched_weight_max_abs_diff"] = max((ours[k] - core_weights[k]).abs().max().item() for k in ours)
    report["lora_changes_weights"] = max((ours[k] - base_weights[k]).abs().max().item() for k in ours)
    report["core_changed_other_weights"] = sorted(
        k for k in base_weights if k not in ours and not torch.equal(base_weights[k], core_weights[k])
    )
    save()

    with torch.inference_mode():
        (samples,) = core.common_ksampler(
            core_lora_model, SEED, STEPS, CFG, "uni_pc", "simple", positive, negative, latent
        )
        (core_pixels,) = core.VAEDecode().decode(vae, samples)
        (base_samples,) = core.common_ksampler(model, SEED, STEPS, CFG, "uni_pc", "simple", positive, negative, latent)
        (base_pixels,) = core.VAEDecode().decode(vae, base_samples)
    from drf_pack.nodes.lora import TrainedLoRAWire

    lora_wire = TrainedLoRAWire(trained.lora, trained.family, "trained")
    common = dict(
        video_model=wire,
        prompt=POSITIVE_TEXT,
        negative_prompt=NEGATIVE_TEXT,
        width=WIDTH,
        height=HEIGHT,
        num_frames=LENGTH,
        steps=STEPS,
        guidance_scale=CFG,
        scheduler="default",
        seed=SEED,
        lora_strength=1.0,
    )
    # inside a prompt's inference mode, switched off as the bridge (_comfy.py) switches it off for every node
    with torch.inference_mode(), torch.inference_mode(False):
        (node_frames,) = SampleVideo.run(ctx, **common, lora=lora_wire).outputs
        (node_base,) = SampleVideo.run(ctx, **common).outputs
    report["sample_video_lora_vs_core_max_abs_diff"] = (
        (node_frames.cpu() - core_pixels[: node_frames.shape[0]].cpu()).abs().max().item()
    )
    report["sample_video_base_vs_core_max_abs_diff"] = (node_base.cpu() - base_pixels.cpu()).abs().max().item()
    report["lora_changes_sample"] = (core_pixels - base_pixels).abs().max().item()

    # 5. a stop between steps ends ComfyUI's sampling thread (no thread is left waiting)
    import threading

    from drf_pack.drf_core.sampler import SamplingInterrupted

    threads_before = threading.active_count()
    calls = []
    with torch.inference_mode(False):
        embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, CFG)
        noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        try:
            sample_latents(
                backend,
                embeddings,
                noise,
                SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG),
                0,
                on_step=lambda i, total: calls.append(i),
                should_stop=lambda: len(calls) >= 2,
            )
            report["stop_error"] = None
        except SamplingInterrupted as error:
            report["stop_error"] = str(error)
    report["steps_before_stop"] = len(calls)
    report["threads_left"] = threading.active_count() - threads_before
    save()

    # 6. memory: ComfyUI's unload releases it
    def video_models_loaded() -> int:
        return sum(1 for m in mm.current_loaded_models if m.model is not None and m.model.model is model.model)

    report["loaded_before_unload"] = video_models_loaded()
    mm.unload_all_models()
    report["loaded_after_unload"] = video_models_loaded()

    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

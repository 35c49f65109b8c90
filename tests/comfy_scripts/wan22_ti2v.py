"""Wan 2.2 TI2V-5B through Video Model from ComfyUI, in ComfyUI's interpreter; a JSON report.

    python wan22_ti2v.py --comfyui-dir DIR --pack-dir REPO --model TI2V.safetensors --out-dir DIR

The model is a tiny Wan 2.2 TI2V-5B in ComfyUI's format (48 latent channels: ComfyUI's UNETLoader
detects it as WAN22); the VAE is the Wan 2.2 VAE at the fixed size ComfyUI builds it at (705 M
parameters) with random weights; the text is conditioning tensors (ComfyUI builds UMT5-XXL at its
fixed size). Sampler, scheduler, steps, CFG, shift and frame rate come from ComfyUI's own template
`video_wan2_2_5B_ti2v.json` (package comfyui_workflow_templates), the empty latent from its latent
node Wan22ImageToVideoLatent (no start image). Reports, with timings:

1. sampling with gradients off equals core KSampler + VAEDecode on the template's settings;
2. decoding some frames equals those frames of the whole decode;
3. a training step (decoding frame by frame, caches on the host) puts finite gradient on every
   adapter and none on model or VAE weights, with the plain decode's frames and latent gradient;
   the backward in 2x2 tiles gives the plain decode's frames and latent gradient, and the decoder's
   split (trunk, then tail) computes exactly what the decoder computes;
4. a LoRA trained with the pack's trainer, saved in ComfyUI's layout, applied by core
   LoraLoaderModelOnly: core KSampler + VAEDecode equal Sample Video (the node) with the LoRA, and
   differ from the base model's;
   training with the critic told 16 fps (the default) warns that this model makes 24 fps videos;
5. the Wan 2.1 VAE with this MODEL is refused.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from comfy_boot import start

SEED = 3
WIDTH, HEIGHT, LENGTH = 32, 32, 5  # a 2x2 latent, 2 latent frames
TEXT_TOKENS, TEXT_WIDTH = 12, 4096
POSITIVE_TEXT, NEGATIVE_TEXT = "a paper boat floats down a stream", ""
TEMPLATE = "video_wan2_2_5B_ti2v.json"


def template_settings() -> dict:
    """The settings of ComfyUI's own Wan 2.2 TI2V-5B template (its nodes' widget values)."""
    import comfyui_workflow_templates

    path = Path(comfyui_workflow_templates.__file__).parent / "templates" / TEMPLATE
    nodes = {node["type"]: node["widgets_values"] for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]}
    _, _, steps, cfg, sampler_name, scheduler, denoise = nodes["KSampler"]
    width, height, length, batch = nodes["Wan22ImageToVideoLatent"]
    return {
        "steps": steps, "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler, "denoise": denoise,
        "shift": nodes["ModelSamplingSD3"][0], "fps": nodes["CreateVideo"][0],
        "latent_node": [width, height, length, batch], "vae_file": nodes["VAELoader"][0],
    }  # fmt: skip


class _Warnings(logging.Handler):
    """The warnings one logger emits (`take` returns and forgets them)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def take(self) -> list[str]:
        messages, self.messages = self.messages, []
        return messages


def main() -> int:
    options = start("--model", "--out-dir")
    out_dir = Path(options.out_dir)
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent
    from comfy_models import WAN22_VAE_SIZE, random_wan_vae_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import (
        CriticInputConfig,
        DecodeConfig,
        LoRAConfig,
        OptimizerConfig,
        SamplerConfig,
        TrainConfig,
        VideoSpec,
    )
    from drf_pack.drf_core.decompose import decompose
    from drf_pack.drf_core.errors import DRFInputError
    from drf_pack.drf_core.models.base import DecodeOptions
    from drf_pack.drf_core.reward import RewardFunction, RewardResult
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes.loaders import VideoModelFromComfy
    from drf_pack.nodes.local import LocalContext, LocalFolders
    from drf_pack.nodes.lora import TrainedLoRAWire
    from drf_pack.nodes.sample import SampleVideo

    import nodes as core

    report: dict = {"seconds": {}}
    seconds = report["seconds"]

    def save() -> None:
        (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")

    template = report["template"] = template_settings()
    steps, cfg, sampler_name, scheduler = template["steps"], template["cfg"], template["sampler"], template["scheduler"]

    with torch.inference_mode():  # as ComfyUI runs every prompt: loaded weights are inference tensors
        model = comfy.sd.load_diffusion_model(options.model, model_options={"dtype": torch.float32})
        start_time = time.perf_counter()
        vae_state = random_wan_vae_state(comfy.ldm.wan.vae2_2.WanVAE, torch, WAN22_VAE_SIZE, torch.float16)
        seconds["vae_random_weights"] = time.perf_counter() - start_time
        start_time = time.perf_counter()
        vae = comfy.sd.VAE(sd=vae_state)  # what core VAELoader does with the file's state dict
        seconds["vae_load"] = time.perf_counter() - start_time
        del vae_state
        (shifted,) = ModelSamplingSD3().patch(model, template["shift"])  # as the template does
        generator = torch.Generator().manual_seed(1)
        positive = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
        negative = [[torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator), {"pooled_output": None}]]
    report["model_class"] = type(model.model).__name__
    report["vae_class"] = type(vae.first_stage_model).__module__ + "." + type(vae.first_stage_model).__name__
    report["vae_parameters"] = sum(p.numel() for p in vae.first_stage_model.parameters())
    ctx = LocalContext(LocalFolders(out_dir / "local"))

    def video_model(patcher=shifted, vae=vae):
        (wire,) = VideoModelFromComfy.run(
            ctx, patcher, vae, sampler_name, scheduler, POSITIVE_TEXT, NEGATIVE_TEXT, positive=positive,
            negative=negative,
        ).outputs  # fmt: skip
        return wire

    def core_sample(patcher, length):
        """The template's graph: Wan22ImageToVideoLatent (no start image) -> KSampler -> VAEDecode."""
        with torch.inference_mode():
            (latent,) = Wan22ImageToVideoLatent.execute(vae, WIDTH, HEIGHT, length, 1).result
            (samples,) = core.common_ksampler(
                patcher, SEED, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                denoise=template["denoise"],
            )  # fmt: skip
            start_time = time.perf_counter()
            (pixels,) = core.VAEDecode().decode(vae, samples)
            seconds[f"core_vae_decode_{length}_frames"] = time.perf_counter() - start_time
        return latent["samples"], samples["samples"], pixels

    # 1. sampling with gradients off equals the template's KSampler and VAEDecode
    spec = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=LENGTH)
    empty_latent, core_latents, core_pixels = core_sample(shifted, LENGTH)
    backend = video_model().get()
    report["backend"] = {k: v for k, v in backend.describe().items() if isinstance(v, str | int | float)}
    with torch.inference_mode(False), torch.no_grad():
        embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, cfg)
        noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        latents = sample_latents(
            backend, embeddings, noise, SamplerConfig(num_inference_steps=steps, guidance_scale=cfg), 0
        )
        start_time = time.perf_counter()
        whole = backend.decode(latents)
        seconds["decode_5_frames"] = time.perf_counter() - start_time
    report["sampling"] = {
        "noise_shape": list(noise.shape),
        "empty_latent_shape": list(empty_latent.shape),
        "latent_max_abs_diff": (latents.cpu() - core_latents.cpu()).abs().max().item(),
        "latent_scale": core_latents.abs().max().item(),
        "frames_shape": list(whole.shape),
        "core_pixels_shape": list(core_pixels.shape),
        "frames_max_abs_diff": (whole[0].permute(0, 2, 3, 1).cpu() - core_pixels.cpu()).abs().max().item(),
    }
    save()

    # 2. decoding some frames equals those frames of the whole decode
    subsets = {}
    with torch.inference_mode(False), torch.no_grad():
        for indices in ([0], [2, 4]):
            part = backend.decode(latents, frame_indices=indices)
            subsets[str(indices)] = (part[0] - whole[0, indices]).abs().max().item()
    report["frame_subsets"] = subsets
    # 3. a training step, decoding two latent frames frame by frame (residual blocks checkpointed, caches on the
    # host: the 24GB preset's options): gradient on every adapter, none on model or VAE weights; the same frames
    # and latent gradient as the plain decode's backward
    with torch.inference_mode(False):
        named = backend.add_lora(LoRAConfig(rank=2, alpha=2.0, target_preset="attention_ffn"), "probe")
        embeddings = backend.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, cfg)
        noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        latents = sample_latents(
            backend, embeddings, noise, SamplerConfig(num_inference_steps=steps, guidance_scale=cfg), 1
        )
        latents.retain_grad()
        start_time = time.perf_counter()
        by_frame = backend.decode(
            latents, frame_indices=[0, 4], options=DecodeOptions(frame_by_frame_backward=True,
            checkpoint_residual_blocks=True, cache_host=torch.device("cpu")),
        )  # fmt: skip
        weights = torch.linspace(0, 1, by_frame.numel()).view_as(by_frame)
        (by_frame * weights).sum().backward()
        seconds["decode_2_latent_frames_frame_by_frame_backward"] = time.perf_counter() - start_time
        downs = [p.grad for n, p in named.items() if n.endswith("lora_down.weight")]
        report["gradients"] = {
            "adapters": len(downs),
            "with_gradient": sum(1 for g in downs if g is not None and bool(g.abs().sum() > 0)),
            "finite": all(bool(torch.isfinite(p.grad).all()) for p in named.values() if p.grad is not None),
            "model_weights_with_grad": sum(1 for p in model.model.parameters() if p.grad is not None),
            "vae_weights_with_grad": sum(1 for p in vae.first_stage_model.parameters() if p.grad is not None),
        }
        backend.remove_lora("probe")
        x = latents.detach().clone().requires_grad_()
        start_time = time.perf_counter()
        plain = backend.decode(x, frame_indices=[0, 4])
        (plain * weights).sum().backward()
        seconds["decode_2_latent_frames_backward"] = time.perf_counter() - start_time
        report["decode_backward"] = {
            "frames_max_abs_diff": (by_frame - plain).abs().max().item(),
            "grad_max_abs_diff": (latents.grad - x.grad).abs().max().item(),
            "grad_scale": x.grad.abs().max().item(),
            "first_latent_frame_grad": x.grad[:, :, 0].abs().sum().item(),
        }
    save()
    # 3b. the backward in 2x2 spatial tiles (the 16GB preset's decode.backward_tiles) on a 4x8 latent, so that
    # a tile and its halo are narrower than the frame: the same frames and latent gradient as the plain decode;
    # and the decoder cut into trunk and tail computes exactly what the decoder computes
    with torch.inference_mode(False):
        from drf_pack.drf_core.models.vae_backward import split_decoder

        wide = torch.randn(1, 48, 2, 4, 8, generator=torch.Generator().manual_seed(6))
        results = []
        start_time = time.perf_counter()
        for options in (
            DecodeOptions(),
            DecodeOptions(frame_by_frame_backward=True, cache_host=torch.device("cpu"), backward_tiles=2),
        ):
            x = wide.clone().requires_grad_()
            frames = backend.decode(x, options=options)
            (frames * torch.linspace(0, 1, frames.numel()).view_as(frames)).sum().backward()
            results.append((frames.detach(), x.grad))
        seconds["decode_4x8_latent_plain_and_tiled_backward"] = time.perf_counter() - start_time
        (plain, plain_grad), (tiled, tiled_grad) = results
        stage = vae.first_stage_model
        split = split_decoder(stage.decoder)
        z = stage.conv2(wide.to(vae.vae_dtype))
        whole_cache = [None] * comfy.ldm.wan.vae.count_conv3d(stage.decoder)
        parts_cache = list(whole_cache)
        diffs = []
        with torch.no_grad():
            for index in range(z.shape[2]):
                frame = z[:, :, index : index + 1]
                whole = stage.decoder(frame, feat_cache=whole_cache, feat_idx=[0], first_chunk=index == 0)
                parts = split.tail(split.trunk(frame, index, parts_cache), index, parts_cache)
                diffs.append((parts - whole).abs().max().item())
        report["tiled_backward"] = {
            "frames_max_abs_diff": (tiled - plain).abs().max().item(),
            "grad_max_abs_diff": (tiled_grad - plain_grad).abs().max().item(),
            "grad_scale": plain_grad.abs().max().item(),
            "split_max_abs_diff": max(diffs),
            "halo": split.halo,
            "trunk_slots": split.trunk_slots,
            "tail_input_width": split.trunk(z[:, :, :1], 0, [None] * len(whole_cache)).shape[-1],
        }
    save()

    # 4. train a LoRA (one frame: one latent frame to decode), apply it with core LoraLoaderModelOnly
    class Brightness(RewardFunction):
        """Mean brightness: differentiable, needs no critic."""

        def __call__(self, frames, questions):
            return RewardResult(total=frames.mean())

    one_frame = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=1)
    config = TrainConfig(
        prompts=[POSITIVE_TEXT], negative_prompt=NEGATIVE_TEXT, steps=1, seed=0, video=one_frame,
        sampler=SamplerConfig(num_inference_steps=steps, truncated_backprop_steps=1, guidance_scale=cfg),
        decode=DecodeConfig("all", 1), lora=LoRAConfig(rank=2, alpha=2.0, target_preset="attention_ffn"),
        optimizer=OptimizerConfig(learning_rate=5e-2), checkpoint_interval=0,
    )  # fmt: skip
    wire = video_model()
    warnings = _Warnings("drf_pack.drf_core.api")
    start_time = time.perf_counter()
    with torch.inference_mode(False):
        trained = api.train_lora(
            wire.get(), Brightness(), [decompose(POSITIVE_TEXT)], config, out_dir / "run", resume=False
        )
    seconds["train_one_step"] = time.perf_counter() - start_time
    report["frame_rate_warnings"] = {"video_fps 16 (the default)": warnings.take()}
    api.warn_on_frame_rate(wire.get(), CriticInputConfig(video_fps=24.0))
    report["frame_rate_warnings"]["video_fps 24"] = warnings.take()
    loras = out_dir / "loras"
    loras.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras))
    lora_file = api.save_trained_lora(trained.lora, loras / "drf_ti2v.safetensors", trained.family, "comfyui")
    with torch.inference_mode():
        (core_lora_model,) = core.LoraLoaderModelOnly().load_lora_model_only(shifted, lora_file.name, 1.0)
    _, lora_latents, lora_pixels = core_sample(core_lora_model, 1)
    _, base_latents, _ = core_sample(shifted, 1)
    common = dict(
        video_model=wire, prompt=POSITIVE_TEXT, negative_prompt=NEGATIVE_TEXT, width=WIDTH, height=HEIGHT,
        num_frames=1, steps=steps, guidance_scale=cfg, scheduler="default", seed=SEED, lora_strength=1.0,
    )  # fmt: skip
    lora_wire = TrainedLoRAWire(trained.lora, trained.family, "trained")
    # inside a prompt's inference mode, switched off as the bridge (_comfy.py) switches it off for every node
    with torch.inference_mode(), torch.inference_mode(False):
        (node_frames,) = SampleVideo.run(ctx, **common, lora=lora_wire).outputs
        preview = wire.get()
        preview.apply_lora(trained.lora, "preview", strength=1.0)
        with torch.no_grad():
            embeddings = preview.encode_prompts([POSITIVE_TEXT], NEGATIVE_TEXT, cfg)
            noise = preview.init_noise(one_frame, 1, torch.Generator().manual_seed(SEED))
            ours = sample_latents(
                preview, embeddings, noise, SamplerConfig(num_inference_steps=steps, guidance_scale=cfg), 0
            )
        preview.remove_lora("preview")
    report["lora"] = {
        "layers": len(trained.lora.modules),
        "latent_max_abs_diff": (ours.cpu() - lora_latents.cpu()).abs().max().item(),
        "frames_max_abs_diff": (node_frames.cpu() - lora_pixels.cpu()).abs().max().item(),
        "node_frames_shape": list(node_frames.shape),
        "differs_from_base": (lora_latents - base_latents).abs().max().item(),
        "latent_scale": base_latents.abs().max().item(),
    }
    save()

    # 5. the Wan 2.1 VAE does not decode this MODEL's latents: refused when the video model is built
    with torch.inference_mode():
        wan21_vae = comfy.sd.VAE(sd=random_wan_vae_state(comfy.ldm.wan.vae.WanVAE, torch, dtype=torch.float16))
    try:
        video_model(shifted, wan21_vae)
        report["wrong_vae_error"] = None
    except DRFInputError as error:
        report["wrong_vae_error"] = str(error)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

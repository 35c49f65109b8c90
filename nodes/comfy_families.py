"""The model families Video Model from ComfyUI trains (a registry): what differs between them.

A `ComfyFamily` says, for one kind of ComfyUI MODEL (recognised by its `comfy.model_base` class):

- which sizes it samples (`num_frames_out`) and the shape of its empty latent, drawn as core
  KSampler draws noise for it (`noise_shape`: a video latent `[B, C, F, H/8, W/8]` as core
  EmptyHunyuanLatentVideo makes it, an image latent `[B, 16, H/8, W/8]` as EmptySD3LatentImage);
- how its VAE decodes with gradient (`decode`, core VAEDecode's computation) into frames
  `[B, F, 3, H, W]` in 0..1 (an image is one frame);
- its LoRA target presets and the LoRA module names (`native_module_name`, and back);
- whether it makes still images (`still_image`: the trainer then asks the critic about a picture
  and leaves out questions about motion).

Families: `wan` (Wan 2.1 / 2.2 text-to-video, `WAN21`; diffusers module names, like the diffusers
backend's, so LoRAs move between the two backends) and `flux` (Flux dev, `model_base.Flux` with
guidance embedding; ComfyUI's own module names, e.g. `double_blocks.0.img_attn.qkv`).

Knows nothing about sampling (`comfy_solver.py`) or the LoRA life cycle (`comfy_backend.py`).
Imported only inside ComfyUI (it imports `comfy`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import comfy.model_base
import comfy.model_management as model_management
import torch
from torch.utils.checkpoint import checkpoint

from ..drf_core.config import VideoSpec
from ..drf_core.errors import DRFInputError
from ..drf_core.models import FLUX_MODULE_NAMES
from ..drf_core.models.base import DecodeOptions
from ..drf_core.models.vae_backward import decode_frame_by_frame, split_decoder
from ..drf_core.models.wan import WanBackend, latent_frames_needed
from ..drf_core.registry import Registry
from .comfy_wan_vae import check_vae_matches_model, wan_vae_layout

logger = logging.getLogger(__name__)


class ComfyFamily(ABC):
    """One model family on ComfyUI's objects (see the module docstring)."""

    name: ClassVar[str]
    still_image: ClassVar[bool] = False
    # ComfyUI's blocks of this family change tensors in place that autograd saved (Flux: `x += ...`), so they
    # are differentiated only checkpointed (the recomputation stops before the change).
    blocks_change_inputs: ClassVar[bool] = False
    lora_target_presets: ClassVar[dict[str, list[str]]]

    @abstractmethod
    def accepts(self, base: Any) -> bool:
        """True for a MODEL's `model_base` object of this family (`check` then says what is wrong with it)."""

    @abstractmethod
    def check(self, base: Any) -> None:
        """Refuse a MODEL of this family that Diffusion-DRF cannot train, saying which one to load."""

    @abstractmethod
    def native_module_name(self, module_name: str) -> str:
        """The MODEL's own name (under `diffusion_model.`) for a LoRA module name."""

    @abstractmethod
    def module_name_from_native(self, native_name: str) -> str:
        """The inverse of `native_module_name`; `DRFInputError` for layers LoRAs do not name."""

    @abstractmethod
    def num_frames_out(self, vae: Any, spec: VideoSpec) -> int:
        """The frames a sample of `spec` has with this VAE; refuses sizes the family cannot make."""

    @abstractmethod
    def noise_shape(self, vae: Any, latent_format: Any, spec: VideoSpec, batch_size: int) -> tuple[int, ...]:
        """The shape of the family's empty latent for `spec` (core KSampler draws noise of this shape)."""

    def check_vae(self, vae: Any, base: Any) -> None:  # noqa: B027 (a hook: most families accept any VAE)
        """Refuse a VAE that does not decode this MODEL's latents, saying which one to load."""

    def frame_rate(self, vae: Any) -> float | None:
        """Frames per second of the family's videos with this VAE (None: still images)."""
        return None

    def vae_name(self, vae: Any) -> str:
        return type(vae.first_stage_model).__name__

    @abstractmethod
    def decode(
        self, vae: Any, latents: torch.Tensor, frame_indices: Sequence[int] | None, options: DecodeOptions
    ) -> torch.Tensor:
        """Core VAEDecode's computation with gradient: frames `[B, F, 3, H, W]` in 0..1 (float32)."""


def _check_multiple_of_16(family: str, spec: VideoSpec) -> None:
    bad = [(n, v) for n, v in (("height", spec.height), ("width", spec.width)) if v % 16]
    if bad:
        raise DRFInputError(
            f"{family} needs height and width that are multiples of 16, got {spec.height}x{spec.width}; "
            + "; ".join(f"{n} {v}: use {max(16, v // 16 * 16)}" for n, v in bad)
        )


def _loaded_stage(vae: Any, latents: torch.Tensor) -> torch.nn.Module:
    """The VAE's first stage, loaded by ComfyUI for decoding `latents`, usable by autograd and frozen."""
    from .comfy_autograd import make_autograd_safe

    model_management.load_models_gpu(
        [vae.patcher], memory_required=vae.memory_used_decode(latents.shape, vae.vae_dtype)
    )
    stage = vae.first_stage_model
    make_autograd_safe(stage)
    stage.requires_grad_(False)
    return stage


# ----------------------------------------------------------------------------------------------
# Wan
# ----------------------------------------------------------------------------------------------


class WanFamily(ComfyFamily):
    """Wan 2.1 / 2.2 text-to-video (`WAN21`; Wan 2.2 TI2V-5B: `WAN22` on the Wan 2.2 VAE's latents): video
    latents, the causal Wan VAEs (what differs between them: `comfy_wan_vae.py`), diffusers module names."""

    name = "wan"
    lora_target_presets = WanBackend.lora_target_presets
    native_module_name = staticmethod(WanBackend.native_module_name)
    module_name_from_native = staticmethod(WanBackend.module_name_from_native)

    def accepts(self, base: Any) -> bool:
        if type(base) is comfy.model_base.WAN22:
            return _is_wan22_ti2v_5b(base)  # text-to-video when sampled from an empty latent (no start image)
        return type(base) is comfy.model_base.WAN21

    def check_vae(self, vae: Any, base: Any) -> None:
        check_vae_matches_model(wan_vae_layout(vae), base.latent_format.latent_channels, type(base).__name__)

    def frame_rate(self, vae: Any) -> float | None:
        return wan_vae_layout(vae).frame_rate

    def vae_name(self, vae: Any) -> str:
        return wan_vae_layout(vae).name

    def check(self, base: Any) -> None:
        # WAN22 (TI2V-5B) says image_to_video too: it takes a start image when given one, and is text-to-video
        # from an empty latent, as here.
        if type(base) is comfy.model_base.WAN21 and getattr(base, "image_to_video", False):
            raise DRFInputError(
                "this MODEL is a Wan image-to-video model; Diffusion-DRF trains text-to-video models: load a Wan "
                "text-to-video model (e.g. wan2.1_t2v_1.3B_fp16.safetensors)"
            )

    def num_frames_out(self, vae: Any, spec: VideoSpec) -> int:
        """The VAE's latent node's sizes (`comfy_wan_vae.WanVaeLayout`): width and height in its steps (16 for
        the Wan 2.1 VAE, 32 for the Wan 2.2 VAE), `4n+1` frames."""
        return wan_vae_layout(vae).num_frames_out(spec)

    def noise_shape(self, vae: Any, latent_format: Any, spec: VideoSpec, batch_size: int) -> tuple[int, ...]:
        """The empty video latent of EmptyHunyuanLatentVideo (Wan 2.1 VAE) or Wan22ImageToVideoLatent (Wan 2.2)."""
        return wan_vae_layout(vae).latent_shape(spec, batch_size)

    def decode(
        self, vae: Any, latents: torch.Tensor, frame_indices: Sequence[int] | None, options: DecodeOptions
    ) -> torch.Tensor:
        """`process_output(decoder(latents))`, per latent frame (then `unpatchify` for the Wan 2.2 VAE); only
        latent frames up to the last requested frame are decoded (the decoder is causal).
        `segment_latent_frames` is not applied to ComfyUI's VAE (logged): every latent frame's causal cache
        is kept for backward, as with 0; `frame_by_frame_backward` is (`vae_backward.decode_frame_by_frame`,
        tiled with `backward_tiles` where the decoder has a known split: the Wan 2.1 VAE's; every
        `cache_interval`-th cache kept)."""
        if options.segment_latent_frames and not options.frame_by_frame_backward:
            logger.warning("decode.segment_latent_frames applies to the diffusers VAE only; ComfyUI's decodes whole")
        layout = wan_vae_layout(vae)
        stage = _loaded_stage(vae, latents)
        latent_frames = latent_frames_needed(latents.shape[2], frame_indices, layout.temporal_scale)
        z = stage.conv2(latents[:, :, :latent_frames].to(vae.vae_dtype).to(vae.device))
        cache = layout.new_cache(stage.decoder)
        blocks = options.checkpoint_residual_blocks
        if options.frame_by_frame_backward and torch.is_grad_enabled():

            def step(chunk: torch.Tensor, index: int, cache: list[Any]) -> tuple[torch.Tensor, list[Any]]:
                return layout.decode_chunk(stage.decoder, chunk, cache, index == 0, blocks)

            split = split_decoder(stage.decoder) if options.backward_tiles > 1 else None
            decoded = decode_frame_by_frame(
                step, z, cache, options.cache_host, split, options.backward_tiles, options.cache_interval
            )
        else:
            outputs = []
            for i in range(latent_frames):
                chunk = z[:, :, i : i + 1]
                if options.checkpoint_per_latent_frame and torch.is_grad_enabled():
                    out, cache = checkpoint(
                        layout.decode_chunk, stage.decoder, chunk, cache, i == 0, blocks, use_reentrant=False
                    )
                else:
                    out, cache = layout.decode_chunk(stage.decoder, chunk, cache, i == 0, blocks)
                outputs.append(out)
            decoded = torch.cat(outputs, dim=2)
        video = vae.process_output(layout.finish(decoded).float())  # [B, 3, F, H, W] in 0..1
        frames = video.permute(0, 2, 1, 3, 4)
        if frame_indices is not None:
            frames = frames[:, list(frame_indices)]
        return frames.float()


def _is_wan22_ti2v_5b(base: Any) -> bool:
    """ComfyUI's WAN22 class is TI2V-5B: its denoiser reads and writes the Wan 2.2 VAE's latents and
    nothing else (no extra input channels for a start image or a mask)."""
    embedding = base.diffusion_model.patch_embedding.weight
    return embedding.shape[1] == base.latent_format.latent_channels


# ----------------------------------------------------------------------------------------------
# Flux
# ----------------------------------------------------------------------------------------------

# Double blocks: separate image / text attention and MLP; single blocks: `linear1` computes q, k, v and
# the MLP's input together, `linear2` the attention output and the MLP's output.
_FLUX_ATTENTION = ["img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "linear1", "linear2"]
_FLUX_MLP = ["img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2"]


class FluxFamily(ComfyFamily):
    """Flux dev (`model_base.Flux` with guidance embedding): one image, 16-channel latents, ComfyUI's names."""

    name = "flux"
    still_image = True
    blocks_change_inputs = True
    lora_target_presets: ClassVar[dict[str, list[str]]] = {
        "attention": list(_FLUX_ATTENTION),
        "attention_ffn": [*_FLUX_ATTENTION, *_FLUX_MLP],
    }
    native_module_name = staticmethod(FLUX_MODULE_NAMES.to_native)
    module_name_from_native = staticmethod(FLUX_MODULE_NAMES.from_native)

    def accepts(self, base: Any) -> bool:
        return type(base) is comfy.model_base.Flux

    def check(self, base: Any) -> None:
        config = base.model_config.unet_config
        if config.get("image_model") != "flux" or not config.get("guidance_embed", False):
            kind = config.get("image_model") if config.get("image_model") != "flux" else "Flux schnell (no guidance)"
            raise DRFInputError(
                f"this MODEL is {kind}; training on Flux models supports Flux dev (e.g. flux1-dev.safetensors)"
            )
        channels = config.get("in_channels", 16)
        if channels != 16:
            raise DRFInputError(
                f"this Flux MODEL takes {channels} input channels (a fill / depth / canny model); Diffusion-DRF "
                "trains text-to-image Flux dev (16 channels)"
            )

    def num_frames_out(self, vae: Any, spec: VideoSpec) -> int:
        """Core EmptySD3LatentImage's sizes (steps of 16); one image: `num_frames` other than 1 is refused
        (a setting that would be ignored misleads: the run's videos, memory and report would not be what it says)."""
        _check_multiple_of_16("Flux", spec)
        if spec.num_frames != 1:
            raise DRFInputError(
                f"num_frames is {spec.num_frames}, but Flux is an image model: it makes one image per prompt; set "
                "num_frames to 1 on Train LoRA, Sample Video and Evaluate LoRA"
            )
        return 1

    def noise_shape(self, vae: Any, latent_format: Any, spec: VideoSpec, batch_size: int) -> tuple[int, ...]:
        self.num_frames_out(vae, spec)
        return (batch_size, latent_format.latent_channels, spec.height // 8, spec.width // 8)

    def decode(
        self, vae: Any, latents: torch.Tensor, frame_indices: Sequence[int] | None, options: DecodeOptions
    ) -> torch.Tensor:
        """`process_output(first_stage_model.decode(latents))` as core VAEDecode computes it, as one frame.

        The image has one frame: `frame_indices` may only name frame 0; the per-latent-frame options do
        not apply (an image decodes in one call)."""
        if latents.ndim != 4:
            raise DRFInputError(f"Flux latents are [B, 16, H/8, W/8]; got shape {tuple(latents.shape)}")
        if frame_indices is not None and list(frame_indices) != [0]:
            raise DRFInputError(f"an image has one frame (index 0); frame indices {list(frame_indices)} were asked")
        stage = _loaded_stage(vae, latents)
        pixels = stage.decode(latents.to(vae.vae_dtype).to(vae.device))
        image = vae.process_output(pixels.float())  # [B, 3, H, W] in 0..1
        return image.unsqueeze(1).float()


COMFY_FAMILIES: Registry[ComfyFamily] = Registry("ComfyUI model family")
COMFY_FAMILIES.add(WanFamily.name, WanFamily())
COMFY_FAMILIES.add(FluxFamily.name, FluxFamily())


def family_of(model: Any) -> ComfyFamily:
    """The family of a ComfyUI MODEL (ModelPatcher), checked; a clear error for models no family trains."""
    base = model.model
    for name in COMFY_FAMILIES:
        family = COMFY_FAMILIES.get(name)
        if family.accepts(base):
            family.check(base)
            return family
    raise DRFInputError(
        f"this MODEL is a {type(base).__name__} model; training on ComfyUI models supports Wan 2.1 / 2.2 "
        "text-to-video (WAN21, Wan 2.2 TI2V-5B) and Flux dev so far: load one with Load Diffusion Model"
    )

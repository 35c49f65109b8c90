"""What the ComfyUI backend needs to know about each Wan VAE ComfyUI builds: sizes, noise, decoding, frame rate.

ComfyUI's VAELoader builds one of two Wan VAEs from a file's keys (`comfy.sd.VAE`):

- the Wan 2.1 VAE (`wan_2.1_vae.safetensors`, `comfy.ldm.wan.vae.WanVAE`): 16 latent channels, 8x
  spatial, 4x temporal; used by Wan 2.1 and Wan 2.2 A14B (16 fps);
- the Wan 2.2 VAE (`wan2.2_vae.safetensors`, `comfy.ldm.wan.vae2_2.WanVAE`): 48 latent channels,
  16x spatial (its decoder works at 8x and `unpatchify` doubles the sides), 4x temporal, the first
  latent frame decoded with `first_chunk=True`; used by Wan 2.2 TI2V-5B (24 fps, ComfyUI's template).

`WAN_VAES` maps the VAE class to a `WanVaeLayout`, which gives the latent shape (as core
EmptyHunyuanLatentVideo / Wan22ImageToVideoLatent make it), the frame count and size rules, the
frame rate, and one causal decoder call (`decode_chunk`, what the VAE's own `decode` does per latent
frame). The backend (`comfy_backend.py`) reads everything VAE-specific from here.

Knows ComfyUI's Wan VAE classes; knows nothing about diffusion models, LoRAs or training.
Imported only inside ComfyUI (it imports `comfy`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import comfy.ldm.wan.vae as wan21_vae
import comfy.ldm.wan.vae2_2 as wan22_vae
import torch

from ..drf_core.config import VideoSpec
from ..drf_core.errors import DRFInputError
from ..drf_core.models.vae_blocks import checkpoint_residual_blocks


@dataclass(frozen=True)
class WanVaeLayout:
    """One Wan VAE as ComfyUI builds it."""

    name: str
    file: str  # its file in ComfyUI's templates (models/vae)
    models: str  # the Wan models made for it
    latent_channels: int
    spatial_scale: int  # pixels per latent cell along height and width
    temporal_scale: int  # pixel frames per latent frame after the first
    size_step: int  # height and width must be multiples of this (ComfyUI's latent node's step)
    latent_node: str  # the core node that makes this VAE's empty video latent
    frame_rate: float  # frames per second of the videos its models make (ComfyUI's template)
    first_chunk: bool  # the decoder takes `first_chunk=True` for latent frame 0
    patch_size: int  # `unpatchify` after decoding (1: none)

    def num_frames_out(self, spec: VideoSpec) -> int:
        """The frames a clip of `spec` has: `4n+1` (the latent node's rule); bad sizes are refused."""
        step = self.size_step
        bad = [(n, v) for n, v in (("height", spec.height), ("width", spec.width)) if v % step]
        if bad:
            raise DRFInputError(
                f"with the {self.name}, height and width must be multiples of {step} (as {self.latent_node} makes "
                f"them), got {spec.height}x{spec.width}; "
                + "; ".join(f"{n} {v}: use {max(step, v // step * step)}" for n, v in bad)
            )
        return (spec.num_frames - 1) // self.temporal_scale * self.temporal_scale + 1

    def latent_shape(self, spec: VideoSpec, batch_size: int) -> tuple[int, int, int, int, int]:
        """`[B, C, F, H, W]` of the empty latent the latent node makes for `spec`."""
        frames = (self.num_frames_out(spec) - 1) // self.temporal_scale + 1
        scale = self.spatial_scale
        return (batch_size, self.latent_channels, frames, spec.height // scale, spec.width // scale)

    def new_cache(self, decoder: torch.nn.Module) -> list[Any]:
        """An empty causal cache for `decoder` (one slot per causal 3-D convolution)."""
        return [None] * wan21_vae.count_conv3d(decoder)

    def decode_chunk(
        self,
        decoder: torch.nn.Module,
        chunk: torch.Tensor,
        cache: list[Any],
        first: bool,
        checkpoint_blocks: bool = False,
    ) -> tuple[torch.Tensor, list[Any]]:
        """One causal decoder call on one latent frame as a pure function: the cache goes in, a new cache
        comes out (so it can be checkpointed). `first`: this is latent frame 0.

        With `checkpoint_blocks`, the residual blocks are checkpointed too (`drf_core.models.vae_blocks`).
        """
        new_cache = list(cache)
        extra = {"first_chunk": True} if self.first_chunk and first else {}
        with checkpoint_residual_blocks(decoder) if checkpoint_blocks else contextlib.nullcontext():
            out = decoder(chunk, feat_cache=new_cache, feat_idx=[0], **extra)
        return out, new_cache

    def finish(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoder's output over all decoded latent frames -> the VAE's output (before `process_output`)."""
        return wan22_vae.unpatchify(decoded, self.patch_size) if self.patch_size > 1 else decoded


WAN_VAES: dict[type, WanVaeLayout] = {
    wan21_vae.WanVAE: WanVaeLayout(
        name="Wan 2.1 VAE",
        file="wan_2.1_vae.safetensors",
        models="Wan 2.1, Wan 2.2 A14B",
        latent_channels=16,
        spatial_scale=8,
        temporal_scale=4,
        size_step=16,
        latent_node="EmptyHunyuanLatentVideo",
        frame_rate=16.0,
        first_chunk=False,
        patch_size=1,
    ),
    wan22_vae.WanVAE: WanVaeLayout(
        name="Wan 2.2 VAE",
        file="wan2.2_vae.safetensors",
        models="Wan 2.2 TI2V-5B",
        latent_channels=48,
        spatial_scale=16,
        temporal_scale=4,
        size_step=32,
        latent_node="Wan22ImageToVideoLatent",
        frame_rate=24.0,
        first_chunk=True,
        patch_size=2,
    ),
}


def wan_vae_layout(vae: Any) -> WanVaeLayout:
    """The layout of a ComfyUI VAE (core Load VAE's output); other VAEs are refused with what to load."""
    stage = getattr(vae, "first_stage_model", None)
    layout = WAN_VAES.get(type(stage))
    if layout is None:
        known = "; ".join(f"{lay.name} ({lay.file}) for {lay.models}" for lay in WAN_VAES.values())
        raise DRFInputError(
            f"this VAE is a {type(stage).__module__}.{type(stage).__name__}; Video Model from ComfyUI decodes with "
            f"a Wan VAE: {known}. Load the VAE your Wan model's template uses with Load VAE"
        )
    return layout


def check_vae_matches_model(layout: WanVaeLayout, model_latent_channels: int, model_name: str) -> None:
    """A MODEL denoises latents of one VAE; the other one's latents have another channel count."""
    if layout.latent_channels == model_latent_channels:
        return
    wanted = [lay for lay in WAN_VAES.values() if lay.latent_channels == model_latent_channels]
    fix = f"the {wanted[0].name} ({wanted[0].file}), made for {wanted[0].models}" if wanted else "its own VAE"
    raise DRFInputError(
        f"the VAE is the {layout.name} ({layout.latent_channels} latent channels) but this {model_name} MODEL "
        f"works on {model_latent_channels} latent channels; connect {fix}"
    )

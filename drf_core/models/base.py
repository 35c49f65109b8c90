"""What every text-to-video backend offers the sampler, the LoRA code and the trainer.

A backend owns one model family's pieces (text encoder, denoiser, scheduler config, VAE) and
exposes them as small steps: encode prompts once (so the text encoder can be freed), make noise,
make a fresh scheduler, predict one denoising step with classifier-free guidance, decode latents to
frames in 0..1 with gradient. The sampler (`sampler.py`) drives these steps; it never sees a
family's classes. The backend also owns the LoRA life cycle on its denoiser (add, apply a saved
one, snapshot, remove, the original checkpoint's module names for export), so the trainer and `api`
never touch a LoRA implementation: `models/peft_lora.py` does it with peft on diffusers modules,
the ComfyUI backend (in `nodes/`) with ComfyUI's own weight adapters.

Knows nothing about rewards, critics or training loops.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import DecodeConfig, LoRAConfig, VideoSpec
from ..errors import DRFInputError
from ..lora import LoRAWeights


@dataclass(frozen=True)
class DecodeOptions:
    """How `VideoBackend.decode` spends memory in backward; the frames and gradients are the same.

    `checkpoint_per_latent_frame` checkpoints each latent frame's decode; `checkpoint_residual_blocks`
    also the decoder's residual blocks (`models/vae_blocks.py`); `segment_latent_frames` > 0 keeps only
    each segment's input for backward. `frame_by_frame_backward` keeps only each latent frame's starting
    cache (on `cache_host` when given; every `cache_interval`-th one, the others decoded again) and decodes
    frame by frame again in backward (`vae_backward.decode_frame_by_frame`), in `backward_tiles` x
    `backward_tiles` spatial tiles when > 1 (same gradients up to summation order).
    """

    checkpoint_per_latent_frame: bool = False
    checkpoint_residual_blocks: bool = False
    segment_latent_frames: int = 0
    frame_by_frame_backward: bool = False
    cache_host: torch.device | None = None
    backward_tiles: int = 1
    cache_interval: int = 1

    @classmethod
    def from_config(cls, decode: DecodeConfig, cache_host: torch.device | None = None) -> DecodeOptions:
        """A run's decode settings (`cache_host`: where the caches go when `decode.caches_on_host`)."""
        return cls(
            checkpoint_per_latent_frame=decode.checkpoint_per_latent_frame,
            checkpoint_residual_blocks=decode.checkpoint_residual_blocks,
            segment_latent_frames=decode.segment_latent_frames,
            frame_by_frame_backward=decode.frame_by_frame_backward,
            cache_host=cache_host,
            backward_tiles=decode.backward_tiles,
            cache_interval=decode.cache_interval,
        )


NO_SAVERS = DecodeOptions()  # keep everything for backward: the fastest


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch: `positive[i]` pairs with `negative[i]` (None without CFG)."""

    positive: torch.Tensor
    negative: torch.Tensor | None

    def select(self, indices: Sequence[int]) -> PromptEmbeddings:
        index = torch.as_tensor(list(indices), device=self.positive.device)
        return PromptEmbeddings(
            self.positive.index_select(0, index),
            None if self.negative is None else self.negative.index_select(0, index),
        )


class DenoisingScheduler(ABC):
    """A fresh, stateful scheduler for one sampling run (multistep solvers keep history).

    The sampler calls `start` once, then `predict` + `step` for each of `timesteps`, then `close`
    (also when sampling fails or is stopped).
    """

    timesteps: torch.Tensor

    def start(self, noise: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float) -> torch.Tensor:
        """The latents of the first denoiser call (by default the noise itself)."""
        return noise

    @abstractmethod
    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """One solver step; differentiable with respect to `model_output` and `latents`."""

    def close(self) -> None:
        """Release what the run holds (nothing by default)."""
        return None


class VideoBackend(ABC):
    """One text-to-video model family. Implementations register in `models.VIDEO_BACKENDS`."""

    family: ClassVar[str]
    # Names of LoRA target-module presets -> module-name suffixes of `denoiser`.
    lora_target_presets: ClassVar[dict[str, list[str]]]
    # How the frozen denoiser weights are stored: a key of `models.VIDEO_WEIGHT_STORAGES` ("auto": as loaded).
    weight_storage: str = "auto"

    device: torch.device
    dtype: torch.dtype
    # Where the folder came from (for LoRA metadata and reports).
    source: str
    # Frames per second of the videos the model makes, when the backend knows it (None: not known).
    frame_rate: float | None = None

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The module LoRA trains (for Wan: `WanTransformer3DModel`)."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        """Text embeddings, computed without gradient; cached so repeated prompts cost nothing."""

    @abstractmethod
    def release_text_encoder(self) -> None:
        """Free the text encoder (cached embeddings stay usable)."""

    @abstractmethod
    def init_noise(self, spec: VideoSpec, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Initial latents, drawn exactly as the family's own pipeline draws them."""

    @abstractmethod
    def new_scheduler(
        self, num_inference_steps: int, name: str = "default", flow_shift: float | None = None
    ) -> DenoisingScheduler:
        """A fresh scheduler with its timesteps set."""

    @abstractmethod
    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float
    ) -> torch.Tensor:
        """The model output for one step, classifier-free guidance applied."""

    @abstractmethod
    def set_block_checkpointing(self, enabled: bool) -> None:
        """Checkpoint each transformer block of `denoiser` (recompute in backward)."""

    @abstractmethod
    def num_frames_out(self, spec: VideoSpec) -> int:
        """How many frames a video of `spec` has after decoding (the family may round)."""

    @abstractmethod
    def decode(
        self, latents: torch.Tensor, frame_indices: Sequence[int] | None = None, options: DecodeOptions = NO_SAVERS
    ) -> torch.Tensor:
        """Frames `[B, F, 3, H, W]` float32 in 0..1, differentiable w.r.t. `latents`.

        With `frame_indices`, only those output frames are returned, and latent frames after the
        last one needed are not decoded at all. `options` trade time for memory in backward and never
        change values (`DecodeOptions`).
        """

    def offload_groups(self) -> dict[str, tuple[list[torch.nn.Module], torch.device]]:
        """Modules phase offload may keep in host RAM between phases, by group name (`offload.py`).

        None by default: a backend whose host manages its memory (ComfyUI) offers nothing.
        """
        return {}

    @abstractmethod
    def native_module_name(self, module_name: str) -> str:
        """The original checkpoint's name for a `denoiser` module (what ComfyUI's LoRA loader applies)."""

    @abstractmethod
    def module_name_from_native(self, native_name: str) -> str:
        """The inverse of `native_module_name` (to read ComfyUI-format LoRA files back)."""

    # --- LoRA life cycle (module names are `denoiser`'s own; `native_module_name` maps them) ----

    @abstractmethod
    def add_lora(self, config: LoRAConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        """A fresh trainable adapter on the `config.target_preset` layers; its parameters by stable name.

        Everything else stays frozen; the names key training checkpoints (resume).
        """

    @abstractmethod
    def apply_lora(
        self,
        lora: LoRAWeights,
        adapter_name: str,
        strength: float = 1.0,
        trainable: bool = False,
        dropout: float = 0.0,
    ) -> dict[str, torch.nn.Parameter]:
        """Put a saved LoRA on exactly (preview at `strength`, or trainable to continue training).

        Returns the trainable parameters by name (empty unless `trainable`).
        """

    @abstractmethod
    def snapshot_lora(self, adapter_name: str, metadata: dict[str, Any] | None = None) -> LoRAWeights:
        """A detached CPU copy of the adapter's weights, independent of later training or removal."""

    @abstractmethod
    def remove_lora(self, adapter_name: str) -> None:
        """Take the adapter off (nothing happens when there is none); other adapters stay as they were."""

    @abstractmethod
    def set_training(self, enabled: bool) -> None:
        """Switch the denoiser between training and evaluation behaviour."""

    @abstractmethod
    def adapters_disabled(self) -> AbstractContextManager[None]:
        """A context in which every LoRA adapter computes nothing: the base model predicts (drift penalty)."""

    def check_backprop_steps(self, num_inference_steps: int, fewest: int, most: int) -> None:
        """Refuse, before training starts, numbers of gradient-carrying last steps (`fewest` to `most` of
        `num_inference_steps`, truncated_backprop_steps or its range) under which a training step would give
        the LoRA, or a part of it on every step, no gradient. Every step runs the whole LoRA by default."""
        return None

    @classmethod
    def from_folder(cls, path: str, dtype: torch.dtype, device: torch.device) -> VideoBackend:
        """Load the family's model folder (`models.load_video_backend` checks the folder first)."""
        raise NotImplementedError(f"{cls.__name__} cannot load from a folder")

    def store_base_weights(self, storage_dtype: torch.dtype) -> None:
        """Keep the frozen denoiser weights in `storage_dtype` (e.g. fp8), cast to the compute dtype per layer
        as it runs; LoRA layers stay as they are. Backends that manage their own weights refuse."""
        raise DRFInputError(
            f"the {type(self).__name__} video model cannot change how its base weights are stored; leave "
            "video_weight_storage at 'auto' (a model from ComfyUI keeps the weight dtype ComfyUI loaded it with: "
            "choose fp8 there, e.g. weight_dtype in Load Diffusion Model)"
        )

    def describe(self) -> dict[str, Any]:
        """Facts for LoRA metadata and reports."""
        return {"family": self.family, "source": self.source}

"""The Wan 2.1 / 2.2 text-to-video backend over a local diffusers folder (`WanPipeline` layout).

Every step reproduces `diffusers.WanPipeline.__call__` (diffusers 0.42) operation by operation, so
that with gradients off the sampler's output equals the pipeline's: prompt cleaning, UMT5 encoding
padded with zeros to `max_sequence_length`, `prepare_latents`, the per-step timestep handling
(including Wan 2.2 TI2V's `expand_timesteps`), two separate CFG passes, the two-expert switch at
`boundary_ratio` (Wan 2.2 A14B), latent de-normalisation, the causal VAE decode and
`postprocess_video(output_type="pt")`.

What it adds for training: prompt embeddings are cached so the text encoder can be released;
`decode` can stop after the last latent frame a set of requested frames needs and can checkpoint
the VAE decoder per latent frame (the causal feature cache is passed in and out explicitly, so
recomputation in backward sees the same inputs and nothing stays alive in the VAE).

dtype choice: the transformer and the text encoder load in the given dtype; the VAE loads in
`vae_dtype` (default: the same dtype). diffusers' examples keep the Wan VAE in fp32 for
inference; here it decodes *with gradient*, where its activations dominate memory, so the
default follows the model dtype. Pass `vae_dtype=torch.float32` for the examples' behaviour.

Knows nothing about rewards, critics, LoRA export formats or training loops.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.checkpoint import checkpoint

from ..config import VideoSpec
from ..devices import autocast_off
from ..errors import DRFInputError, ModelFolderError
from ..offload import TEXT_ENCODER, VAE, VIDEO_MODEL, execution_device
from .base import NO_SAVERS, DecodeOptions, DenoisingScheduler, PromptEmbeddings, VideoBackend
from .diffusers_schedulers import DiffusersScheduler, build_scheduler
from .peft_lora import PeftLoRA
from .vae_backward import decode_frame_by_frame, split_decoder
from .vae_blocks import checkpoint_residual_blocks
from .wan_keys import diffusers_to_native_wan_module, native_to_diffusers_wan_module

logger = logging.getLogger(__name__)

# WanPipeline.__call__'s default max_sequence_length.
DEFAULT_MAX_SEQUENCE_LENGTH = 512

_ATTENTION_TARGETS = [f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")]
_FFN_TARGETS = ["ffn.net.0.proj", "ffn.net.2"]


def _run_decoder_chunk(
    decoder: torch.nn.Module,
    latent_frame: torch.Tensor,
    cache: list[Any],
    first_chunk: bool,
    checkpoint_blocks: bool = False,
) -> tuple[torch.Tensor, list[Any]]:
    """One causal decoder call as a pure function: the cache goes in, a *new* cache comes out.

    The decoder mutates the list it is given; it gets a copy, so the caller's list (which a
    checkpoint keeps as its input for recomputation) never changes. With `checkpoint_blocks`, its
    residual blocks are checkpointed too, also when a checkpoint recomputes this call in backward.
    """
    new_cache = list(cache)
    blocks = checkpoint_residual_blocks(decoder) if checkpoint_blocks else contextlib.nullcontext()
    with blocks:
        if first_chunk:
            out = decoder(latent_frame, feat_cache=new_cache, feat_idx=[0], first_chunk=True)
        else:
            out = decoder(latent_frame, feat_cache=new_cache, feat_idx=[0])
    return out, new_cache


def _decode_range(
    decoder: torch.nn.Module, x: torch.Tensor, cache: list[Any], first: bool, per_frame: bool, blocks: bool
) -> tuple[torch.Tensor, list[Any]]:
    """Latent frames `x[:, :, j]` one after another through the causal decoder (checkpointed per frame)."""
    chunks = []
    for j in range(x.shape[2]):
        frame, is_first = x[:, :, j : j + 1], first and j == 0
        if per_frame and torch.is_grad_enabled():
            out, cache = checkpoint(_run_decoder_chunk, decoder, frame, cache, is_first, blocks, use_reentrant=False)
        else:
            out, cache = _run_decoder_chunk(decoder, frame, cache, is_first, blocks)
        chunks.append(out)
    return torch.cat(chunks, 2), cache


def _decode_segment(
    decoder: torch.nn.Module, x: torch.Tensor, cache: list[Any], first: bool, per_frame: bool, blocks: bool
) -> tuple[torch.Tensor, list[Any]]:
    """`_decode_range` that keeps only its inputs for backward (reentrant checkpoint: the forward runs
    without gradient, so the per-frame caches inside die at once; backward decodes the segment again).

    The cache is a list of tensors and markers (None, "Rep"); the tensors pass through the checkpoint
    so their gradients reach the segment before.
    """
    is_tensor = [isinstance(entry, torch.Tensor) for entry in cache]
    markers = [entry for entry in cache if not isinstance(entry, torch.Tensor)]
    produced: dict[str, list[Any]] = {}

    def run(frames: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given, marks = iter(tensors), iter(markers)
        full = [next(given) if flag else next(marks) for flag in is_tensor]
        out, new = _decode_range(decoder, frames, full, first, per_frame, blocks)
        produced["is_tensor"] = [isinstance(entry, torch.Tensor) for entry in new]
        produced["markers"] = [entry for entry in new if not isinstance(entry, torch.Tensor)]
        return (out, *[entry for entry in new if isinstance(entry, torch.Tensor)])

    out, *tensors = checkpoint(run, x, *[e for e in cache if isinstance(e, torch.Tensor)], use_reentrant=True)
    given, marks = iter(tensors), iter(produced["markers"])
    return out, [next(given) if flag else next(marks) for flag in produced["is_tensor"]]


def _store_layerwise(model: torch.nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
    """diffusers' `enable_layerwise_casting`, keeping peft's cast of a LoRA layer's input to the LoRA dtype.

    On LoRA layers that exist already, diffusers turns that cast off (it assumes LoRA weights in the
    compute dtype); this engine keeps LoRA weights in float32, so a bf16 input must still be cast up to
    them (lossless), as peft does on layers added later.
    """
    from diffusers.hooks.layerwise_casting import _PEFT_AUTOCAST_DISABLE_HOOK

    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_PEFT_AUTOCAST_DISABLE_HOOK) is not None:
            registry.remove_hook(_PEFT_AUTOCAST_DISABLE_HOOK, recurse=False)


def _nearest_multiples(value: int, multiple: int) -> str:
    below = max(multiple, value // multiple * multiple)
    above = -(-value // multiple) * multiple
    return str(below) if below == above else f"{below} or {above}"


def latent_frames_needed(num_latent_frames: int, frame_indices: Sequence[int] | None, scale: int) -> int:
    """How many latent frames (from the first) a causal Wan VAE decodes to produce `frame_indices`.

    Latent frame 0 decodes to pixel frame 0; latent frame n >= 1 to frames 1+s(n-1) .. s*n.
    """
    if frame_indices is None:
        return num_latent_frames
    num_frames = 1 + scale * (num_latent_frames - 1)
    if len(frame_indices) == 0:
        raise DRFInputError("frame_indices is empty; give at least one frame to decode")
    outside = [i for i in frame_indices if not 0 <= i < num_frames]
    if outside:
        raise DRFInputError(
            f"frame indices {outside} are outside the video's {num_frames} frames; use 0..{num_frames - 1}"
        )
    return (max(frame_indices) + scale - 1) // scale + 1


class WanBackend(PeftLoRA, VideoBackend):
    """A diffusers Wan text-to-video model (Wan 2.1, Wan 2.2 A14B two-expert, Wan 2.2 TI2V-5B)."""

    family: ClassVar[str] = "wan"
    pipeline_class: ClassVar[str] = "WanPipeline"
    # peft `target_modules` suffixes of `WanTransformer3DModel` modules.
    lora_target_presets: ClassVar[dict[str, list[str]]] = {
        "attention": list(_ATTENTION_TARGETS),
        "attention_ffn": [*_ATTENTION_TARGETS, *_FFN_TARGETS],
    }

    def __init__(
        self,
        *,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        transformer: torch.nn.Module,
        transformer_2: torch.nn.Module | None,
        vae: torch.nn.Module,
        scheduler: Any,
        boundary_ratio: float | None,
        expand_timesteps: bool,
        source: str,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder: torch.nn.Module | None = text_encoder
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.vae = vae
        # The folder's scheduler is only a template: every sampling run gets a fresh copy.
        self.scheduler_template = scheduler
        self.boundary_ratio = boundary_ratio
        self.expand_timesteps = bool(expand_timesteps)
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self._embedding_cache: dict[str, torch.Tensor] = {}
        for module in self._modules():
            module.requires_grad_(False)
            module.eval()

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        dtype: torch.dtype,
        device: torch.device,
        vae_dtype: torch.dtype | None = None,
        weight_storage: str = "auto",
    ) -> WanBackend:
        """Load a checked diffusers Wan folder (see `models.load_video_backend` for the checks).

        `weight_storage` (a key of `VIDEO_WEIGHT_STORAGES`): the transformers are stored that way on the
        CPU before they move to `device`, so the device never holds their load-dtype weights.
        """
        from diffusers import AutoencoderKLWan, WanPipeline

        from .weight_storage import storage_dtype

        path = Path(path)
        vae_dtype = dtype if vae_dtype is None else vae_dtype
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=vae_dtype, local_files_only=True)
        pipe = WanPipeline.from_pretrained(path, vae=vae, dtype=dtype, local_files_only=True)
        if pipe.transformer is None:
            raise ModelFolderError(
                f"{path} has no 'transformer' component; Diffusion-DRF needs the high-noise transformer "
                "(Wan 2.2 A14B folders have both 'transformer' and 'transformer_2'); download the full folder"
            )
        stored_as = storage_dtype(weight_storage)
        if stored_as is not None:
            for model in (pipe.transformer, pipe.transformer_2):
                if model is not None:
                    _store_layerwise(model, stored_as, dtype)
        backend = cls(
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder.to(device),
            transformer=pipe.transformer.to(device),
            transformer_2=None if pipe.transformer_2 is None else pipe.transformer_2.to(device),
            vae=pipe.vae.to(device),
            scheduler=pipe.scheduler,
            boundary_ratio=pipe.config.boundary_ratio,
            expand_timesteps=bool(pipe.config.expand_timesteps),
            source=str(path),
            device=device,
            dtype=dtype,
        )
        backend.weight_storage = weight_storage
        del pipe
        logger.info("loaded Wan text-to-video model from %s: %s", path, json.dumps(backend.describe()))
        return backend

    def offload_groups(self) -> dict[str, tuple[list[torch.nn.Module], torch.device]]:
        experts = [m for m in (self.transformer, self.transformer_2) if m is not None]
        groups = {VIDEO_MODEL: (experts, self.device), VAE: ([self.vae], self.device)}
        if self.text_encoder is not None:
            groups[TEXT_ENCODER] = ([self.text_encoder], self.device)
        return groups

    def store_base_weights(self, storage_dtype: torch.dtype) -> None:
        """diffusers' layerwise casting on both experts: weights kept in `storage_dtype`, cast to the load dtype
        while each layer runs. It skips the model's precision-critical layers (patch embedding, condition
        embedder, norms, the output projection) and peft's LoRA layers, before or after the LoRA is added."""
        for model in (self.transformer, self.transformer_2):
            if model is not None:
                _store_layerwise(model, storage_dtype, self.dtype)

    def _modules(self) -> list[torch.nn.Module]:
        modules = [self.text_encoder, self.transformer, self.transformer_2, self.vae]
        return [m for m in modules if m is not None]

    @property
    def denoiser(self) -> torch.nn.Module:
        """The expert that runs the last denoising steps: the one with gradient, the one LoRA trains."""
        if self.transformer_2 is not None and self.boundary_ratio is not None:
            return self.transformer_2
        return self.transformer

    @property
    def transformer_dtype(self) -> torch.dtype:
        # WanPipeline casts latents and embeddings to `transformer.dtype` for both experts.
        return self.transformer.dtype

    # ------------------------------------------------------------------------------------------
    # Prompts
    # ------------------------------------------------------------------------------------------

    def _encode_texts(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """WanPipeline._get_t5_prompt_embeds up to the trim to each text's length (`[len_i, D]` each),
        cast to the transformer dtype as __call__ does. `_pad` adds the pipeline's zero padding."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean
        from diffusers.utils.torch_utils import get_module_execution_device

        assert self.text_encoder is not None
        cleaned = [prompt_clean(text) for text in texts]
        text_inputs = self.tokenizer(
            cleaned,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids, mask = text_inputs.input_ids, text_inputs.attention_mask
        seq_lens = mask.gt(0).sum(dim=1).long()
        model_device = execution_device(self.text_encoder, get_module_execution_device)
        embeds = self.text_encoder(input_ids.to(model_device), mask.to(model_device)).last_hidden_state
        embeds = embeds.to(dtype=self.text_encoder.dtype, device=self.device)
        # Casting before the zero padding equals the pipeline's cast after it (zeros stay zeros).
        return [u[:v].to(self.transformer_dtype).clone() for u, v in zip(embeds, seq_lens, strict=True)]

    def _pad(self, trimmed: torch.Tensor) -> torch.Tensor:
        return torch.cat([trimmed, trimmed.new_zeros(self.max_sequence_length - trimmed.size(0), trimmed.size(1))])

    def _cached_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """`[len(texts), max_sequence_length, D]`; the cache keeps only each text's own tokens."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._embedding_cache))
        if missing:
            if self.text_encoder is None:
                shown = ", ".join(repr(text[:60]) for text in missing[:3])
                raise DRFInputError(
                    f"the text encoder was released, and these texts were never encoded: {shown}; encode every "
                    "prompt and the negative prompt before release_text_encoder(), or load the video model again"
                )
            with torch.no_grad():
                encoded = self._encode_texts(missing)
            self._embedding_cache.update(zip(missing, encoded, strict=True))
        return torch.stack([self._pad(self._embedding_cache[text]) for text in texts], dim=0)

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        """WanPipeline.encode_prompt: the negative prompt only when guidance_scale > 1 (CFG on)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise DRFInputError("no prompts given; give at least one prompt")
        positive = self._cached_embeddings(list(prompts))
        negative = None
        if guidance_scale > 1.0:
            negative = self._cached_embeddings([negative_prompt or ""]).expand(len(prompts), -1, -1).contiguous()
        return PromptEmbeddings(positive, negative)

    def release_text_encoder(self) -> None:
        if self.text_encoder is None:
            return
        on_cuda = self.device.type == "cuda"
        self.text_encoder = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
        logger.info("released the text encoder; %d cached prompt embeddings stay usable", len(self._embedding_cache))

    # ------------------------------------------------------------------------------------------
    # Sizes and noise
    # ------------------------------------------------------------------------------------------

    @property
    def _temporal_scale(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def _spatial_scale(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    def _check_size(self, spec: VideoSpec) -> None:
        """WanPipeline.check_inputs (multiples of 16) and its patch rounding, as an error."""
        patch = self.transformer.config.patch_size
        multiple = 16
        for factor in (self._spatial_scale * patch[1], self._spatial_scale * patch[2]):
            while multiple % factor:
                multiple += 16
        bad = [(name, value) for name, value in (("height", spec.height), ("width", spec.width)) if value % multiple]
        if bad:
            fixes = "; ".join(f"{name} {value}: use {_nearest_multiples(value, multiple)}" for name, value in bad)
            raise DRFInputError(
                f"this Wan model needs height and width that are multiples of {multiple}, got "
                f"{spec.height}x{spec.width} ({fixes})"
            )

    def num_frames_out(self, spec: VideoSpec) -> int:
        """WanPipeline's rounding: `num_frames - 1` must be divisible by the VAE's temporal factor."""
        self._check_size(spec)
        scale = self._temporal_scale
        num_frames = spec.num_frames
        if num_frames % scale != 1:
            rounded = max(num_frames // scale * scale + 1, 1)
            logger.warning(
                "`num_frames - 1` has to be divisible by %d; rounding %d frames to %d", scale, num_frames, rounded
            )
            num_frames = rounded
        return max(num_frames, 1)

    def init_noise(self, spec: VideoSpec, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """WanPipeline.prepare_latents: float32 Gaussian `[B, C, (F-1)//4+1, H/8, W/8]`."""
        from diffusers.utils.torch_utils import randn_tensor

        num_frames = self.num_frames_out(spec)
        shape = (
            batch_size,
            self.transformer.config.in_channels,
            (num_frames - 1) // self._temporal_scale + 1,
            int(spec.height) // self._spatial_scale,
            int(spec.width) // self._spatial_scale,
        )
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    # ------------------------------------------------------------------------------------------
    # Denoising
    # ------------------------------------------------------------------------------------------

    def new_scheduler(
        self, num_inference_steps: int, name: str = "default", flow_shift: float | None = None
    ) -> DenoisingScheduler:
        scheduler = build_scheduler(
            type(self.scheduler_template), dict(self.scheduler_template.config), name, flow_shift
        )
        return DiffusersScheduler(scheduler, num_inference_steps, self.device)

    def _expert_for(self, timestep: torch.Tensor) -> torch.nn.Module:
        if self.boundary_ratio is None or self.transformer_2 is None:
            return self.transformer
        boundary_timestep = self.boundary_ratio * self.scheduler_template.config.num_train_timesteps
        return self.transformer if timestep >= boundary_timestep else self.transformer_2

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float
    ) -> torch.Tensor:
        """One step of WanPipeline's loop up to (not including) `scheduler.step`.

        The pipeline's `cache_context` is not entered: it only feeds diffusers' optional step caches
        (off unless enabled), which reuse activations across steps and must stay off under gradient.
        """
        model = self._expert_for(timestep)
        latent_model_input = latents.to(self.transformer_dtype)
        if self.expand_timesteps:
            mask = torch.ones(latents.shape, dtype=torch.float32, device=latents.device)
            temp_ts = (mask[0][0][:, ::2, ::2] * timestep).flatten()
            model_timestep = temp_ts.unsqueeze(0).expand(latents.shape[0], -1)
        else:
            model_timestep = timestep.expand(latents.shape[0])

        def denoise(text_embeddings: torch.Tensor) -> torch.Tensor:
            return model(
                hidden_states=latent_model_input,
                timestep=model_timestep,
                encoder_hidden_states=text_embeddings,
                return_dict=False,
            )[0]

        noise_pred = denoise(embeddings.positive)
        if guidance_scale > 1.0:
            if embeddings.negative is None:
                raise DRFInputError(
                    f"guidance scale {guidance_scale} > 1 needs negative prompt embeddings; encode the prompts "
                    "with the same guidance scale"
                )
            noise_uncond = denoise(embeddings.negative)
            noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
        return noise_pred

    def set_block_checkpointing(self, enabled: bool) -> None:
        """diffusers' per-block checkpointing (active whenever grad is on; no train mode needed).

        Set on both experts: a gradient window that crosses the boundary runs the high-noise
        expert with gradient too (its weights are frozen, but its activations would be kept).
        """
        for model in (self.transformer, self.transformer_2):
            if model is None:
                continue
            if enabled:
                model.enable_gradient_checkpointing()
            else:
                model.disable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------------

    def _latent_frames_needed(self, num_latent_frames: int, frame_indices: Sequence[int] | None) -> int:
        return latent_frames_needed(num_latent_frames, frame_indices, self._temporal_scale)

    def decode(
        self, latents: torch.Tensor, frame_indices: Sequence[int] | None = None, options: DecodeOptions = NO_SAVERS
    ) -> torch.Tensor:
        """`AutoencoderKLWan._decode` frame by frame + `postprocess_video(output_type="pt")`.

        `options.segment_latent_frames` > 0: the latent frames are decoded in segments of that many,
        each keeping only its input for backward (`_decode_segment`), so backward holds the causal
        caches of one segment at a time instead of every latent frame's. `frame_by_frame_backward`
        (`vae_backward.decode_frame_by_frame`) replaces the segment and per-frame checkpoints.

        Runs without autocast (`autocast_off`), in the VAE's dtype, as the pipeline decodes.
        """
        from diffusers.utils.torch_utils import get_module_execution_device

        vae = self.vae
        device = execution_device(vae, get_module_execution_device)
        with autocast_off(device):  # the VAE's own dtype, as the pipeline decodes
            return self._decode(latents.to(device, dtype=vae.dtype), frame_indices, options)

    def _decode(
        self, latents: torch.Tensor, frame_indices: Sequence[int] | None, options: DecodeOptions
    ) -> torch.Tensor:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        z_dim = vae.config.z_dim
        latents_mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        latents = latents / latents_std + latents_mean

        needed = self._latent_frames_needed(latents.shape[2], frame_indices)
        x = vae.post_quant_conv(latents[:, :, :needed])  # a 1x1x1 conv: the prefix of the full result
        vae.clear_cache()
        cache: list[Any] = [None] * len(vae._feat_map)
        blocks = options.checkpoint_residual_blocks
        if options.frame_by_frame_backward and torch.is_grad_enabled():

            def step(frame: torch.Tensor, index: int, cache: list[Any]) -> tuple[torch.Tensor, list[Any]]:
                return _run_decoder_chunk(vae.decoder, frame, cache, index == 0, blocks)

            tiles = options.backward_tiles
            split = split_decoder(vae.decoder) if tiles > 1 else None
            out = decode_frame_by_frame(step, x, cache, options.cache_host, split, tiles, options.cache_interval)
        else:
            chunks = []
            segment = options.segment_latent_frames
            step = segment if segment > 0 and torch.is_grad_enabled() else needed
            decode_part = _decode_segment if step < needed else _decode_range
            for start in range(0, needed, step):
                out, cache = decode_part(
                    vae.decoder,
                    x[:, :, start : start + step],
                    cache,
                    start == 0,
                    options.checkpoint_per_latent_frame,
                    blocks,
                )
                chunks.append(out)
            out = torch.cat(chunks, 2)
        del cache
        vae.clear_cache()
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        out = torch.clamp(out, min=-1.0, max=1.0)

        frames = out.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W], as postprocess_video stacks it
        frames = (frames * 0.5 + 0.5).clamp(0, 1)
        if frame_indices is not None:
            frames = frames[:, list(frame_indices)]
        return frames.float()

    # ------------------------------------------------------------------------------------------
    # Names and facts
    # ------------------------------------------------------------------------------------------

    native_module_name = staticmethod(diffusers_to_native_wan_module)
    module_name_from_native = staticmethod(native_to_diffusers_wan_module)

    def describe(self) -> dict[str, Any]:
        config = self.denoiser.config
        return {
            **super().describe(),
            "pipeline_class": self.pipeline_class,
            "dtype": str(self.dtype).removeprefix("torch."),
            "vae_dtype": str(self.vae.dtype).removeprefix("torch."),
            "weight_storage": self.weight_storage,
            "device": str(self.device),
            "has_transformer_2": self.transformer_2 is not None,
            "boundary_ratio": self.boundary_ratio,
            "expand_timesteps": self.expand_timesteps,
            "denoiser": "transformer_2" if self.denoiser is self.transformer_2 else "transformer",
            "num_layers": config.num_layers,
            "inner_dim": config.num_attention_heads * config.attention_head_dim,
            "scheduler": type(self.scheduler_template).__name__,
            "flow_shift": dict(self.scheduler_template.config).get(
                "flow_shift", dict(self.scheduler_template.config).get("shift")
            ),
            "text_encoder_loaded": self.text_encoder is not None,
        }

"""The video-model backend on ComfyUI's own objects: core MODEL, CLIP (or CONDITIONING) and VAE.

`ComfyVideoBackend` implements `drf_core.models.VideoBackend`, so Train LoRA, Sample Video and
the rest run on what core Load Diffusion Model / Load CLIP / Load VAE give:

- the denoiser is a clone of the MODEL's ModelPatcher; sampling goes through `CFGGuider` (ComfyUI
  loads the model through its memory manager, applies model patches and the model's own
  `model_sampling`, e.g. the shift set by core ModelSamplingSD3) with ComfyUI's own solvers
  (`comfy_solver.py`), so sampling with gradients off equals core KSampler;
- LoRA training uses ComfyUI's weight adapters (`weight_adapter.adapter_maps["LoRA"].create_train`
  attached with `add_weight_wrapper` on another clone), on the same layers the diffusers backend's
  presets name; saved in ComfyUI's key layout they are what core LoraLoaderModelOnly applies.
  Preview LoRAs are applied with ComfyUI's own patching (`load_lora`, `add_patches`), i.e. exactly
  as LoraLoaderModelOnly applies them;
- prompts are encoded with the given CLIP (as core CLIP Text Encode does) or looked up among
  CONDITIONING the user encoded already;
- decoding runs the VAE's decoder with gradient (per latent frame, optionally checkpointed); what
  differs between the Wan 2.1 and the Wan 2.2 VAE (latent shape, sizes, first chunk, `unpatchify`, frame
  rate) comes from `comfy_wan_vae.py`, so Wan 2.2 TI2V-5B (ComfyUI's WAN22 with the Wan 2.2 VAE) runs
  here as a text-to-video model;
- Wan 2.2 A14B: two MODELs (high-noise, low-noise) sample as ComfyUI's template chains two
  KSamplerAdvanced (`comfy_solver.ComfyExpertChain`); the LoRA trains on one of them (`trained_expert`)
  and its file says which;
- fp8 weights (Load Diffusion Model's fp8 weight dtypes, `fp8_scaled` checkpoints): the adapters act on
  the weight as ComfyUI casts it per layer; on scaled-fp8 layers their difference is divided by the
  layer's scale, which ComfyUI multiplies in after the weight functions (`_ScaledWeightAdapter`).

ComfyUI runs every prompt in `torch.inference_mode()`, so weights it loaded (and the latent format's
constants) are inference tensors, which autograd refuses to save for backward.
`make_autograd_safe` replaces them with ordinary copies; it is the only place that deals with
this, and runs after ComfyUI has loaded a model onto its device (loading can create new ones).

LoRA weights travel in the family's own module names (diffusers names for Wan, like the diffusers
backend's), so a LoRA trained here previews on the diffusers backend and vice versa.

Imported only inside ComfyUI (it imports `comfy`); `_comfy.py` stays the bridge for node classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import comfy.lora
import comfy.model_base
import comfy.model_management as model_management
import comfy.sample
import comfy.utils
import torch
from comfy.weight_adapter import adapter_maps
from comfy.weight_adapter.lora import LoraDiff
from torch.utils.checkpoint import checkpoint

from ..drf_core.config import LoRAConfig, VideoSpec
from ..drf_core.devices import autocast_off
from ..drf_core.errors import DRFInputError
from ..drf_core.lora import LORA_FORMATS, LoRAModuleWeights, LoRAWeights
from ..drf_core.models.base import DenoisingScheduler, PromptEmbeddings, VideoBackend
from ..drf_core.models.vae_backward import decode_frame_by_frame, split_decoder
from ..drf_core.models.wan import WanBackend, latent_frames_needed
from .comfy_names import SOLVERS, WAN_EXPERTS
from .comfy_solver import ComfyExpertChain, ComfySolverRun
from .comfy_wan_vae import check_vae_matches_model, wan_vae_layout

logger = logging.getLogger(__name__)

MODEL_PREFIX = "diffusion_model."
# The pack's scheduler names (SamplerConfig.scheduler) -> ComfyUI (sampler, scheduler); "default"
# is the pair chosen on the Video Model from ComfyUI node.
DRF_SCHEDULER_NAMES = {"unipc": ("uni_pc", "simple"), "flow_euler": ("euler", "simple")}


# ----------------------------------------------------------------------------------------------
# Inference tensors
# ----------------------------------------------------------------------------------------------


def _is_inference(tensor: torch.Tensor) -> bool:
    """True for tensors made in inference mode; some moved by `Module.to()` say otherwise, so the
    version counter (which inference tensors lack) is read as well."""
    if tensor.is_inference():
        return True
    try:
        tensor._version  # noqa: B018 (the read is the test)
    except RuntimeError:
        return True
    return False


def make_autograd_safe(module: torch.nn.Module, *holders: Any) -> int:
    """Replace every inference-mode parameter and buffer of `module` (and tensor attribute of each
    plain object in `holders`, e.g. a latent format) by an ordinary copy; returns how many.

    Values, dtypes, devices and `requires_grad` stay as they were.
    """
    replaced = 0
    with torch.inference_mode(False):
        for name, param in list(module.named_parameters(remove_duplicate=False)):
            if _is_inference(param):
                copy = torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                comfy.utils.set_attr(module, name, copy)
                replaced += 1
        for name, buffer in list(module.named_buffers(remove_duplicate=False)):
            if buffer is not None and _is_inference(buffer):
                owner_name, _, attr = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                owner._buffers[attr] = buffer.clone()
                replaced += 1
        for holder in holders:
            for attr, value in list(vars(holder).items()):
                if isinstance(value, torch.Tensor) and _is_inference(value):
                    setattr(holder, attr, value.clone())
                    replaced += 1
    if replaced:
        logger.debug("replaced %d inference tensors of %s by ordinary copies", replaced, type(module).__name__)
    return replaced


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


@dataclass
class ComfyPrompts:
    """Where text conditioning comes from: a CLIP, and/or CONDITIONING already encoded for given texts."""

    clip: Any = None
    encoded: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensor(self, text: str) -> torch.Tensor:
        """`[1, L, D]` for `text` (encoded once, as core CLIP Text Encode encodes it)."""
        if text not in self.encoded:
            if self.clip is None:
                known = ", ".join(repr(t[:60]) for t in self.encoded) or "none"
                raise DRFInputError(
                    f"no CLIP is connected to Video Model from ComfyUI and no CONDITIONING was given for the text "
                    f"{text[:80]!r} (conditioning is given for: {known}); connect a CLIP, or encode exactly this "
                    "text and connect it with its prompt"
                )
            tokens = self.clip.tokenize(text)
            conditioning = self.clip.encode_from_tokens_scheduled(tokens)
            self.encoded[text] = conditioning_tensor(conditioning, f"the CLIP's encoding of {text[:40]!r}")
        return self.encoded[text]


def conditioning_tensor(conditioning: Any, what: str) -> torch.Tensor:
    """The text tensor `[1, L, D]` of a one-entry CONDITIONING (its extra entries are not used)."""
    if not isinstance(conditioning, list) or len(conditioning) != 1 or not isinstance(conditioning[0][0], torch.Tensor):
        raise DRFInputError(
            f"{what} must be a CONDITIONING with one entry (as CLIP Text Encode makes it); combined or "
            "area conditioning is not supported for training"
        )
    tensor = conditioning[0][0]
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise DRFInputError(f"{what} holds a tensor of shape {tuple(tensor.shape)}; expected [1, tokens, width]")
    with torch.inference_mode(False):
        return tensor.detach().clone()


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    lengths = {t.shape[1] for t in tensors}
    if len(lengths) > 1:
        raise DRFInputError(
            f"the prompts of one batch encode to different token counts {sorted(lengths)}; ComfyUI conditions a "
            "batch with one length: use videos_per_step 1 or prompts of similar length"
        )
    return torch.cat(tensors, dim=0)


# ----------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------


@dataclass
class _Adapter:
    """One adapter: the clone that carries it, and (when trained here) its ComfyUI weight adapters."""

    patcher: Any
    trained: dict[str, LoraDiff] = field(default_factory=dict)
    weights: LoRAWeights | None = None


def _family_of(model: Any) -> str:
    base = model.model
    if type(base) is comfy.model_base.WAN22 and _is_wan22_ti2v_5b(base):
        return "wan"  # TI2V-5B: text-to-video when sampled from an empty latent (no start image)
    if type(base) is comfy.model_base.WAN21:
        if getattr(base, "image_to_video", False):
            raise DRFInputError(
                "this MODEL is a Wan image-to-video model; Diffusion-DRF trains text-to-video models: load a Wan "
                "text-to-video model (e.g. wan2.1_t2v_1.3B_fp16.safetensors)"
            )
        return "wan"
    raise DRFInputError(
        f"this MODEL is a {type(base).__name__} model; training on ComfyUI models supports Wan 2.1 / 2.2 text-to-video "
        "(WAN21, Wan 2.2 TI2V-5B) so far: load one with Load Diffusion Model"
    )


def _is_wan22_ti2v_5b(base: Any) -> bool:
    """ComfyUI's WAN22 class is TI2V-5B: its denoiser reads and writes the Wan 2.2 VAE's latents and
    nothing else (no extra input channels for a start image or a mask)."""
    embedding = base.diffusion_model.patch_embedding.weight
    return embedding.shape[1] == base.latent_format.latent_channels


class ComfyVideoBackend(VideoBackend):
    """A Wan text-to-video model given as ComfyUI MODEL + VAE (+ CLIP or CONDITIONING)."""

    family: ClassVar[str] = "wan"
    lora_target_presets: ClassVar[dict[str, list[str]]] = WanBackend.lora_target_presets
    native_module_name = staticmethod(WanBackend.native_module_name)
    module_name_from_native = staticmethod(WanBackend.module_name_from_native)

    def __init__(
        self,
        model: Any,
        vae: Any,
        prompts: ComfyPrompts,
        sampler_name: str = "uni_pc",
        scheduler_name: str = "simple",
        low_noise_model: Any = None,
        low_noise_from: float = 0.5,
        trained_expert: str = "low_noise",
    ) -> None:
        self.family = _family_of(model)
        SOLVERS.get(sampler_name)
        # Wan 2.2 A14B: `model` is the high-noise expert, `low_noise_model` the low-noise one; the trained
        # expert is `self.base` (LoRA, `denoiser`), the other one samples its share of the steps unchanged.
        self.experts: dict[str, Any] = {}
        if low_noise_model is not None:
            _family_of(low_noise_model)
            if trained_expert not in WAN_EXPERTS:
                raise DRFInputError(f"unknown expert {trained_expert!r}; choose one of {', '.join(WAN_EXPERTS)}")
            if not 0.0 <= low_noise_from <= 1.0:
                raise DRFInputError(f"low_noise_from is a fraction of the steps, got {low_noise_from}; use 0..1")
            self.experts = {"high_noise": model.clone(), "low_noise": low_noise_model.clone()}
            model = self.experts[trained_expert]
        self.trained_expert = trained_expert if self.experts else None
        self.low_noise_from = low_noise_from
        self.base = model if self.experts else model.clone()
        self.vae = vae
        self.vae_layout = wan_vae_layout(vae)
        for patcher in self.experts.values() or [model]:
            check_vae_matches_model(
                self.vae_layout, patcher.model.latent_format.latent_channels, type(patcher.model).__name__
            )
        self.frame_rate = self.vae_layout.frame_rate
        self.prompts = prompts
        self.sampler_name = sampler_name
        self.scheduler_name = scheduler_name
        self.device = model.load_device
        self.dtype = model.model_dtype()
        self.source = f"ComfyUI MODEL ({type(model.model).__name__})"
        self._adapters: dict[str, _Adapter] = {}
        self._run: ComfySolverRun | None = None
        self._checkpointed_blocks: dict[int, Any] = {}

    # --- what is active ------------------------------------------------------------------------

    @property
    def patcher(self) -> Any:
        """The clone sampling uses: the newest adapter's, else the base clone."""
        return next(reversed(self._adapters.values())).patcher if self._adapters else self.base

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.base.model.diffusion_model

    def _prepare_model(self) -> None:
        """Called once ComfyUI has loaded the model for a run (see `make_autograd_safe`)."""
        for patcher in self.experts.values() or [self.base]:
            make_autograd_safe(patcher.model, patcher.model.latent_format)
            patcher.model.requires_grad_(False)

    # --- prompts -------------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise DRFInputError("no prompts given; give at least one prompt")
        positive = _stack([self.prompts.tensor(text) for text in prompts])
        negative = None
        if guidance_scale > 1.0:
            negative = _stack([self.prompts.tensor(negative_prompt or "")] * len(prompts))
        return PromptEmbeddings(positive, negative)

    def release_text_encoder(self) -> None:
        """Nothing to free: ComfyUI's memory manager offloads the CLIP when others need the memory."""
        logger.info("the CLIP stays with ComfyUI, which offloads it when the memory is needed")

    # --- sizes and noise -----------------------------------------------------------------------

    def num_frames_out(self, spec: VideoSpec) -> int:
        """The VAE's latent node's sizes (`comfy_wan_vae.WanVaeLayout`): width and height in its steps (16 for
        the Wan 2.1 VAE, 32 for the Wan 2.2 VAE), `4n+1` frames."""
        return self.vae_layout.num_frames_out(spec)

    def init_noise(self, spec: VideoSpec, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Core KSampler's noise for the VAE's empty video latent (EmptyHunyuanLatentVideo or
        Wan22ImageToVideoLatent): `torch.randn` on the CPU from `generator` (seeded with the node's seed,
        this is `comfy.sample.prepare_noise`)."""
        shape = self.vae_layout.latent_shape(spec, batch_size)
        return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")

    # --- denoising -----------------------------------------------------------------------------

    def new_scheduler(
        self, num_inference_steps: int, name: str = "default", flow_shift: float | None = None
    ) -> DenoisingScheduler:
        if name == "default":
            sampler_name, scheduler_name = self.sampler_name, self.scheduler_name
        elif name in DRF_SCHEDULER_NAMES:
            sampler_name, scheduler_name = DRF_SCHEDULER_NAMES[name]
        else:
            raise DRFInputError(f"unknown scheduler {name!r}; choose default, {', '.join(DRF_SCHEDULER_NAMES)}")
        patchers = {"trained": self.patcher}
        if self.experts:
            other = next(name for name in WAN_EXPERTS if name != self.trained_expert)
            patchers = {self.trained_expert: self.patcher, other: self.experts[other]}
        if flow_shift is not None:  # what core ModelSamplingSD3 does
            from comfy_extras.nodes_model_advanced import ModelSamplingSD3

            patchers = {name: ModelSamplingSD3().patch(p, flow_shift)[0] for name, p in patchers.items()}
        if not self.experts:
            self._run = ComfySolverRun(
                patchers["trained"], sampler_name, scheduler_name, num_inference_steps, self._prepare_model
            )
            return self._run
        switch = round(self.low_noise_from * num_inference_steps)
        runs = {
            name: ComfySolverRun(patcher, sampler_name, scheduler_name, num_inference_steps, self._prepare_model, span)
            for name, patcher, span in (
                ("high_noise", patchers["high_noise"], (0, switch)),
                ("low_noise", patchers["low_noise"], (switch, None)),
            )
        }
        if switch == 0 or switch == num_inference_steps:  # one expert runs every step
            self._run = runs["low_noise" if switch == 0 else "high_noise"]
        else:
            self._run = ComfyExpertChain(runs["high_noise"], runs["low_noise"])
        return self._run

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float
    ) -> torch.Tensor:
        """The denoised latents at sigma `timestep` (the run's CFGGuider: CFG and conditioning applied)."""
        if self._run is None:
            raise RuntimeError("predict needs a started sampling run (sampler.sample_latents starts one)")
        return self._run.denoise(latents, timestep)

    def set_block_checkpointing(self, enabled: bool) -> None:
        blocks = getattr(self.denoiser, "blocks", [])
        for block in blocks:
            key = id(block)
            if enabled and key not in self._checkpointed_blocks:
                original = block.forward
                self._checkpointed_blocks[key] = original
                block.forward = _checkpointed(original)
            elif not enabled and key in self._checkpointed_blocks:
                block.forward = self._checkpointed_blocks.pop(key)

    # --- decoding ------------------------------------------------------------------------------

    def decode(
        self,
        latents: torch.Tensor,
        frame_indices: Sequence[int] | None = None,
        checkpoint_per_latent_frame: bool = False,
        checkpoint_residual_blocks: bool = False,
        segment_latent_frames: int = 0,
        frame_by_frame_backward: bool = False,
        cache_host: torch.device | None = None,
        backward_tiles: int = 1,
    ) -> torch.Tensor:
        """Core VAEDecode's computation with gradient: the VAE's `decode` (`decoder` per latent frame, then
        `unpatchify` for the Wan 2.2 VAE: `comfy_wan_vae`) and `process_output`.

        Only latent frames up to the last requested frame are decoded (the decoder is causal).
        `segment_latent_frames` is not applied to ComfyUI's VAE (logged): every latent frame's causal
        cache is kept for backward, as with 0; `frame_by_frame_backward` is
        (`vae_backward.decode_frame_by_frame`, tiled with `backward_tiles` where the decoder has a known
        split: the Wan 2.1 VAE's; the Wan 2.2 VAE's backward runs untiled, logged). Runs without autocast,
        as core VAE Decode does.
        """
        if segment_latent_frames and not frame_by_frame_backward:
            logger.warning("decode.segment_latent_frames applies to the diffusers VAE only; ComfyUI's decodes whole")
        with autocast_off(self.vae.device):
            return self._decode(latents, frame_indices, checkpoint_per_latent_frame, checkpoint_residual_blocks,
                                frame_by_frame_backward, cache_host, backward_tiles)  # fmt: skip

    def _decode(
        self,
        latents: torch.Tensor,
        frame_indices: Sequence[int] | None,
        checkpoint_per_latent_frame: bool,
        checkpoint_residual_blocks: bool,
        frame_by_frame_backward: bool,
        cache_host: torch.device | None,
        backward_tiles: int,
    ) -> torch.Tensor:
        vae = self.vae
        model_management.load_models_gpu(
            [vae.patcher], memory_required=vae.memory_used_decode(latents.shape, vae.vae_dtype)
        )
        stage = vae.first_stage_model
        make_autograd_safe(stage)
        stage.requires_grad_(False)
        layout = self.vae_layout
        latent_frames = latent_frames_needed(latents.shape[2], frame_indices, layout.temporal_scale)
        z = stage.conv2(latents[:, :, :latent_frames].to(vae.vae_dtype).to(vae.device))
        cache = layout.new_cache(stage.decoder)
        if frame_by_frame_backward and torch.is_grad_enabled():

            def step(chunk: torch.Tensor, index: int, cache: list[Any]) -> tuple[torch.Tensor, list[Any]]:
                return layout.decode_chunk(stage.decoder, chunk, cache, index == 0, checkpoint_residual_blocks)

            split = split_decoder(stage.decoder) if backward_tiles > 1 else None
            decoded = decode_frame_by_frame(step, z, cache, cache_host, split, backward_tiles)
        else:
            outputs = []
            for i in range(latent_frames):
                chunk = z[:, :, i : i + 1]
                if checkpoint_per_latent_frame and torch.is_grad_enabled():
                    out, cache = checkpoint(
                        layout.decode_chunk, stage.decoder, chunk, cache, i == 0, checkpoint_residual_blocks,
                        use_reentrant=False,
                    )  # fmt: skip
                else:
                    out, cache = layout.decode_chunk(stage.decoder, chunk, cache, i == 0, checkpoint_residual_blocks)
                outputs.append(out)
            decoded = torch.cat(outputs, dim=2)
        video = vae.process_output(layout.finish(decoded).float())  # [B, 3, F, H, W] in 0..1
        frames = video.permute(0, 2, 1, 3, 4)
        if frame_indices is not None:
            frames = frames[:, list(frame_indices)]
        return frames.float()

    # --- LoRA life cycle -----------------------------------------------------------------------

    def _target_layers(self, targets: Sequence[str]) -> dict[str, tuple[str, torch.nn.Module]]:
        """Family module name -> (native module name, layer) for layers matching `targets` suffixes."""
        found = {}
        for native, module in self.denoiser.named_modules():
            if not isinstance(module, torch.nn.Linear) or not hasattr(module, "weight_function"):
                continue
            try:
                name = self.module_name_from_native(native)
            except DRFInputError:
                continue
            if any(name == t or name.endswith("." + t) for t in targets):
                found[name] = (native, module)
        return found

    def _refuse_existing(self, adapter_name: str) -> None:
        if adapter_name in self._adapters:
            raise DRFInputError(f"the model already has a LoRA adapter named {adapter_name!r}; remove it first")

    def _attach(self, adapter_name: str, adapters: dict[str, LoraDiff]) -> dict[str, torch.nn.Parameter]:
        patcher = self.patcher.clone()
        named = {}
        for name, adapter in adapters.items():
            layer = self.denoiser.get_submodule(self.native_module_name(name))
            wrapper = _ScaledWeightAdapter(adapter, layer.scale_weight) if _is_scaled_fp8(layer) else adapter
            patcher.add_weight_wrapper(f"{MODEL_PREFIX}{self.native_module_name(name)}.weight", wrapper)
            for part in ("lora_up", "lora_down"):
                param = getattr(adapter, part).weight
                param.requires_grad_(True)
                named[f"{name}.{part}.weight"] = param
        self._adapters[adapter_name] = _Adapter(patcher, trained=adapters)
        return named

    def add_lora(self, config: LoRAConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        """ComfyUI's trainable LoRA (`create_train`: up random, down zero, so training starts at the base)."""
        config.validate()
        if config.dropout:
            raise DRFInputError("LoRA dropout is not available on ComfyUI models; set lora dropout to 0")
        self._refuse_existing(adapter_name)
        layers = self._target_layers(self.lora_target_presets[config.target_preset])
        if not layers:
            raise DRFInputError(f"no layer of this MODEL matches the LoRA preset {config.target_preset!r}")
        with torch.inference_mode(False):
            adapters = {
                name: adapter_maps["LoRA"].create_train(module.weight, config.rank, config.alpha).to(torch.float32)
                for name, (_, module) in sorted(layers.items())
            }
        logger.info(
            "ComfyUI LoRA %r: rank %d, alpha %g, %d layers", adapter_name, config.rank, config.alpha, len(layers)
        )
        return self._attach(adapter_name, adapters)

    def apply_lora(
        self,
        lora: LoRAWeights,
        adapter_name: str,
        strength: float = 1.0,
        trainable: bool = False,
        dropout: float = 0.0,
    ) -> dict[str, torch.nn.Parameter]:
        """Trainable: ComfyUI weight adapters holding the LoRA's weights. Preview: the file's patches
        applied exactly as core LoraLoaderModelOnly applies them."""
        self._refuse_existing(adapter_name)
        self._check_expert(lora)
        if trainable:
            if strength != 1.0:
                raise DRFInputError(f"resuming training needs strength 1.0, got {strength}")
            if dropout:
                raise DRFInputError("LoRA dropout is not available on ComfyUI models; set lora dropout to 0")
            layers = self._target_layers(list(lora.modules))
            missing = sorted(set(lora.modules) - set(layers))
            if missing:
                raise DRFInputError(f"the LoRA names layers this MODEL does not have (e.g. {missing[:3]})")
            with torch.inference_mode(False):
                adapters = {
                    name: LoraDiff(
                        (w.up.float().to(self.device), w.down.float().to(self.device), w.alpha, None, None, None)
                    )
                    for name, w in lora.modules.items()
                }
            return self._attach(adapter_name, adapters)
        native = LORA_FORMATS.get("comfyui").tensors(lora.modules, self.native_module_name)
        key_map = comfy.lora.model_lora_keys_unet(self.base.model, {})
        patches = comfy.lora.load_lora(native, key_map)
        if len(patches) != len(lora.modules):
            raise DRFInputError(
                f"only {len(patches)} of the LoRA's {len(lora.modules)} layers exist in this MODEL; it was made for "
                "another model or size"
            )
        patcher = self.patcher.clone()
        patcher.add_patches(patches, strength)
        self._adapters[adapter_name] = _Adapter(patcher, weights=lora)
        return {}

    def _check_expert(self, lora: LoRAWeights) -> None:
        """A LoRA trained on one Wan 2.2 A14B expert goes on that expert only."""
        expert = (lora.metadata or {}).get("drf_wan_expert")
        if expert is None:
            return
        if self.trained_expert is None:
            logger.warning(
                "this LoRA was trained on Wan 2.2 A14B's %s MODEL; this video model has one MODEL, so it is "
                "applied there: connect the A14B experts (model and model_low_noise) to apply it where it belongs",
                expert,
            )
        elif expert != self.trained_expert:
            raise DRFInputError(
                f"this LoRA was trained on Wan 2.2 A14B's {expert} expert, but Video Model from ComfyUI puts LoRAs on "
                f"the {self.trained_expert} one: set its trained_expert to {expert}"
            )

    def snapshot_lora(self, adapter_name: str, metadata: dict[str, Any] | None = None) -> LoRAWeights:
        adapter = self._adapters.get(adapter_name)
        if adapter is None:
            raise DRFInputError(f"the model has no LoRA adapter named {adapter_name!r}")
        header = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        if self.trained_expert is not None:  # which of Wan 2.2 A14B's MODELs the file belongs on
            header["drf_wan_expert"] = self.trained_expert
        if adapter.weights is not None:
            return LoRAWeights(None, adapter.weights.key_layout, dict(adapter.weights.modules), header)
        modules = {
            name: LoRAModuleWeights(
                down=diff.lora_down.weight.detach().to("cpu", copy=True),
                up=diff.lora_up.weight.detach().to("cpu", copy=True),
                alpha=float(diff.alpha),
            )
            for name, diff in adapter.trained.items()
        }
        return LoRAWeights(path=None, key_layout="comfyui", modules=modules, metadata=header)

    def remove_lora(self, adapter_name: str) -> None:
        if adapter_name not in self._adapters:
            return
        if list(self._adapters)[-1] != adapter_name:
            raise DRFInputError(
                f"LoRA {adapter_name!r} is under another adapter ({list(self._adapters)[-1]!r}); remove that one first"
            )
        adapter = self._adapters.pop(adapter_name)
        for diff in adapter.trained.values():
            diff.requires_grad_(False)

    def set_training(self, enabled: bool) -> None:
        self.denoiser.train(enabled)

    def adapted_weights(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Native weight key -> the weight the adapter's layers compute with (`W + alpha/rank up @ down`).

        `W` is the MODEL's own weight: the base clone is loaded first, so ComfyUI takes off the
        patches another clone (e.g. one from LoraLoaderModelOnly) put on the shared layers.
        """
        adapter = self._adapters[adapter_name]
        model_management.load_models_gpu([self.base])
        out = {}
        with torch.no_grad():
            for name, diff in adapter.trained.items():
                native = self.native_module_name(name)
                layer = self.denoiser.get_submodule(native)
                weight = layer.weight.to(diff.lora_up.weight.device, torch.float32)
                if _is_scaled_fp8(layer):
                    weight = weight * layer.scale_weight.to(weight.device, torch.float32)
                out[f"{MODEL_PREFIX}{native}.weight"] = diff(weight).detach().cpu()
        return out

    def describe(self) -> dict[str, Any]:
        sampling = self.base.get_model_object("model_sampling")
        return {
            **super().describe(),
            "host": "ComfyUI",
            "model_class": type(self.base.model).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "sampler": self.sampler_name,
            "scheduler": self.scheduler_name,
            "shift": float(getattr(sampling, "shift", float("nan"))),
            "vae": self.vae_layout.name,
            "frame_rate": self.frame_rate,
            "text_from": "CLIP" if self.prompts.clip is not None else "CONDITIONING",
            **({"trained_expert": self.trained_expert, "low_noise_from": self.low_noise_from} if self.experts else {}),
        }


def _is_scaled_fp8(layer: torch.nn.Module) -> bool:
    """A layer of ComfyUI's scaled-fp8 ops (`fp8_scaled` checkpoints): it computes `weight * scale_weight`."""
    return isinstance(getattr(layer, "scale_weight", None), torch.Tensor)


class _ScaledWeightAdapter:
    """A trainable LoRA on a scaled-fp8 layer. ComfyUI multiplies what the weight functions return by the
    layer's `scale_weight`, so the LoRA's difference is divided by it first: `(W_q + dW / s) * s = W + dW`."""

    def __init__(self, adapter: LoraDiff, scale: torch.Tensor) -> None:
        self.adapter = adapter
        self.scale = scale

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        adapter = self.adapter
        delta = (adapter.alpha / adapter.rank) * (adapter.lora_up.weight @ adapter.lora_down.weight)
        scale = self.scale.to(device=delta.device, dtype=torch.float32)
        return (weight + (delta / scale).reshape(weight.shape)).to(weight.dtype)

    def move_to(self, device: torch.device) -> int:
        """ComfyUI moves weight functions with the model (`move_weight_functions`)."""
        return self.adapter.move_to(device)


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


@dataclass(frozen=True)
class ComfyVideoModel:
    """The video-model wire for a ComfyUI-built backend (what Load Video Model's handle offers)."""

    backend: ComfyVideoBackend

    def get(self) -> ComfyVideoBackend:
        return self.backend

    def release(self) -> None:
        """Nothing to drop: ComfyUI owns the MODEL, CLIP and VAE and frees them itself."""

    def __str__(self) -> str:
        return f"video model {self.backend.source} (ComfyUI)"

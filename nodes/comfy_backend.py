"""The video-model backend on ComfyUI's own objects: core MODEL, CLIP (or CONDITIONING) and VAE.

What differs between model families (Wan video, Flux images: latent shapes, decoding, LoRA names)
is `comfy_families.py`'s registry; this module is the part they share.

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
  CONDITIONING the user encoded already (`comfy_prompts.py`, which keeps the entries Flux needs
  beside the text tensor; without FluxGuidance ComfyUI's Flux default 3.5 applies);
- decoding runs the family's VAE decode with gradient (`ComfyFamily.decode`);
- what differs between the Wan 2.1 and the Wan 2.2 VAE (latent shape, sizes, first chunk, `unpatchify`,
  frame rate) comes from `comfy_wan_vae.py`, so Wan 2.2 TI2V-5B (ComfyUI's WAN22 with the Wan 2.2 VAE)
  runs here as a text-to-video model;
- Wan 2.2 A14B: two MODELs (high-noise, low-noise) sample as ComfyUI's template chains two
  KSamplerAdvanced (`comfy_solver.ComfyExpertChain`); the LoRA trains on one of them or on both
  (`trained_expert`; `wan_experts.py` names a two-expert LoRA's layers) and its file says which;
- fp8 weights (Load Diffusion Model's fp8 weight dtypes, `fp8_scaled` checkpoints): the adapters act on
  the weight as ComfyUI casts it per layer; on scaled-fp8 layers their difference is divided by the
  layer's scale, which ComfyUI multiplies in after the weight functions (`_TrainedWeight`).

ComfyUI runs every prompt in `torch.inference_mode()`, so the weights it loaded are inference tensors;
`comfy_autograd.make_autograd_safe` makes them usable by autograd once ComfyUI has loaded a model.

LoRA weights travel in the family's own module names (diffusers names for Wan, like the diffusers
backend's, so a LoRA trained here previews on the diffusers backend and vice versa; ComfyUI's own
names for Flux).

Imported only inside ComfyUI (it imports `comfy`); `_comfy.py` stays the bridge for node classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
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
from ..drf_core.models.base import NO_SAVERS, DecodeOptions, DenoisingScheduler, PromptEmbeddings, VideoBackend
from .comfy_autograd import make_autograd_safe
from .comfy_families import family_of
from .comfy_names import SOLVERS
from .comfy_prompts import ComfyPrompts
from .comfy_solver import ComfyEmbeddings, ComfyExpertChain, ComfySolverRun
from .wan_experts import BOTH, EXPERT_KEY, expert_of, experts_trained, module_name, split_experts

logger = logging.getLogger(__name__)

MODEL_PREFIX = "diffusion_model."
# The key of the one MODEL of a model that is not Wan 2.2 A14B (whose keys are `WAN_EXPERTS`).
ONE_MODEL = "model"
# The pack's scheduler names (SamplerConfig.scheduler) -> ComfyUI (sampler, scheduler); "default"
# is the pair chosen on the Video Model from ComfyUI node.
DRF_SCHEDULER_NAMES = {"unipc": ("uni_pc", "simple"), "flow_euler": ("euler", "simple")}


# ----------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------


@dataclass
class _Adapter:
    """One adapter: the clones sampling uses with it (by MODEL: `ONE_MODEL` or the A14B experts), and (when
    trained here) its weight functions by LoRA module name."""

    patchers: dict[str, Any]
    trained: dict[str, _TrainedWeight] = field(default_factory=dict)
    weights: LoRAWeights | None = None


class ComfyVideoBackend(VideoBackend):
    """A Wan text-to-video or Flux text-to-image model given as ComfyUI MODEL + VAE (+ CLIP or CONDITIONING).

    The family (`comfy_families.family_of`) gives the LoRA presets and module names of this instance."""

    family: ClassVar[str] = "wan"

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
        self.kind = family_of(model)
        self.family = self.kind.name
        self.lora_target_presets = self.kind.lora_target_presets
        SOLVERS.get(sampler_name)
        # `bases`: a clone of each MODEL by key, `ONE_MODEL` or (Wan 2.2 A14B: `model` is the high-noise expert,
        # `low_noise_model` the low-noise one) the experts. The LoRA goes on `lora_targets`; an expert not among
        # them samples its share of the steps unchanged. `base` is the first target (`denoiser`'s MODEL).
        self.bases: dict[str, Any] = {ONE_MODEL: model.clone()}
        self.lora_targets: tuple[str, ...] = (ONE_MODEL,)
        self.trained_expert: str | None = None
        if low_noise_model is not None:
            if self.family != "wan" or family_of(low_noise_model).name != "wan":
                raise DRFInputError(
                    "model_low_noise is for Wan 2.2 A14B's two experts (two Wan MODELs); disconnect it for "
                    f"this {self.family} MODEL"
                )
            self.lora_targets = experts_trained(trained_expert)
            if not 0.0 <= low_noise_from <= 1.0:
                raise DRFInputError(f"low_noise_from is a fraction of the steps, got {low_noise_from}; use 0..1")
            self.bases = {"high_noise": model.clone(), "low_noise": low_noise_model.clone()}
            self.trained_expert = trained_expert
        self.low_noise_from = low_noise_from
        self.base = self.bases[self.lora_targets[0]]
        self.vae = vae
        for patcher in self.bases.values():
            self.kind.check_vae(vae, patcher.model)
        self.frame_rate = self.kind.frame_rate(vae)
        self.prompts = prompts
        self.sampler_name = sampler_name
        self.scheduler_name = scheduler_name
        self.device = self.base.load_device
        self.dtype = self.base.model_dtype()
        self.source = f"ComfyUI MODEL ({type(self.base.model).__name__})"
        self._adapters: dict[str, _Adapter] = {}
        self._run: ComfySolverRun | None = None
        self._checkpointed_blocks: dict[int, Any] = {}

    def native_module_name(self, module_name: str) -> str:
        return self.kind.native_module_name(module_name)

    def module_name_from_native(self, native_name: str) -> str:
        return self.kind.module_name_from_native(native_name)

    # --- what is active ------------------------------------------------------------------------

    @property
    def experts(self) -> bool:
        """True for Wan 2.2 A14B (two MODELs)."""
        return ONE_MODEL not in self.bases

    def _patchers(self) -> dict[str, Any]:
        """The clones sampling uses, by MODEL key: the newest adapter's, else the base clones."""
        return next(reversed(self._adapters.values())).patchers if self._adapters else self.bases

    @property
    def patcher(self) -> Any:
        """The clone sampling uses for the first MODEL the LoRA is on."""
        return self._patchers()[self.lora_targets[0]]

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.base.model.diffusion_model

    def _lora_name(self, target: str, module: str) -> str:
        """A LoRA module's name: the module's own, or with its expert when the LoRA is on both."""
        return module_name(target, module) if len(self.lora_targets) > 1 else module

    def _prepare_model(self) -> None:
        """Called once ComfyUI has loaded the model for a run (see `make_autograd_safe`)."""
        for patcher in self.bases.values():
            make_autograd_safe(patcher.model, patcher.model.latent_format)
            patcher.model.requires_grad_(False)

    # --- prompts -------------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str, guidance_scale: float) -> PromptEmbeddings:
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise DRFInputError("no prompts given; give at least one prompt")
        positive, positive_extras = self.prompts.batch(prompts)
        negative, negative_extras = None, {}
        if guidance_scale > 1.0:
            negative, negative_extras = self.prompts.batch([negative_prompt or ""] * len(prompts))
        return ComfyEmbeddings(positive, negative, positive_extras, negative_extras)

    def release_text_encoder(self) -> None:
        """Nothing to free: ComfyUI's memory manager offloads the CLIP when others need the memory."""
        logger.info("the CLIP stays with ComfyUI, which offloads it when the memory is needed")

    # --- sizes and noise -----------------------------------------------------------------------

    def num_frames_out(self, spec: VideoSpec) -> int:
        """The family's sizes (Wan: steps of 16, `4n+1` frames; Flux: steps of 16, one image)."""
        return self.kind.num_frames_out(self.vae, spec)

    def init_noise(self, spec: VideoSpec, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Core KSampler's noise for the family's empty latent: `torch.randn` on the CPU from `generator`
        (seeded with the node's seed, this is `comfy.sample.prepare_noise`)."""
        shape = self.kind.noise_shape(self.vae, self.base.get_model_object("latent_format"), spec, batch_size)
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
        patchers = self._patchers()
        if flow_shift is not None:  # what core ModelSamplingSD3 does
            from comfy_extras.nodes_model_advanced import ModelSamplingSD3

            patchers = {name: ModelSamplingSD3().patch(p, flow_shift)[0] for name, p in patchers.items()}
        if not self.experts:
            self._run = ComfySolverRun(
                patchers[ONE_MODEL], sampler_name, scheduler_name, num_inference_steps, self._prepare_model
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
        if torch.is_grad_enabled() and self.kind.blocks_change_inputs and not self._checkpointed_blocks:
            self.set_block_checkpointing(True)  # plain autograd refuses these blocks (see `ComfyFamily`)
            try:
                return self._run.denoise(latents, timestep)
            finally:
                self.set_block_checkpointing(False)
        return self._run.denoise(latents, timestep)

    def check_backprop_steps(self, num_inference_steps: int, fewest: int, most: int) -> None:
        """Wan 2.2 A14B: the gradient reaches the high-noise expert only through every low-noise step. Training
        it alone needs that on every step (`fewest`); training both experts on some steps (`most`)."""
        if "high_noise" not in self.lora_targets:
            return
        switch = round(self.low_noise_from * num_inference_steps)
        low_noise_steps = num_inference_steps - switch
        backprop_steps = most if len(self.lora_targets) > 1 else fewest
        if switch == 0 or backprop_steps > low_noise_steps:
            return
        raise DRFInputError(
            f"the LoRA is on Wan 2.2 A14B's high-noise expert, but the gradient reaches it only through all "
            f"{low_noise_steps} of the low-noise expert's steps (low_noise_from {self.low_noise_from:g} of "
            f"{num_inference_steps} steps), and truncated_backprop_steps is {backprop_steps}: raise "
            f"truncated_backprop_steps to at least {low_noise_steps + 1} (memory grows with each step), or set "
            "trained_expert to low_noise"
        )

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The trained adapters compute nothing (the base model predicts) until the block ends."""
        adapters = [w for adapter in self._adapters.values() for w in adapter.trained.values()]
        were = [w.enabled for w in adapters]
        for weight in adapters:
            weight.enabled = False
        try:
            yield
        finally:
            for weight, enabled in zip(adapters, were, strict=True):
                weight.enabled = enabled

    def set_block_checkpointing(self, enabled: bool) -> None:
        names = ("blocks", "double_blocks", "single_blocks")  # Wan; Flux
        denoisers = [patcher.model.diffusion_model for patcher in self.bases.values()]
        blocks = [block for denoiser in denoisers for name in names for block in getattr(denoiser, name, [])]
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
        self, latents: torch.Tensor, frame_indices: Sequence[int] | None = None, options: DecodeOptions = NO_SAVERS
    ) -> torch.Tensor:
        """Core VAEDecode's computation with gradient, as the family decodes (`ComfyFamily.decode`); runs
        without autocast, as core VAE Decode does."""
        with autocast_off(self.vae.device):
            return self.kind.decode(self.vae, latents, frame_indices, options)

    # --- LoRA life cycle -----------------------------------------------------------------------

    def _target_layers(self, target: str, modules: Sequence[str]) -> dict[str, torch.nn.Module]:
        """Family module name -> layer of MODEL `target` for its Linear layers whose names end in one of `modules`."""
        found = {}
        for native, module in self.bases[target].model.diffusion_model.named_modules():
            if not isinstance(module, torch.nn.Linear) or not hasattr(module, "weight_function"):
                continue
            try:
                name = self.module_name_from_native(native)
            except DRFInputError:
                continue
            if any(name == t or name.endswith("." + t) for t in modules):
                found[name] = module
        return found

    def _refuse_existing(self, adapter_name: str) -> None:
        if adapter_name in self._adapters:
            raise DRFInputError(f"the model already has a LoRA adapter named {adapter_name!r}; remove it first")

    def _attach(self, adapter_name: str, adapters: dict[str, dict[str, LoraDiff]]) -> dict[str, torch.nn.Parameter]:
        """Put trainable adapters (by MODEL key, then module name) on clones of the current patchers."""
        patchers = dict(self._patchers())
        trained, named = {}, {}
        for target, by_module in adapters.items():
            patcher = patchers[target] = patchers[target].clone()
            denoiser = self.bases[target].model.diffusion_model
            for name, adapter in by_module.items():
                native = self.native_module_name(name)
                layer = denoiser.get_submodule(native)
                weight = trained[self._lora_name(target, name)] = _TrainedWeight(
                    adapter, layer.scale_weight if _is_scaled_fp8(layer) else None
                )
                patcher.add_weight_wrapper(f"{MODEL_PREFIX}{native}.weight", weight)
                for part in ("lora_up", "lora_down"):
                    param = getattr(adapter, part).weight
                    param.requires_grad_(True)
                    named[f"{self._lora_name(target, name)}.{part}.weight"] = param
        self._adapters[adapter_name] = _Adapter(patchers, trained=trained)
        return named

    def add_lora(self, config: LoRAConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        """ComfyUI's trainable LoRA (`create_train`: up random, down zero, so training starts at the base),
        on each MODEL the LoRA goes on."""
        config.validate()
        if config.dropout:
            raise DRFInputError("LoRA dropout is not available on ComfyUI models; set lora dropout to 0")
        self._refuse_existing(adapter_name)
        adapters = {}
        for target in self.lora_targets:
            layers = self._target_layers(target, self.lora_target_presets[config.target_preset])
            if not layers:
                raise DRFInputError(f"no layer of this MODEL matches the LoRA preset {config.target_preset!r}")
            with torch.inference_mode(False):
                adapters[target] = {
                    name: adapter_maps["LoRA"].create_train(module.weight, config.rank, config.alpha).to(torch.float32)
                    for name, module in sorted(layers.items())
                }
        logger.info(
            "ComfyUI LoRA %r: rank %d, alpha %g, %d layers on %s",
            adapter_name,
            config.rank,
            config.alpha,
            sum(len(a) for a in adapters.values()),
            " and ".join(self.lora_targets),
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
        applied exactly as core LoraLoaderModelOnly applies them. Each part goes on its own MODEL
        (`_placement`)."""
        self._refuse_existing(adapter_name)
        placement = self._placement(lora)
        if trainable:
            if strength != 1.0:
                raise DRFInputError(f"resuming training needs strength 1.0, got {strength}")
            if dropout:
                raise DRFInputError("LoRA dropout is not available on ComfyUI models; set lora dropout to 0")
            adapters = {}
            for target, part in placement.items():
                layers = self._target_layers(target, list(part.modules))
                missing = sorted(set(part.modules) - set(layers))
                if missing:
                    raise DRFInputError(f"the LoRA names layers this MODEL does not have (e.g. {missing[:3]})")
                with torch.inference_mode(False):
                    adapters[target] = {
                        name: LoraDiff(
                            (w.up.float().to(self.device), w.down.float().to(self.device), w.alpha, None, None, None)
                        )
                        for name, w in part.modules.items()
                    }
            return self._attach(adapter_name, adapters)
        patchers = dict(self._patchers())
        for target, part in placement.items():
            native = LORA_FORMATS.get("comfyui").tensors(part.modules, self.native_module_name)
            key_map = comfy.lora.model_lora_keys_unet(self.bases[target].model, {})
            patches = comfy.lora.load_lora(native, key_map)
            if len(patches) != len(part.modules):
                raise DRFInputError(
                    f"only {len(patches)} of the LoRA's {len(part.modules)} layers exist in this MODEL; it was made "
                    "for another model or size"
                )
            patchers[target] = patchers[target].clone()
            patchers[target].add_patches(patches, strength)
        self._adapters[adapter_name] = _Adapter(patchers, weights=lora)
        return {}

    def _placement(self, lora: LoRAWeights) -> dict[str, LoRAWeights]:
        """The MODEL each part of `lora` goes on. A LoRA trained on one Wan 2.2 A14B expert goes on that
        expert only, and one trained on both on both; the experts it goes on are the ones `trained_expert` names."""
        parts = split_experts(lora)
        if not self.experts:
            if len(parts) > 1:
                raise DRFInputError(
                    "this LoRA holds one part per Wan 2.2 A14B expert, and this video model has one MODEL: connect "
                    "the A14B experts (model and model_low_noise), or load one expert's file"
                )
            ((expert, part),) = parts.items()
            if expert is not None:
                logger.warning(
                    "this LoRA was trained on Wan 2.2 A14B's %s MODEL; this video model has one MODEL, so it is "
                    "applied there: connect the A14B experts (model and model_low_noise) to apply it where it belongs",
                    expert,
                )
            return {ONE_MODEL: part}
        if None in parts:  # a LoRA that names no expert goes where `trained_expert` says
            if len(self.lora_targets) > 1:
                raise DRFInputError(
                    "this LoRA does not say which Wan 2.2 A14B expert it was trained on, and trained_expert is both: "
                    "set trained_expert to the expert it is for"
                )
            return {self.lora_targets[0]: parts[None]}
        wrong = sorted(set(parts) - set(self.lora_targets))
        if wrong:
            named = BOTH if len(parts) > 1 else next(iter(parts))
            raise DRFInputError(
                f"this LoRA was trained on Wan 2.2 A14B's {' and '.join(sorted(parts))} expert"
                f"{'s' if len(parts) > 1 else ''}, but Video Model from ComfyUI puts LoRAs on the "
                f"{' and '.join(self.lora_targets)} one{'s' if len(self.lora_targets) > 1 else ''}: set its "
                f"trained_expert to {named}"
            )
        return dict(parts)

    def snapshot_lora(self, adapter_name: str, metadata: dict[str, Any] | None = None) -> LoRAWeights:
        adapter = self._adapters.get(adapter_name)
        if adapter is None:
            raise DRFInputError(f"the model has no LoRA adapter named {adapter_name!r}")
        header = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        if adapter.weights is not None:  # a preview: the LoRA as it was given, on the experts it names
            expert = expert_of(adapter.weights) or self.trained_expert
            header.update({EXPERT_KEY: expert} if self.experts and expert else {})
            return LoRAWeights(None, adapter.weights.key_layout, dict(adapter.weights.modules), header)
        if self.trained_expert is not None:  # which of Wan 2.2 A14B's MODELs the file belongs on
            header[EXPERT_KEY] = self.trained_expert
        modules = {
            name: LoRAModuleWeights(
                down=weight.adapter.lora_down.weight.detach().to("cpu", copy=True),
                up=weight.adapter.lora_up.weight.detach().to("cpu", copy=True),
                alpha=float(weight.adapter.alpha),
            )
            for name, weight in adapter.trained.items()
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
        for weight in adapter.trained.values():
            weight.adapter.requires_grad_(False)

    def set_training(self, enabled: bool) -> None:
        for target in self.lora_targets:
            self.bases[target].model.diffusion_model.train(enabled)

    def adapted_weights(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Native weight key (with its expert and '/' in front when the LoRA is on both A14B experts) -> the
        weight the adapter's layers compute with (`W + alpha/rank up @ down`).

        `W` is the MODEL's own weight: the base clone is loaded first, so ComfyUI takes off the
        patches another clone (e.g. one from LoraLoaderModelOnly) put on the shared layers.
        """
        adapter = self._adapters[adapter_name]
        out = {}
        for target in self.lora_targets:
            model_management.load_models_gpu([self.bases[target]])
            denoiser = self.bases[target].model.diffusion_model
            prefix = self._lora_name(target, "")
            with torch.no_grad():
                for name, weight in adapter.trained.items():
                    if not name.startswith(prefix):
                        continue
                    native = self.native_module_name(name.removeprefix(prefix))
                    layer = denoiser.get_submodule(native)
                    base = layer.weight.to(weight.adapter.lora_up.weight.device, torch.float32)
                    if _is_scaled_fp8(layer):
                        base = base * layer.scale_weight.to(base.device, torch.float32)
                    out[f"{prefix}{MODEL_PREFIX}{native}.weight"] = weight.adapter(base).detach().cpu()
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
            "vae": self.kind.vae_name(self.vae),
            "frame_rate": self.frame_rate,
            "text_from": "CLIP" if self.prompts.clip is not None else "CONDITIONING",
            **({"trained_expert": self.trained_expert, "low_noise_from": self.low_noise_from} if self.experts else {}),
        }


def _is_scaled_fp8(layer: torch.nn.Module) -> bool:
    """A layer of ComfyUI's scaled-fp8 ops (`fp8_scaled` checkpoints): it computes `weight * scale_weight`."""
    return isinstance(getattr(layer, "scale_weight", None), torch.Tensor)


class _TrainedWeight:
    """A trainable LoRA as one of a layer's weight functions (`add_weight_wrapper`): `W + dW`, computed by
    ComfyUI's `LoraDiff` (`adapter`); nothing while `enabled` is off (the base model, for the drift penalty).

    On a scaled-fp8 layer (`scale` set) ComfyUI multiplies what the weight functions return by the layer's
    `scale_weight`, so the LoRA's difference is divided by it first: `(W_q + dW / s) * s = W + dW`."""

    def __init__(self, adapter: LoraDiff, scale: torch.Tensor | None = None) -> None:
        self.adapter = adapter
        self.scale = scale
        self.enabled = True

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.scale is None:
            return self.adapter(weight)
        adapter = self.adapter
        delta = (adapter.alpha / adapter.rank) * (adapter.lora_up.weight @ adapter.lora_down.weight)
        scale = self.scale.to(device=delta.device, dtype=torch.float32)
        return (weight + (delta / scale).reshape(weight.shape)).to(weight.dtype)

    def move_to(self, device: torch.device) -> int:
        """ComfyUI moves weight functions with the model (`move_weight_functions`)."""
        return self.adapter.move_to(device)


def _checkpointed(forward: Any) -> Any:
    """`forward` checkpointed (while gradients are on) on copies of its tensor inputs: ComfyUI's blocks may
    change an input in place (Flux's double blocks add to `txt`), which would make backward recompute the
    block from the changed tensor."""

    def on_copies(*args: Any, **kwargs: Any) -> Any:
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return forward(*args, **kwargs)

    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(on_copies, *args, use_reentrant=False, **kwargs)

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

"""ComfyUI's memory manager owns the models this pack loads itself (the critic, a diffusers video model).

`ComfyModelHost` is the `ModelCache` host inside ComfyUI. When the cache loads a model, every
`torch.nn.Module` the model object holds (the critic's VLM; a diffusers backend's transformer, VAE
and text encoder) gets its own `comfy.model_patcher.ModelPatcher`, as ComfyUI's own MODEL, CLIP and
VAE do. From then on ComfyUI decides where their weights live:

- `use(model)` (each time a node asks the cache for the model) loads all of its modules with
  `model_management.load_models_gpu`, so ComfyUI first unloads other models when the device is short;
- when ComfyUI needs the memory for something else, or the user presses "Unload Models" / posts
  `/free`, it unloads them to its offload device (RAM) like its own models; a forward pre-hook on each
  module (and its first two levels of children, where the critic and the VAE are entered) loads it
  back before it is used again.

Each module keeps its patcher in an attribute, so the patcher lives exactly as long as the module:
when the engine drops a module (e.g. `release_text_encoder`), ComfyUI's loaded-model list loses it
at its next clean-up.

The modules are loaded whole (`force_full_load`): ComfyUI's partial low-VRAM loading needs its own
`comfy.ops` layers, which transformers' and diffusers' models do not use. They are also marked as
host-managed, so the engine's phase offload (`drf_core.offload`) leaves them to ComfyUI.

Knows ComfyUI's model management; nothing about critics or training.
"""

from __future__ import annotations

import logging
from typing import Any

import comfy.model_management as model_management
import comfy.model_patcher
import torch

from ..drf_core.offload import HOST_MANAGED_ATTRIBUTE

logger = logging.getLogger(__name__)

PATCHER_ATTRIBUTE = "_drf_comfy_patcher"
HOOK_DEPTH = 2  # the critic enters its VLM at model.model.visual; a diffusers VAE at vae.decoder


class _Holder(torch.nn.Module):
    """What the ModelPatcher wraps: ComfyUI sets attributes (`device`, ...) that transformers' and
    diffusers' models expose read-only, so they sit one level down."""

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.inner = module
        self.drf_name = name


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def held_modules(model: Any) -> dict[str, torch.nn.Module]:
    """The torch modules a loaded model object holds directly (its attributes), by attribute name."""
    return {name: value for name, value in vars(model).items() if isinstance(value, torch.nn.Module)}


def patcher_of(module: torch.nn.Module) -> Any:
    return getattr(module, PATCHER_ATTRIBUTE, None)


def is_loaded(patcher: Any) -> bool:
    """Whether ComfyUI lists `patcher` among its loaded models."""
    return any(loaded.model is patcher for loaded in model_management.current_loaded_models)


class ComfyModelHost:
    """Gives the pack's own models to ComfyUI's memory manager (see the module docstring)."""

    def adopt(self, label: str, model: Any) -> None:
        for name, module in held_modules(model).items():
            if patcher_of(module) is not None:
                continue
            device = _module_device(module)
            patcher = comfy.model_patcher.ModelPatcher(
                _Holder(module, f"{label} {name}"),
                load_device=device,
                offload_device=model_management.unet_offload_device(),
            )
            patcher.add_callback(comfy.model_patcher.CallbacksMP.ON_DETACH, _log_unload)
            object.__setattr__(module, PATCHER_ATTRIBUTE, patcher)  # a plain attribute, not a submodule
            object.__setattr__(module, HOST_MANAGED_ATTRIBUTE, True)  # phase offload leaves it to ComfyUI
            for depth_module in _modules_to_depth(module, HOOK_DEPTH):
                depth_module.register_forward_pre_hook(_reload_hook(module))
            logger.info("DiffusionDRF: %s %s is managed by ComfyUI (%s on %s)", label, name, _gib(patcher), device)

    def use(self, label: str, model: Any) -> None:
        patchers = [p for p in (patcher_of(m) for m in held_modules(model).values()) if p is not None]
        if patchers:
            _load(patchers)


def _load(patchers: list[Any]) -> None:
    """Load whole, outside inference mode: a move made inside it would turn the weights into
    inference tensors, which a later training step cannot save for backward."""
    with torch.inference_mode(False):
        model_management.load_models_gpu(patchers, force_full_load=True)


def _modules_to_depth(module: torch.nn.Module, depth: int) -> list[torch.nn.Module]:
    found, level = [module], [module]
    for _ in range(depth):
        level = [child for parent in level for child in parent.children()]
        found.extend(level)
    return found


def _reload_hook(module: torch.nn.Module) -> Any:
    def before_forward(_submodule: torch.nn.Module, _args: Any) -> None:
        patcher = patcher_of(module)
        if patcher is not None and not is_loaded(patcher):
            logger.info("DiffusionDRF: loading %s back onto %s", patcher.model.drf_name, patcher.load_device)
            _load([patcher])

    return before_forward


def _log_unload(patcher: Any, _unpatch_all: bool) -> None:
    logger.info("DiffusionDRF: ComfyUI unloaded %s to %s", patcher.model.drf_name, patcher.offload_device)


def _gib(patcher: Any) -> str:
    return f"{patcher.model_size() / 2**30:.2f} GiB"

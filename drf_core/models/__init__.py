"""Text-to-video backends, by the diffusers pipeline class a model folder declares.

`VIDEO_BACKENDS` maps `model_index.json`'s `_class_name` ("WanPipeline") to a `VideoBackend`
class with a `from_folder(path, dtype, device)` class method. `load_video_backend` checks the
folder first and explains, with the fix, what is wrong when it is not a usable diffusers
text-to-video folder (missing, a transformers model such as the VLM critic, an image-to-video
pipeline, a missing component folder).

Knows no model family's internals (those live in one module per family, e.g. `wan.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import resolve_device, resolve_dtype
from ..errors import DRFInputError, ModelFolderError
from ..registry import Registry
from .base import DenoisingScheduler, PromptEmbeddings, VideoBackend
from .diffusers_schedulers import SCHEDULERS
from .wan import WanBackend
from .weight_storage import VIDEO_WEIGHT_STORAGES, store_video_weights

__all__ = [
    "FLUX_MODULE_NAMES",
    "MODULE_NAME_MAPS",
    "SCHEDULERS",
    "VIDEO_BACKENDS",
    "VIDEO_WEIGHT_STORAGES",
    "DenoisingScheduler",
    "ModuleNameMap",
    "PromptEmbeddings",
    "VideoBackend",
    "WanBackend",
    "load_video_backend",
    "read_model_index",
    "store_video_weights",
]

VIDEO_BACKENDS: Registry[type[VideoBackend]] = Registry("text-to-video pipeline")
VIDEO_BACKENDS.add(WanBackend.pipeline_class, WanBackend)


@dataclass(frozen=True)
class ModuleNameMap:
    """A family's denoiser module names <-> its original checkpoint's (ComfyUI's) names."""

    to_native: Callable[[str], str]
    from_native: Callable[[str], str]


# By `VideoBackend.family`, from the family's backend: lets LoRA files be converted between formats
# without loading a model. Another backend of the same family (ComfyUI's) uses the same names.
MODULE_NAME_MAPS: Registry[ModuleNameMap] = Registry("model family")
MODULE_NAME_MAPS.add(
    WanBackend.family, ModuleNameMap(WanBackend.native_module_name, WanBackend.module_name_from_native)
)


def _flux_block_layer(name: str) -> str:
    """A Flux transformer block's layer keeps its name; other names are refused (LoRAs train block layers)."""
    if not name.startswith(("double_blocks.", "single_blocks.")):
        raise DRFInputError(
            f"{name!r} is not a layer of a Flux transformer block (double_blocks.N.* / single_blocks.N.*)"
        )
    return name


# Flux trains on ComfyUI's own objects only (`nodes/comfy_families.py`): its LoRA module names are
# ComfyUI's (`double_blocks.0.img_attn.qkv`), the same both ways.
FLUX_MODULE_NAMES = ModuleNameMap(_flux_block_layer, _flux_block_layer)
MODULE_NAME_MAPS.add("flux", FLUX_MODULE_NAMES)

_EXAMPLE_FOLDER = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def _describe_non_diffusers_folder(path: Path) -> str:
    """A sentence saying what the folder looks like when it has no model_index.json."""
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            config = {}
        architectures = config.get("architectures") or []
        model_type = config.get("model_type")
        if architectures or model_type:
            kind = ", ".join(architectures) or model_type
            return (
                f"it holds a transformers model ({kind}), e.g. a vision-language critic, not a video model; "
                "give that folder as the critic model instead"
            )
        if config.get("_class_name"):
            return f"it holds a single diffusers component ({config['_class_name']}), not a whole pipeline"
    if any(path.glob("*.safetensors")) or any(path.glob("*.gguf")):
        return "it holds loose checkpoint files (a ComfyUI-style single-file model), not a diffusers folder"
    return "it does not look like a diffusers model folder"


def read_model_index(path: str | Path) -> dict[str, Any]:
    """The folder's `model_index.json`, after checking the folder and every component it names."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFolderError(
            f"video model folder {path} does not exist; give the local folder of a diffusers text-to-video "
            f"model (one with model_index.json, e.g. {_EXAMPLE_FOLDER})"
        )
    if not path.is_dir():
        raise ModelFolderError(
            f"video model path {path} is a file; give the diffusers folder that holds model_index.json "
            f"(e.g. {_EXAMPLE_FOLDER}), not a single checkpoint file"
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelFolderError(
            f"{path} has no model_index.json: {_describe_non_diffusers_folder(path)}. Give the diffusers "
            f"folder of a text-to-video model as video model (e.g. {_EXAMPLE_FOLDER})"
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{index_file} is not readable JSON ({error}); download the folder again") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ModelFolderError(f"{index_file} names no pipeline class (_class_name); download the folder again")

    pipeline_class = index["_class_name"]
    if pipeline_class not in VIDEO_BACKENDS:
        supported = ", ".join(VIDEO_BACKENDS.names())
        raise ModelFolderError(
            f"{path} is a {pipeline_class} model, which is not supported: Diffusion-DRF trains text-to-video "
            f"models (prompt -> video). Supported pipeline classes: {supported}. Give a text-to-video folder "
            f"such as {_EXAMPLE_FOLDER}"
        )
    missing = [
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
        and value[1] is not None
        and not (path / name).is_dir()
    ]
    if missing:
        raise ModelFolderError(
            f"{path} is incomplete: model_index.json names the component folder(s) {', '.join(missing)}, "
            "which are missing; download the whole model folder (every sub-folder)"
        )
    return index


def load_video_backend(
    path: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    **backend_options: Any,
) -> VideoBackend:
    """Load a local diffusers text-to-video folder as the backend its pipeline class names.

    `dtype` is "auto" (bf16 on CUDA, fp32 on the CPU), "bf16", "fp16", "fp32" or a torch dtype;
    `device` is "auto", "cpu", "cuda", "cuda:N" or a torch device. `backend_options` go to the
    backend's `from_folder` (Wan: `vae_dtype`, `weight_storage`).
    """
    index = read_model_index(path)
    resolved_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device) if isinstance(dtype, str) else dtype
    backend_class = VIDEO_BACKENDS.get(index["_class_name"])
    try:
        return backend_class.from_folder(  # type: ignore[attr-defined]
            Path(path).expanduser(), dtype=resolved_dtype, device=resolved_device, **backend_options
        )
    except OSError as error:  # diffusers' "no file named diffusion_pytorch_model..." and other missing files
        raise ModelFolderError(
            f"the video model in {path} cannot be loaded ({error}); the folder is incomplete or damaged: download "
            "the whole model folder again (every sub-folder and weight file)"
        ) from error

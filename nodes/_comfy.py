"""The one module that touches ComfyUI: V3 node classes, folders, progress, interrupts, memory.

- `v3_node(node)` builds a V3 `io.ComfyNode` class from a `DRFNode`'s spec (with the newest
  versioned `comfy_api` this ComfyUI has, see `comfy_api_version.py`); its
  `execute` runs the node's `run` inside `torch.inference_mode(False)` (ComfyUI runs graphs in
  inference mode; training needs autograd) with a `ComfyContext`, and returns `io.NodeOutput`
  with the node's previews and text as `ui`.
- `ComfyFolders` answers the nodes' folder questions with `folder_paths` (and registers the `vlm`
  model folder, merged with `LLM`, without replacing one `extra_model_paths.yaml` made).
- The models this pack loads itself are handed to ComfyUI's memory manager
  (`comfy_memory.ComfyModelHost`, set as the model cache's host).

ComfyUI changes between releases; every use of one of its functions that a release could move or
drop goes through `_comfy_function`, so a newer ComfyUI without it gets a logged warning that says
what is missing and what still works, never an import failure.

Imported only inside ComfyUI (the pack's `__init__.py` checks); everything else stays host-free.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import comfy.model_management as model_management
import comfy.utils
import folder_paths
import torch
from PIL import Image

from ..drf_core.io import save_image_atomic
from ..drf_core.media import save_animation, to_pil
from . import NODES
from .comfy_api_version import pick_io
from .comfy_memory import ComfyModelHost
from .model_cache import MODEL_CACHE
from .spec import DRFNode, InputSpec, ModelFolders, NodeResult, NodeSpec, Preview

logger = logging.getLogger(__name__)

io, COMFY_API_MODULE = pick_io()

_MISSING_REPORTED: set[str] = set()


def _comfy_function(module: Any, name: str, consequence: str) -> Callable[..., Any] | None:
    """`module.name` if this ComfyUI has it; otherwise None and one warning saying what that disables."""
    function = getattr(module, name, None)
    if function is None and name not in _MISSING_REPORTED:
        _MISSING_REPORTED.add(name)
        logger.warning(
            "DiffusionDRF: this ComfyUI has no %s.%s, so %s. Update ComfyUI-DiffusionDRF, or report your "
            "ComfyUI version to it.",
            getattr(module, "__name__", module),
            name,
            consequence,
        )
    return function


# Model folder kinds this pack adds: kind -> folder names under models/ it also lists.
EXTRA_FOLDER_KINDS = {"vlm": ("vlm", "LLM")}
PREVIEW_JPEG_SIZE = 512


def register_model_folders() -> None:
    """Add the `vlm` kind, keeping any paths `extra_model_paths.yaml` already gave it."""
    for kind, names in EXTRA_FOLDER_KINDS.items():
        paths, extensions = folder_paths.folder_names_and_paths.get(kind, ([], set()))
        for name in names:
            path = os.path.join(folder_paths.models_dir, name)
            if path not in paths:
                paths.append(path)
        folder_paths.folder_names_and_paths[kind] = (paths, extensions or {"folder"})


class ComfyFolders(ModelFolders):
    """`ModelFolders` backed by ComfyUI's `folder_paths`."""

    refresh_hint = "press R (refresh) in ComfyUI"

    def bases(self, kind: str) -> list[Path]:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []

    def list_files(self, kind: str, suffixes: Any) -> list[str]:
        # ComfyUI's own (cached) listing: exactly the names its core loaders offer.
        return sorted(name for name in folder_paths.get_filename_list(kind) if name.endswith(tuple(suffixes)))

    def output_dir(self) -> Path:
        return Path(folder_paths.get_output_directory())

    def temp_dir(self) -> Path:
        return Path(folder_paths.get_temp_directory())


FOLDERS = ComfyFolders()


class ComfyContext:
    """`NodeContext` for one executing node: its progress bar, its text, ComfyUI's interrupt flag."""

    def __init__(self, unique_id: str | None) -> None:
        self.folders = FOLDERS
        self.unique_id = unique_id
        self._bar: comfy.utils.ProgressBar | None = None

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        if self.interrupted():
            return  # the bar's hook would raise here; the engine stops at its next check instead
        if self._bar is None:
            progress_bar = _comfy_function(comfy.utils, "ProgressBar", "the progress bar does not move")
            if progress_bar is None:
                return
            self._bar = progress_bar(total, node_id=self.unique_id)
        shown = ("JPEG", preview, PREVIEW_JPEG_SIZE) if preview is not None else None
        self._bar.update_absolute(value, total, shown)

    def show_text(self, text: str) -> None:
        from server import PromptServer

        server = PromptServer.instance
        if self.unique_id is None or server is None:
            return
        send = _comfy_function(server, "send_progress_text", "the node's live text (reward per aspect) is not shown")
        if send is not None:
            send(text, self.unique_id)

    def interrupted(self) -> bool:
        check = _comfy_function(
            model_management, "processing_interrupted", "Interrupt cannot stop training early (it stops between nodes)"
        )
        return bool(check()) if check is not None else False

    def raise_if_interrupted(self) -> None:
        raise_if = _comfy_function(
            model_management, "throw_exception_if_processing_interrupted", "Interrupt stops only between nodes"
        )
        if raise_if is not None:
            raise_if()


def _save_preview(preview: Preview, folder: Path) -> dict[str, str]:
    if preview.animated and preview.frames.shape[0] > 1:
        path = folder / f"drf_preview_{uuid.uuid4().hex[:12]}.webp"
        save_animation(preview.frames.permute(0, 3, 1, 2), path, fps=preview.fps)
    else:
        path = folder / f"drf_preview_{uuid.uuid4().hex[:12]}.png"
        save_image_atomic(to_pil(preview.frames[:1].permute(0, 3, 1, 2))[0], path)
    return {"filename": path.name, "subfolder": "", "type": "temp"}


def ui_output(result: NodeResult) -> dict[str, Any] | None:
    """ComfyUI's `ui` dict: previews written to the temp folder, the node's text."""
    ui: dict[str, Any] = {}
    if result.previews:
        folder = FOLDERS.temp_dir()
        folder.mkdir(parents=True, exist_ok=True)
        ui["images"] = [_save_preview(p, folder) for p in result.previews]
        ui["animated"] = (any(p.animated for p in result.previews),)
    if result.text:
        ui["text"] = (result.text,)
    return ui or None


_COMFY_TYPES = {"IMAGE": io.Image, "STRING": io.String, "FLOAT": io.Float, "INT": io.Int, "BOOLEAN": io.Boolean}


def _comfy_type(name: str) -> Any:
    return _COMFY_TYPES.get(name) or io.Custom(name)


def _number_options(item: InputSpec) -> dict[str, Any]:
    return {"default": item.default, "min": item.min, "max": item.max, "step": item.step}


def _combo_options(item: InputSpec) -> dict[str, Any]:
    options = item.option_list(FOLDERS)
    return {"options": options, "default": item.default if item.default in options else next(iter(options), None)}


# Widget type -> (V3 type, its widget-specific keyword arguments from the spec); other types are sockets.
V3_WIDGETS: dict[str, tuple[Any, Callable[[InputSpec], dict[str, Any]]]] = {
    "INT": (io.Int, lambda i: {**_number_options(i), "control_after_generate": i.control_after_generate or None}),
    "FLOAT": (io.Float, _number_options),
    "STRING": (io.String, lambda i: {"default": i.default, "multiline": i.multiline}),
    "BOOLEAN": (io.Boolean, lambda i: {"default": i.default}),
    "COMBO": (io.Combo, _combo_options),
}


def v3_input(item: InputSpec) -> Any:
    common = {"tooltip": item.tooltip, "optional": item.optional, "display_name": item.display_name}
    comfy_type, widget_options = V3_WIDGETS.get(item.type, (_comfy_type(item.type), lambda _: {}))
    return comfy_type.Input(item.name, **widget_options(item), **common)


def v3_schema(spec: NodeSpec) -> io.Schema:
    return io.Schema(
        node_id=spec.node_id,
        display_name=spec.display_name,
        category=spec.category,
        description=spec.description,
        inputs=[v3_input(item) for item in spec.inputs],
        outputs=[_comfy_type(o.type).Output(id=o.name, display_name=o.name, tooltip=o.tooltip) for o in spec.outputs],
        hidden=[io.Hidden.unique_id],
        is_output_node=spec.is_output_node,
    )


def v3_node(node: type[DRFNode]) -> type[io.ComfyNode]:
    """A ComfyUI V3 node class for `node` (schema read again on every `/object_info`)."""

    def define_schema(cls) -> io.Schema:
        return v3_schema(node.SPEC)

    def execute(cls, **inputs: Any) -> io.NodeOutput:
        ctx = ComfyContext(cls.hidden.unique_id if cls.hidden is not None else None)
        with torch.inference_mode(False):
            result = node.run(ctx, **inputs)
        return io.NodeOutput(*result.outputs, ui=ui_output(result))

    namespace = {
        "__doc__": node.SPEC.description,
        "__module__": __name__,
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    }
    return type(node.__name__, (io.ComfyNode,), namespace)


def node_class_mappings() -> tuple[dict[str, type], dict[str, str]]:
    """`NODE_CLASS_MAPPINGS` and `NODE_DISPLAY_NAME_MAPPINGS` for ComfyUI's loader.

    A node whose class this ComfyUI cannot build is left out with an error in the log naming it,
    so the other nodes still load.
    """
    register_model_folders()
    MODEL_CACHE.host = ComfyModelHost()
    classes, names = {}, {}
    for node in NODES:
        try:
            classes[node.SPEC.node_id] = v3_node(node)
        except Exception:
            logger.exception(
                "DiffusionDRF: %s cannot be built with %s of this ComfyUI; it is left out. Update "
                "ComfyUI-DiffusionDRF (or ComfyUI) and restart.",
                node.SPEC.node_id,
                COMFY_API_MODULE,
            )
            continue
        names[node.SPEC.node_id] = node.SPEC.display_name
    logger.info("DiffusionDRF: %d nodes built with ComfyUI's %s", len(classes), COMFY_API_MODULE)
    return classes, names

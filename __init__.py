"""ComfyUI-DiffusionDRF: ComfyUI's entry point for this node pack.

ComfyUI imports this folder as a package. Outside ComfyUI (pytest, scripts, `python -m
drf_core`) importing it must stay cheap and side-effect free, so the nodes are only built when
ComfyUI's own `comfy_api` package is importable. The V3 node classes are listed in
`NODE_CLASS_MAPPINGS`, which ComfyUI 0.3.64 and newer load (a `comfy_entrypoint` next to it would
be ignored by that loader).

If a ComfyUI release moved or dropped something the bridge imports, the reason goes to the log
with what to do instead of failing the import; a missing Python package still fails it (ComfyUI
then shows IMPORT FAILED and ComfyUI-Manager offers to install the requirements).
"""

import importlib.util
import logging

COMFYUI_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "node_helpers")


def _raised_by_comfyui(error: Exception) -> bool:
    """True when `error` names a ComfyUI module or one of its attributes (not a missing package)."""
    if isinstance(error, ImportError):
        name = error.name or ""
    else:
        name = getattr(getattr(error, "obj", None), "__name__", "") or ""
    return name.split(".")[0] in COMFYUI_MODULES


NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if importlib.util.find_spec("comfy_api") is not None and importlib.util.find_spec("folder_paths") is not None:
    try:
        from .nodes._comfy import node_class_mappings

        NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = node_class_mappings()
    except (ImportError, AttributeError) as error:
        if not _raised_by_comfyui(error):
            raise
        logging.getLogger(__name__).exception(
            "ComfyUI-DiffusionDRF: no nodes loaded, this ComfyUI lacks %s. Update ComfyUI-DiffusionDRF to a "
            "version made for your ComfyUI (or update ComfyUI), then restart.",
            error,
        )

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

"""ComfyUI-DiffusionDRF: ComfyUI's entry point for this node pack.

ComfyUI imports this folder as a package. Outside ComfyUI (pytest, scripts, `python -m
drf_core`) importing it must stay cheap and side-effect free, so the nodes are only built when
ComfyUI's own `comfy_api` package is importable. The V3 node classes are listed in
`NODE_CLASS_MAPPINGS`, which ComfyUI 0.3.64 and newer load (a `comfy_entrypoint` next to it would
be ignored by that loader).
"""

import importlib.util

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if importlib.util.find_spec("comfy_api") is not None and importlib.util.find_spec("folder_paths") is not None:
    from .nodes._comfy import node_class_mappings

    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = node_class_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

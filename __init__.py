"""ComfyUI-DiffusionDRF: ComfyUI's entry point for this node pack.

ComfyUI imports this folder as a package. Outside ComfyUI (pytest, scripts, `python -m
drf_core`) importing it must stay cheap and side-effect free, so the nodes are only imported
when ComfyUI's own `comfy` package is importable.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

"""ComfyUI node adapters over `drf_core` (arrive with the node-pack issue)."""

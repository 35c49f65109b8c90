"""Diffusion-DRF engine: fine-tune text-to-video diffusion models with a frozen VLM's
differentiable reward. Importable without ComfyUI; see ARCHITECTURE in README for the modules.
"""

__version__ = "0.3.0"

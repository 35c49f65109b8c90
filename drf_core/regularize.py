"""Keeping the LoRA model close to the base model: the drift penalty.

`DriftPenalty` is a gradient-step hook for `sampler.sample_latents`: at every denoising step that
carries gradient it asks the backend for the base model's prediction at the same latents,
timestep and prompt (the LoRA adapters switched off by `VideoBackend.adapters_disabled`, no
gradient), and keeps the mean squared difference to the LoRA model's prediction. `value()` is the
mean over those steps: 0 for a fresh LoRA (B = 0), growing as the LoRA model's velocity field
drifts from the base model's. Its gradient reaches only what the LoRA prediction depends on (the
LoRA; the base prediction is a constant), so `loss = -reward + drift_weight * value()` trains the
LoRA to raise the reward without changing the model's predictions more than it must.

Knows the `VideoBackend` interface; nothing about LoRA implementations, rewards, critics or training loops.
"""

from __future__ import annotations

import torch

from .models.base import PromptEmbeddings, VideoBackend


class DriftPenalty:
    """Collects `mean((v_lora - v_base)^2)` at each gradient step of one sampling run."""

    def __init__(self, backend: VideoBackend) -> None:
        self.backend = backend
        self.terms: list[torch.Tensor] = []

    def __call__(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        prediction: torch.Tensor,
    ) -> None:
        with torch.no_grad(), self.backend.adapters_disabled():
            base = self.backend.predict(latents.detach(), timestep, embeddings, guidance_scale)
        difference = prediction.float() - base.float()
        self.terms.append(difference.pow(2).mean())

    def value(self) -> torch.Tensor | None:
        """The mean over the gradient steps seen (None when sampling had no gradient step)."""
        if not self.terms:
            return None
        return torch.stack(self.terms).mean()

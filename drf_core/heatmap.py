"""Where does the video violate an aspect? The reward's gradient with respect to the pixels.

For each aspect, the aspect's reward is differentiated with respect to the frames; the gradient's
magnitude (summed over colour channels, lightly blurred, normalised per aspect) marks the pixels
whose change would raise that aspect's reward most — the paper's "spatially localised gradients".
It is drawn as a heat overlay on the frames.

Knows the `RewardFunction` interface; nothing about critics, diffusion models or training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import DRFInputError
from .media import check_frames
from .questions import QuestionSet
from .reward import RewardFunction

# Fraction of the strongest gradients that saturate the colour scale (robust to a few outliers).
SATURATION_QUANTILE = 0.99
BLUR_KERNEL = 5


def _heat_colors(heat: torch.Tensor) -> torch.Tensor:
    """`[F, H, W]` in 0..1 -> `[F, 3, H, W]`: black -> red -> yellow -> white."""
    red = (heat * 3).clamp(0, 1)
    green = (heat * 3 - 1).clamp(0, 1)
    blue = (heat * 3 - 2).clamp(0, 1)
    return torch.stack([red, green, blue], dim=1)


def gradient_magnitude(frames: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """|d value / d frames| summed over channels, blurred and scaled to 0..1: `[F, H, W]`."""
    (gradient,) = torch.autograd.grad(value, frames)
    magnitude = gradient.abs().sum(dim=1, keepdim=True)
    magnitude = F.avg_pool2d(magnitude, BLUR_KERNEL, stride=1, padding=BLUR_KERNEL // 2, count_include_pad=False)
    magnitude = magnitude[:, 0]
    flat = magnitude.flatten()
    scale = torch.quantile(flat, SATURATION_QUANTILE) if flat.numel() > 1 else flat.max()
    if not torch.isfinite(scale) or float(scale) <= 0:
        return torch.zeros_like(magnitude)
    return (magnitude / scale).clamp(0, 1)


def overlay(frames: torch.Tensor, heat: torch.Tensor, opacity: float = 0.6) -> torch.Tensor:
    """Frames darkened where the gradient is weak and tinted hot where it is strong."""
    weight = (heat * opacity).unsqueeze(1)
    return (frames * (1 - weight) + _heat_colors(heat) * weight).clamp(0, 1)


def reward_heatmaps(
    reward: RewardFunction,
    frames: torch.Tensor,
    questions: QuestionSet,
    aspects: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Aspect name -> overlaid heatmap frames `[F, 3, H, W]` in 0..1 (frames on the CPU).

    Each aspect is scored by `reward.for_aspect(name)` on that aspect's questions alone.
    """
    check_frames(frames)
    names = aspects or [aspect.name for aspect in questions.aspects]
    base = frames.detach().float().cpu()
    maps = {}
    for name in names:
        aspect = next((a for a in questions.aspects if a.name == name), None)
        if aspect is None:
            raise DRFInputError(f"no aspect named {name!r}; the questions have {[a.name for a in questions.aspects]}")
        only = QuestionSet(questions.prompt, [aspect])
        pixels = base.clone().requires_grad_(True)
        with torch.enable_grad():
            result = reward.for_aspect(name)(pixels, only)
            heat = gradient_magnitude(pixels, result.total)
        maps[name] = overlay(base, heat.detach())
    return maps

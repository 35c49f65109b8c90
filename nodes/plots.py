"""Reward Curves: a training run's metrics as a picture."""

from __future__ import annotations

from ..drf_core.errors import DRFInputError
from ..drf_core.media import from_pil
from ..drf_core.plots import plot_reward_curves
from .spec import (
    METRICS,
    DRFNode,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    Preview,
    Socket,
    String,
    category,
    comfy_image,
)


class RewardCurves(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFRewardCurves",
        display_name="Reward Curves (DRF)",
        category=category("train"),
        description="Plots the total reward and each aspect's reward against the training step (raw and smoothed).",
        inputs=(
            Socket("metrics", METRICS, "The metrics output of Train LoRA."),
            String("title", "Diffusion-DRF reward", "The plot's title (empty: none)."),
        ),
        outputs=(OutputSpec("IMAGE", "plot", "The plot as an image."),),
        is_output_node=True,
    )

    @classmethod
    def run(cls, ctx: NodeContext, metrics: list, title: str) -> NodeResult:
        if not isinstance(metrics, list):
            raise DRFInputError("metrics: connect the metrics output of Train LoRA")
        plot = comfy_image(from_pil([plot_reward_curves(metrics, title=title)]))
        return NodeResult((plot,), previews=[Preview(plot)])

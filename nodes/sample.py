"""Sample Video and Compare Side by Side: look at what the model makes, with or without a LoRA.

Sample Video draws the same noise for the same seed whether a LoRA is connected or not, so two
Sample Video nodes (base and LoRA) with one seed compare like with like. Frames leave as an IMAGE
batch `[F, H, W, 3]` (ComfyUI's video convention) and play as an animated preview on the node.
"""

from __future__ import annotations

from ..drf_core import api
from ..drf_core.config import SamplerConfig, VideoSpec
from ..drf_core.media import labelled_side_by_side
from ..drf_core.models import SCHEDULERS
from ..drf_core.sampler import SamplingInterrupted
from .lora import TrainedLoRAWire
from .spec import (
    LORA,
    VIDEO_MODEL,
    Combo,
    DRFNode,
    Float,
    Int,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    Preview,
    Socket,
    String,
    category,
    comfy_image,
    engine_frames,
)
from .train import MAX_SEED

_SAMPLER = SamplerConfig()
_VIDEO = VideoSpec()
PREVIEW_FPS = 16.0


class SampleVideo(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFSampleVideo",
        display_name="Sample Video (DRF)",
        category=category("sample"),
        description=(
            "Generates a video from a prompt with the video model, optionally with a LoRA at some strength. "
            "The same seed gives the same noise with and without the LoRA, for fair comparisons."
        ),
        inputs=(
            Socket("video_model", VIDEO_MODEL, "The video model (from Load Video Model)."),
            String("prompt", "a red fox runs across a snowy field at sunrise", "What the video shows.", multiline=True),
            String("negative_prompt", "", "What the video should not show (empty: none).", multiline=True),
            Int("width", _VIDEO.width, 16, 4096, "Width in pixels (multiple of 16).", 16),
            Int("height", _VIDEO.height, 16, 4096, "Height in pixels (multiple of 16).", 16),
            Int("num_frames", _VIDEO.num_frames, 1, 1025, "Number of frames (Wan: 4n+1; image models: 1).", 4),
            Int("steps", _SAMPLER.num_inference_steps, 1, 1000, "Denoising steps."),
            Float("guidance_scale", _SAMPLER.guidance_scale, 0.0, 30.0, "Classifier-free guidance.", 0.1),
            Combo("scheduler", ["default", *SCHEDULERS.names()], "default: the model folder's scheduler.", "default"),
            Int("seed", 0, 0, MAX_SEED, "Noise seed.", control_after_generate=True),
            Float("lora_strength", 1.0, -4.0, 4.0, "How strongly the LoRA applies (ignored without one).", 0.05),
            Socket("lora", LORA, "Optional LoRA to apply while sampling.", optional=True),
        ),
        outputs=(OutputSpec("IMAGE", "frames", "The video as an IMAGE batch of frames [F, H, W, 3]."),),
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        video_model,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        guidance_scale: float,
        scheduler: str,
        seed: int,
        lora_strength: float,
        lora: TrainedLoRAWire | None = None,
    ) -> NodeResult:
        spec = VideoSpec(height=height, width=width, num_frames=num_frames)
        sampler = SamplerConfig(num_inference_steps=steps, guidance_scale=guidance_scale, scheduler=scheduler)
        spec.validate()
        sampler.validate()
        try:
            videos = api.sample_videos(
                video_model.get(),
                [prompt],
                spec,
                sampler,
                seed,
                negative_prompt,
                lora=lora.weights if lora is not None else None,
                strength=lora_strength,
                on_step=lambda step, total: ctx.progress(step, total),
                should_stop=ctx.interrupted,
            )
        except SamplingInterrupted:
            ctx.raise_if_interrupted()
            raise
        frames = comfy_image(videos[0])
        return NodeResult((frames,), previews=[Preview(frames, animated=True, fps=PREVIEW_FPS)])


class CompareSideBySide(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFCompareSideBySide",
        display_name="Compare Side by Side (DRF)",
        category=category("sample"),
        description="Puts two videos of the same size next to each other, labelled, e.g. base model vs. LoRA.",
        inputs=(
            Socket("left", "IMAGE", "The left video (IMAGE batch of frames)."),
            Socket("right", "IMAGE", "The right video: same frame count and height as the left."),
            String("left_label", "base", "Text drawn over the left video (empty: none)."),
            String("right_label", "LoRA", "Text drawn over the right video (empty: none)."),
        ),
        outputs=(OutputSpec("IMAGE", "frames", "Both videos in one IMAGE batch."),),
        is_output_node=True,  # ComfyUI runs only output nodes and what feeds them; this one ends a comparison
    )

    @classmethod
    def run(cls, ctx: NodeContext, left, right, left_label: str, right_label: str) -> NodeResult:
        videos = (engine_frames(left, "left"), engine_frames(right, "right"))
        frames = comfy_image(labelled_side_by_side(videos, (left_label, right_label)))
        return NodeResult((frames,), previews=[Preview(frames, animated=True, fps=PREVIEW_FPS)])

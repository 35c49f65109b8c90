"""Evaluate LoRA: the base model against a LoRA on prompts x seeds, with confidence intervals.

Calls `drf_core.evaluate.evaluate_lora` with the connected question sets (their prompts are the
prompts evaluated: connect a Decompose Prompt of held-out prompts to judge a LoRA on prompts it
never trained on). Shows the summary on the node and returns the Markdown report, the chart and
the win rate. An image model's samples (Flux: one frame, `num_frames` 1) are scored as training
scores them: as still images, the questions about motion or time left out (`drf_core.scoring`).
"""

from __future__ import annotations

from ..drf_core.config import EvaluateConfig, SamplerConfig, VideoSpec
from ..drf_core.errors import DRFInputError
from ..drf_core.evaluate import INTERVALS, evaluate_lora, parse_seeds
from ..drf_core.media import from_pil
from ..drf_core.sampler import SamplingInterrupted
from .lora import TrainedLoRAWire
from .reward import RewardSettings
from .spec import (
    CRITIC,
    LORA,
    QUESTIONS,
    REWARD,
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
)

_EVALUATE = EvaluateConfig()
_SAMPLER = SamplerConfig()
_VIDEO = VideoSpec()


class EvaluateLoRA(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFEvaluateLoRA",
        display_name="Evaluate LoRA (DRF)",
        category=category("reward"),
        description=(
            "Is this LoRA worth keeping? Samples every prompt from every seed with and without the LoRA (the same "
            "noise for both), lets the critic answer every question about both videos, and reports per-aspect "
            "means with confidence intervals, the win rate, and the questions that improved and regressed most. "
            "Connect held-out prompts (ones the LoRA never trained on) for an honest verdict."
        ),
        inputs=(
            Socket("video_model", VIDEO_MODEL, "The base video model (from Load Video Model)."),
            Socket("critic", CRITIC, "The critic (from Load VLM Critic)."),
            Socket("questions", QUESTIONS, "The question sets of the prompts to evaluate (e.g. held-out prompts)."),
            Socket("lora", LORA, "The LoRA to judge (from Train LoRA or Load LoRA)."),
            String("seeds", "0, 1, 2, 3", "Seeds: every prompt is sampled from each (same noise with and without)."),
            Float("lora_strength", _EVALUATE.strength, -4.0, 4.0, "How strongly the LoRA applies.", 0.05),
            Int("width", _VIDEO.width, 16, 4096, "Width of the videos (multiple of 16).", 16),
            Int("height", _VIDEO.height, 16, 4096, "Height of the videos (multiple of 16).", 16),
            Int("num_frames", _VIDEO.num_frames, 1, 1025, "Frames per video (Wan: 4n+1; image models: 1).", 4),
            Int("steps", _SAMPLER.num_inference_steps, 1, 1000, "Denoising steps."),
            Float("guidance_scale", _SAMPLER.guidance_scale, 0.0, 30.0, "Classifier-free guidance.", 0.1),
            String("negative_prompt", "", "Negative prompt while sampling (empty: none).", multiline=True),
            Combo(
                "interval",
                INTERVALS.names(),
                "t: Student t interval over the prompt x seed pairs; bootstrap: percentile bootstrap (seeded).",
                _EVALUATE.interval,
            ),
            Float("confidence", _EVALUATE.confidence, 0.5, 0.999, "Confidence level of the intervals.", 0.01),
            Socket("reward", REWARD, "Reward settings (defaults when not connected).", optional=True),
        ),
        outputs=(
            OutputSpec("STRING", "report", "Markdown report: per aspect, win rate, question changes, every pair."),
            OutputSpec("IMAGE", "chart", "Per-aspect means with intervals, and the questions that moved most."),
            OutputSpec("FLOAT", "win_rate", "Share of pairs where the LoRA scores higher (ties count one half)."),
        ),
        is_output_node=True,
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        video_model,
        critic,
        questions,
        lora: TrainedLoRAWire,
        seeds: str,
        lora_strength: float,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        guidance_scale: float,
        negative_prompt: str,
        interval: str,
        confidence: float,
        reward: RewardSettings | None = None,
    ) -> NodeResult:
        settings = reward or RewardSettings()
        config = EvaluateConfig(
            seeds=parse_seeds(seeds),
            negative_prompt=negative_prompt,
            strength=lora_strength,
            video=VideoSpec(height=height, width=width, num_frames=num_frames),
            sampler=SamplerConfig(num_inference_steps=steps, guidance_scale=guidance_scale),
            decode=settings.decode,
            critic_input=settings.critic_input,
            reward=settings.reward,
            interval=interval,
            confidence=confidence,
        )
        config.validate()
        backend = video_model.get()
        if lora.family != backend.family:
            raise DRFInputError(
                f"the LoRA is for {lora.family} models but the video model is {backend.family}; "
                "connect a LoRA trained on this model family"
            )
        backend.num_frames_out(config.video)  # sizes the model cannot make are refused before the critic loads
        try:
            evaluation = evaluate_lora(
                backend,
                critic.get(),
                list(questions),
                lora.weights,
                config,
                progress=ctx.progress,
                should_stop=ctx.interrupted,
            )
        except SamplingInterrupted:
            ctx.raise_if_interrupted()
            raise
        chart = comfy_image(from_pil([evaluation.chart()]))
        report = evaluation.report()
        return NodeResult((report, chart, evaluation.win_rate), previews=[Preview(chart)], text=report)

"""Train LoRA (and its Training Options): the Diffusion-DRF run, with progress, previews and resume.

Runs `drf_core.api.train_lora` in the run folder `output/drf_runs/<run_name>` (a new run never
writes into a folder that holds an earlier run: it goes to `<run_name>_2`, ...). The progress bar
moves once per optimizer step and shows a frame of the video just scored; the node's text shows
the reward per aspect. Interrupt stops at the next denoising step, saves a resumable checkpoint
and stops the graph; queueing again with `resume` on continues from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..drf_core import api
from ..drf_core.checkpoint import find_checkpoint, holds_run, next_free_run_dir
from ..drf_core.config import (
    LoRAConfig,
    MonitorConfig,
    OptimizerConfig,
    RegularizationConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from ..drf_core.errors import DRFInputError
from ..drf_core.evaluate import parse_seeds
from ..drf_core.heldout import HELD_OUT_QUESTIONS
from ..drf_core.io import safe_child_path
from ..drf_core.media import from_pil, to_pil
from ..drf_core.memory_presets import MEMORY_CHOICES
from ..drf_core.models import SCHEDULERS, VIDEO_BACKENDS
from ..drf_core.monitor import held_out_summary, movers_summary
from ..drf_core.offload import OFFLOAD_MODES
from ..drf_core.plots import plot_reward_curves
from ..drf_core.reward import DRFReward
from ..drf_core.sampler import CHECKPOINTING
from ..drf_core.trainer import ProgressEvent
from .lora import TrainedLoRAWire
from .reward import RewardSettings
from .spec import (
    CRITIC,
    LORA,
    METRICS,
    QUESTIONS,
    REWARD,
    TRAINING_OPTIONS,
    VIDEO_MODEL,
    Boolean,
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

logger = logging.getLogger(__name__)

RUNS_FOLDER = "drf_runs"
MAX_SEED = 2**63 - 1
_TRAIN = TrainConfig()
_SAMPLER = SamplerConfig()
_OPTIMIZER = OptimizerConfig()
_LORA = LoRAConfig()
_VIDEO = VideoSpec()
_MONITOR = MonitorConfig()
_REGULARIZATION = RegularizationConfig()


def target_presets(_folders: object = None) -> list[str]:
    """Every LoRA target preset some video backend knows ("attention", "attention_ffn", ...)."""
    return sorted({name for key in VIDEO_BACKENDS for name in VIDEO_BACKENDS.get(key).lora_target_presets})


@dataclass(frozen=True)
class TrainingOptions:
    """The settings most runs leave alone (the Training Options node sets them)."""

    target_preset: str = _LORA.target_preset
    lora_dropout: float = _LORA.dropout
    weight_decay: float = _OPTIMIZER.weight_decay
    warmup_steps: int = _OPTIMIZER.warmup_steps
    max_grad_norm: float = _OPTIMIZER.max_grad_norm
    scheduler: str = _SAMPLER.scheduler
    flow_shift: float = 0.0
    checkpointing: str = _SAMPLER.checkpointing
    truncated_backprop_max: int = 0
    mixed_precision: str = _TRAIN.mixed_precision
    videos_per_step: int = _TRAIN.videos_per_step
    gradient_accumulation: int = _TRAIN.gradient_accumulation
    keep_last_checkpoints: int = _TRAIN.keep_last_checkpoints
    critic_gradient_checkpointing: bool = _TRAIN.critic_gradient_checkpointing
    release_text_encoder: bool = _TRAIN.release_text_encoder
    offload: str = _TRAIN.offload
    memory: str = _TRAIN.memory
    held_out_every: int = _MONITOR.interval
    held_out_seeds: str = ", ".join(str(seed) for seed in _MONITOR.seeds)
    held_out_prompts: str = ""
    held_out_questions: str = _MONITOR.held_out_questions
    early_stop_patience: int = _MONITOR.early_stop_patience
    early_stop_min_delta: float = _MONITOR.early_stop_min_delta
    early_stop_drop: float = _MONITOR.early_stop_drop
    keep_best: bool = _MONITOR.keep_best
    drift_weight: float = _REGULARIZATION.drift_weight


_OPTIONS = TrainingOptions()
MIXED_PRECISION = ("auto", "bf16", "fp32")


def check_options(options: TrainingOptions) -> TrainingOptions:
    """Refuse a choice Training Options does not offer, on that node (not later, in Train LoRA)."""
    choices = {
        "target_preset": target_presets(),
        "scheduler": ["default", *SCHEDULERS.names()],
        "checkpointing": CHECKPOINTING.names(),
        "mixed_precision": list(MIXED_PRECISION),
        "held_out_questions": HELD_OUT_QUESTIONS.names(),
        "offload": list(OFFLOAD_MODES),
        "memory": MEMORY_CHOICES,
    }
    for name, allowed in choices.items():
        value = getattr(options, name)
        if value not in allowed:
            raise DRFInputError(f"{name}: {value!r} is not one of {', '.join(allowed)}; pick one from the list")
    held_out_seeds(options)  # a malformed seed list is refused here, on Training Options
    return options


def held_out_seeds(options: TrainingOptions) -> list[int]:
    """The held-out seeds Training Options asks for; empty means the default ones."""
    text = options.held_out_seeds.strip()
    return parse_seeds(text, "held_out_seeds") if text else list(_MONITOR.seeds)


class TrainingOptionsNode(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFTrainingOptions",
        display_name="Training Options (DRF)",
        category=category("train"),
        description="Advanced settings for Train LoRA: LoRA targets, optimizer, scheduler, memory savers, batch.",
        inputs=(
            Combo(
                "target_preset",
                target_presets,
                "Which layers get a LoRA: attention only, or also the MLPs.",
                "attention",
            ),
            Float("lora_dropout", _OPTIONS.lora_dropout, 0.0, 0.9, "Dropout on the LoRA path during training."),
            Float(
                "weight_decay",
                _OPTIONS.weight_decay,
                0.0,
                1.0,
                "AdamW weight decay on the LoRA: pulls its weights toward zero, i.e. toward the base model.",
                0.001,
            ),
            Int("warmup_steps", _OPTIONS.warmup_steps, 0, 10000, "Steps of linear learning-rate warmup."),
            Float("max_grad_norm", _OPTIONS.max_grad_norm, 0.0, 100.0, "Gradient clipping norm (0: off)."),
            Combo(
                "scheduler",
                ["default", *SCHEDULERS.names()],
                "default: the model folder's own scheduler; unipc / flow_euler replace it.",
                "default",
            ),
            Float("flow_shift", 0.0, 0.0, 20.0, "Flow shift for a replaced scheduler (0: the folder's value).", 0.1),
            Combo(
                "checkpointing",
                CHECKPOINTING.names(),
                "Activation checkpointing in the gradient steps. step_block: least memory, flat in K (default).",
                _OPTIONS.checkpointing,
            ),
            Int(
                "truncated_backprop_max",
                0,
                0,
                1000,
                "0: backpropagate through exactly K steps. Otherwise K is drawn from [K, this] at every step.",
            ),
            Combo("mixed_precision", MIXED_PRECISION, "auto: bf16 autocast on a GPU, fp32 on the CPU.", "auto"),
            Int("videos_per_step", _OPTIONS.videos_per_step, 1, 64, "Videos sampled per micro-batch."),
            Int("gradient_accumulation", _OPTIONS.gradient_accumulation, 1, 256, "Micro-batches per optimizer step."),
            Int("keep_last_checkpoints", _OPTIONS.keep_last_checkpoints, 1, 100, "Older checkpoints are deleted."),
            Boolean(
                "critic_gradient_checkpointing",
                True,
                "Recompute the critic's activations in backward: much less memory, ~30% slower.",
            ),
            Boolean(
                "release_text_encoder",
                False,
                "Free the text encoder after encoding the prompts (saves ~10 GiB for Wan during training; the "
                "video model is then loaded again on its next use).",
            ),
            Combo(
                "offload",
                OFFLOAD_MODES,
                "phase: only the model the current phase needs (text encoder, video model, VAE, critic) stays on "
                "the GPU, the others wait in RAM; the peak becomes the largest phase, not the sum. Slower: models "
                "move every step.",
                _OPTIONS.offload,
            ),
            Combo(
                "memory",
                MEMORY_CHOICES,
                "A GPU size sets the memory savers for you (24GB, 16GB; 48GB+: the defaults), auto picks from "
                "the GPU's free memory; custom: the settings as given. A run that will not fit stops before step 1 "
                "and names the preset to use.",
                _OPTIONS.memory,
            ),
            Int(
                "held_out_every",
                _OPTIONS.held_out_every,
                0,
                100000,
                "Guard against reward hacking: every N steps (and before the first), sample held-out seeds (and "
                "held-out prompts) with the current LoRA and score them, without gradient. 0: off.",
            ),
            String(
                "held_out_seeds",
                _OPTIONS.held_out_seeds,
                f"Seeds of the held-out videos, e.g. 1000, 1001 (empty: {_OPTIONS.held_out_seeds}).",
            ),
            String(
                "held_out_prompts",
                "",
                "Prompts never trained on, one per line, scored with their own (rule-written) questions (empty: none).",
                multiline=True,
            ),
            Combo(
                "held_out_questions",
                HELD_OUT_QUESTIONS.names(),
                "Reworded training questions, used only for monitoring: paraphrase (fixed patterns), llm (the "
                "critic rewords them), none. A widening gap to the training questions signals reward hacking.",
                _OPTIONS.held_out_questions,
            ),
            Int(
                "early_stop_patience",
                _OPTIONS.early_stop_patience,
                0,
                10000,
                "Stop when the held-out score has not beaten its best for this many evaluations (0: never).",
            ),
            Float(
                "early_stop_min_delta",
                _OPTIONS.early_stop_min_delta,
                0.0,
                10.0,
                "A new best held-out score must beat the old one by more than this.",
                0.0001,
            ),
            Float(
                "early_stop_drop",
                _OPTIONS.early_stop_drop,
                0.0,
                100.0,
                "Stop as soon as the held-out score falls this far below its best (0: off).",
                0.001,
            ),
            Boolean(
                "keep_best",
                _OPTIONS.keep_best,
                "Return the LoRA of the best held-out evaluation instead of the last step's (with monitoring on).",
            ),
            Float(
                "drift_weight",
                _OPTIONS.drift_weight,
                0.0,
                1000.0,
                "Penalty on the difference between the LoRA model's and the base model's predictions at the "
                "gradient steps (keeps the model near the base; one more forward per gradient step). 0: off.",
                0.01,
            ),
        ),
        outputs=(OutputSpec(TRAINING_OPTIONS, "options", "Advanced settings for Train LoRA."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, **settings: object) -> NodeResult:
        return NodeResult((check_options(TrainingOptions(**settings)),))  # type: ignore[arg-type]


def build_train_config(
    prompts: list[str],
    inputs: dict,
    reward: RewardSettings,
    options: TrainingOptions,
) -> TrainConfig:
    k = inputs["truncated_backprop_steps"]
    k_range = (k, options.truncated_backprop_max) if options.truncated_backprop_max else None
    config = TrainConfig(
        prompts=prompts,
        negative_prompt=inputs["negative_prompt"],
        steps=inputs["steps"],
        videos_per_step=options.videos_per_step,
        gradient_accumulation=options.gradient_accumulation,
        seed=inputs["seed"],
        mixed_precision=options.mixed_precision,
        video=VideoSpec(height=inputs["height"], width=inputs["width"], num_frames=inputs["num_frames"]),
        sampler=SamplerConfig(
            num_inference_steps=inputs["num_inference_steps"],
            truncated_backprop_steps=k,
            truncated_backprop_range=k_range,
            guidance_scale=inputs["guidance_scale"],
            scheduler=options.scheduler,
            flow_shift=options.flow_shift or None,
            checkpointing=options.checkpointing,
        ),
        decode=reward.decode,
        critic_input=reward.critic_input,
        reward=reward.reward,
        lora=LoRAConfig(
            rank=inputs["lora_rank"],
            alpha=inputs["lora_alpha"],
            dropout=options.lora_dropout,
            target_preset=options.target_preset,
        ),
        optimizer=replace(
            _OPTIMIZER,
            learning_rate=inputs["learning_rate"],
            weight_decay=options.weight_decay,
            warmup_steps=options.warmup_steps,
            max_grad_norm=options.max_grad_norm,
        ),
        monitor=MonitorConfig(
            interval=options.held_out_every,
            seeds=held_out_seeds(options) if options.held_out_every else [],
            prompts=[line.strip() for line in options.held_out_prompts.splitlines() if line.strip()],
            held_out_questions=options.held_out_questions,
            early_stop_patience=options.early_stop_patience,
            early_stop_min_delta=options.early_stop_min_delta,
            early_stop_drop=options.early_stop_drop,
            keep_best=options.keep_best,
        ),
        regularization=RegularizationConfig(drift_weight=options.drift_weight),
        checkpoint_interval=inputs["checkpoint_interval"],
        keep_last_checkpoints=options.keep_last_checkpoints,
        critic_gradient_checkpointing=options.critic_gradient_checkpointing,
        release_text_encoder=options.release_text_encoder,
        offload=options.offload,
        memory=options.memory,
    )
    config.validate()
    return config


def run_folder(runs: Path, run_name: str, resume: bool) -> tuple[Path, str]:
    """The folder this run trains in, and a note when it is not `runs/run_name`.

    With `resume` on, a run folder holding a checkpoint is continued. Otherwise a folder that already
    holds a run is never written into: the new run goes to `run_name_2` (`_3`, ...) and the note says so.
    """
    if not run_name.strip():
        raise DRFInputError("run_name is empty; give the run a name such as wan_drf (its folder under output/drf_runs)")
    named = safe_child_path(runs, run_name.strip(), "")
    if (resume and find_checkpoint(named) is not None) or not holds_run(named):
        return named, ""
    fresh = next_free_run_dir(named)
    why = "resume is off" if not resume else "it has no checkpoint to resume from"
    return fresh, (
        f"{named.name} already holds a run and {why}: that run is kept and this one is in {fresh.name} "
        f"(to continue this one later, set run_name to {fresh.name})"
    )


def progress_text(event: ProgressEvent, last_held_out: dict | None = None) -> str:
    """What the node shows while training: the step, the reward per aspect, the drift penalty, the
    latest held-out evaluation and the questions whose answers moved most."""
    metrics = event.metrics
    lines = [f"step {event.step}/{event.total_steps}"]
    if metrics.get("skipped"):
        lines.append("step skipped (non-finite loss or gradient)")
    if "reward" in metrics:
        lines.append(f"reward {metrics['reward']:+.4f}")
    for name, value in metrics.get("reward_per_aspect", {}).items():
        lines.append(f"  {name} {value:+.4f}")
    if "drift" in metrics:
        lines.append(f"drift from the base model {metrics['drift']:.3g}")
    held_out = metrics.get("held_out") or last_held_out
    if held_out:
        lines += held_out_summary(held_out)
        lines += movers_summary(held_out.get("movers", []), "held-out answers that moved most since the start:")
    elif metrics.get("movers"):
        lines += movers_summary(metrics["movers"], "answers that moved most (first vs last training steps):")
    return "\n".join(lines)


class TrainLoRA(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFTrainLoRA",
        display_name="Train LoRA (Diffusion-DRF)",
        category=category("train"),
        description=(
            "Fine-tunes a LoRA on the video model so the frozen critic answers its questions better: samples a "
            "video, decodes a few frames with gradient, scores them with the critic's answer logits, and "
            "backpropagates through the last K denoising steps. Checkpoints go to output/drf_runs/<run_name>; "
            "Interrupt saves one, and queueing again with 'resume' on continues. With 'resume' off the new run goes "
            "to <run_name>_2 (_3, ...) and earlier runs are kept."
        ),
        inputs=(
            Socket("video_model", VIDEO_MODEL, "The video model to fine-tune (from Load Video Model)."),
            Socket("critic", CRITIC, "The frozen critic (from Load VLM Critic)."),
            Socket("questions", QUESTIONS, "The question sets; their prompts are the training prompts."),
            String("run_name", "wan_drf", "Folder under output/drf_runs for checkpoints and metrics (required)."),
            Int("steps", _TRAIN.steps, 1, 100000, "Optimizer steps in total (a resumed run continues up to it)."),
            Float("learning_rate", _OPTIMIZER.learning_rate, 1e-7, 1e-1, "AdamW learning rate.", 1e-5),
            Int("lora_rank", _LORA.rank, 1, 256, "LoRA rank: capacity (and file size) of the adapter."),
            Float("lora_alpha", _LORA.alpha, 0.1, 1024.0, "LoRA alpha; the update is scaled by alpha/rank.", 1.0),
            Int("width", _VIDEO.width, 16, 4096, "Width of the training videos (multiple of 16).", 16),
            Int("height", _VIDEO.height, 16, 4096, "Height of the training videos (multiple of 16).", 16),
            Int("num_frames", _VIDEO.num_frames, 1, 1025, "Frames per training video (Wan: 4n+1; image models: 1).", 4),
            Int("num_inference_steps", _SAMPLER.num_inference_steps, 1, 1000, "Denoising steps T per video."),
            Int(
                "truncated_backprop_steps",
                _SAMPLER.truncated_backprop_steps,
                1,
                1000,
                "K: the last K denoising steps carry gradient (1 is robust; more costs time, not memory).",
            ),
            Float(
                "guidance_scale", _SAMPLER.guidance_scale, 0.0, 30.0, "Classifier-free guidance while sampling.", 0.1
            ),
            String("negative_prompt", "", "Negative prompt while sampling (empty: none).", multiline=True),
            Int(
                "seed",
                0,
                0,
                MAX_SEED,
                "Seed of the run (noise, LoRA init). Keep it fixed to resume.",
                control_after_generate=True,
            ),
            Int(
                "checkpoint_interval",
                _TRAIN.checkpoint_interval,
                0,
                100000,
                "Save a checkpoint every N steps (0: at the end).",
            ),
            Boolean(
                "resume",
                True,
                "Continue the newest checkpoint in the run folder when there is one. Off: a new run starts in a new "
                "folder (<run_name>_2, ...); an earlier run is never overwritten.",
            ),
            Socket("reward", REWARD, "Reward settings (defaults when not connected).", optional=True),
            Socket("options", TRAINING_OPTIONS, "Training Options (defaults when not connected).", optional=True),
            Socket("initial_lora", LORA, "Start a new run from this LoRA instead of a fresh one.", optional=True),
        ),
        outputs=(
            OutputSpec(LORA, "lora", "The trained LoRA: connect Save LoRA, or Sample Video to preview it."),
            OutputSpec("IMAGE", "reward_curve", "The reward per step, total and per aspect."),
            OutputSpec("IMAGE", "last_preview", "Frames of the last video scored (empty if no step ran now)."),
            OutputSpec(METRICS, "metrics", "Every step's metrics, for Reward Curves."),
        ),
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        video_model,
        critic,
        questions,
        run_name: str,
        resume: bool,
        reward: RewardSettings | None = None,
        options: TrainingOptions | None = None,
        initial_lora: TrainedLoRAWire | None = None,
        **settings,
    ) -> NodeResult:
        config = build_train_config(
            [qs.prompt for qs in questions], settings, reward or RewardSettings(), options or _OPTIONS
        )
        run_dir, moved = run_folder(ctx.folders.output_dir() / RUNS_FOLDER, run_name, resume)
        backend = video_model.get()
        backend.num_frames_out(config.video)  # sizes the model cannot make are refused before the critic loads
        vlm = critic.get()
        if initial_lora is not None and initial_lora.family != backend.family:
            raise DRFInputError(
                f"initial_lora is for {initial_lora.family} models but the video model is {backend.family}; "
                "load a LoRA trained on this model family"
            )

        held_out: dict = {}

        def on_progress(event: ProgressEvent) -> None:
            frame = to_pil(event.preview[event.preview.shape[0] // 2 :][:1])[0] if event.preview is not None else None
            ctx.progress(event.step, event.total_steps, frame)
            held_out.update(event.metrics.get("held_out") or {})
            ctx.show_text(progress_text(event, held_out))

        ctx.progress(0, config.steps)
        try:
            trained = api.train_lora(
                backend,
                DRFReward(vlm, config.reward, config.critic_input),
                list(questions),
                config,
                run_dir,
                progress=on_progress,
                should_stop=ctx.interrupted,
                resume=resume,
                initial_lora=initial_lora.weights if initial_lora is not None else None,
            )
        finally:
            if config.release_text_encoder:  # a model without its text encoder cannot serve new prompts: reload later
                video_model.release()
        run = trained.run
        if run.interrupted:
            logger.warning("training interrupted at step %d; checkpoint %s", run.final_step, run.checkpoint)
            ctx.raise_if_interrupted()
        preview = run.last_preview
        frames = (
            comfy_image(preview) if preview is not None else torch.zeros(1, config.video.height, config.video.width, 3)
        )
        curve = comfy_image(from_pil([plot_reward_curves(run.metrics)]))
        wire = TrainedLoRAWire(trained.lora, trained.family, f"run {run_dir.name} step {run.final_step}")
        summary = f"finished {run.final_step}/{config.steps} steps in {run_dir}\ncheckpoint: {run.checkpoint}"
        if moved:
            summary = f"{moved}\n{summary}"
        if run.stop_reason:
            summary += f"\n{run.stop_reason}"
        if trained.selected_step is not None and trained.selected_step != run.final_step:
            summary += (
                f"\nthe LoRA returned is step {trained.selected_step}'s (best held-out score {run.best_score:+.4f}), "
                f"not the last step's"
            )
        if run.metrics:
            evaluations = [row["held_out"] for row in run.metrics if "held_out" in row]
            last = ProgressEvent(run.final_step, config.steps, run.metrics[-1])
            summary += "\n" + progress_text(last, evaluations[-1] if evaluations else None)
        previews = [Preview(curve)] + ([Preview(frames, animated=True)] if preview is not None else [])
        return NodeResult((wire, curve, frames, list(run.metrics)), previews=previews, text=summary)

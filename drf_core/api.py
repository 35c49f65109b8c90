"""One function per user action: what the command line and each ComfyUI node call.

- `train_lora`: a fresh (or resumed) Diffusion-DRF run on a loaded video model and a reward; returns
  the trained LoRA as a CPU snapshot and leaves the video model as it found it (no adapter), so a
  model kept loaded between runs (ComfyUI) always starts from the base.
- `sample_videos`: videos for prompts, optionally with a LoRA at some strength (same seed, same noise).
- `critique`: reward, per-aspect and per-question scores, the critic's own explanations, a chart
  and gradient heatmaps for frames; `critique_sample` for a whole sample, of which it scores what
  training scores (`scoring.ScoredFrames`: the selected frames of a video, or one frame as a still
  image without questions about motion).
- `export_lora` / `load_lora`: LoRA files between formats, without loading a model.

The reward is given (a `RewardFunction`, e.g. `DRFReward` on a critic), and the LoRA life cycle is
the backend's, so any backend and any reward plug in. Knows the engine's pieces; never ComfyUI
(progress and interrupts arrive as callbacks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import __version__
from .config import CriticInputConfig, DecodeConfig, SamplerConfig, TrainConfig, VideoSpec
from .critics.base import Critic
from .distributed import SingleProcess
from .errors import DRFInputError
from .heatmap import reward_heatmaps
from .lora import LoRAWeights, read_lora_file, read_lora_header, save_lora_weights
from .media import check_frames
from .memory_presets import MEMORY_PRESETS, apply_train_preset, check_memory, identify_models, resolve_memory_preset
from .models import MODULE_NAME_MAPS
from .models.base import VideoBackend
from .plots import plot_question_scores, plot_reward_curves
from .questions import QuestionSet
from .reward import LOW_ANSWER_MASS, RewardFunction, RewardResult, answer_mass_note, reward_summary
from .sampler import sample_video
from .scoring import ScoredFrames
from .trainer import ADAPTER_NAME, ProgressEvent, Trainer, TrainResult

logger = logging.getLogger(__name__)

PREVIEW_ADAPTER = "drf_preview"


@dataclass
class TrainedLoRA:
    """A finished (or interrupted) run: the LoRA, its metrics and where its checkpoints are."""

    lora: LoRAWeights
    run: TrainResult
    family: str
    # The step whose LoRA `lora` is: the last step, or the best held-out evaluation's (`monitor.keep_best`).
    selected_step: int | None = None

    def reward_curve(self) -> Image.Image:
        return plot_reward_curves(self.run.metrics)


def lora_metadata(backend: VideoBackend, config: TrainConfig, questions: Sequence[QuestionSet], steps: int) -> dict:
    """What a LoRA file's header says about how it was made (all JSON-able)."""
    described = backend.describe()
    return {
        "base_model": described.get("source", ""),
        "family": backend.family,
        "trainer": "Diffusion-DRF",
        "training_steps": steps,
        "rank": config.lora.rank,
        "alpha": config.lora.alpha,
        "target_preset": config.lora.target_preset,
        "prompts": list(config.prompts),
        "questions": [qs.to_dict() for qs in questions],
        "reward": config.reward.to_dict(),
        "sampler": config.sampler.to_dict(),
        "drf_version": __version__,
    }


def fit_memory(config: TrainConfig, backend: VideoBackend, reward: RewardFunction) -> TrainConfig:
    """`config` with its memory preset applied ("auto" resolved), refused before step 1 when the traced
    estimate for it exceeds the free memory of a CUDA device (`memory_presets`)."""
    video, critic = identify_models(backend, reward)
    name = resolve_memory_preset(config.memory, backend.device, video, critic)
    config = apply_train_preset(config, name)
    if name != "custom":
        logger.info("memory preset %s: %s", name, MEMORY_PRESETS.get(name).description)
    check_memory(config, backend.device, video, critic)
    return config


def warn_on_frame_rate(backend: VideoBackend, critic_input: CriticInputConfig) -> None:
    """The critic is told `critic_input.video_fps` over the frames' spacing; a rate other than the model's
    (e.g. the default 16 with Wan 2.2 TI2V-5B's 24 fps videos) is warned about with the fix."""
    if backend.frame_rate is None or critic_input.fps > 0 or critic_input.video_fps == backend.frame_rate:
        return
    logger.warning(
        "the critic is told the videos run at %g fps (video_fps) but this video model makes %g fps videos; set "
        "video_fps to %g (Reward Settings; critic_input.video_fps in a run config) so the critic sees their true speed",
        critic_input.video_fps,
        backend.frame_rate,
        backend.frame_rate,
    )


def train_lora(
    backend: VideoBackend,
    reward: RewardFunction,
    question_sets: Sequence[QuestionSet],
    config: TrainConfig,
    output_dir: str | Path,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    initial_lora: LoRAWeights | None = None,
    held_out_question_sets: Sequence[QuestionSet] = (),
    parallel: SingleProcess | None = None,
) -> TrainedLoRA:
    """Train a LoRA; with `resume`, continue the newest checkpoint in `output_dir` if there is one.

    The run's prompts are `config.prompts`; each needs its `QuestionSet` in `question_sets`
    (`held_out_question_sets`: optional sets for `config.monitor.prompts`). With held-out monitoring
    and `config.monitor.keep_best`, the returned LoRA is the best held-out evaluation's.
    `initial_lora` starts a new run from a saved LoRA's weights instead of a fresh adapter (a
    checkpoint in `output_dir`, when resumed, still wins: it holds the run's later state). `parallel`: this
    process's `distributed` group in a data-parallel launch (default: one process).
    """
    config = fit_memory(config, backend, reward)
    warn_on_frame_rate(backend, config.critic_input)
    backend.remove_lora(ADAPTER_NAME)
    trainer = Trainer(
        backend,
        reward,
        question_sets,
        config,
        output_dir,
        progress=progress,
        should_stop=should_stop,
        initial_lora=initial_lora,
        held_out_question_sets=held_out_question_sets,
        parallel=parallel,
    )
    try:
        run = trainer.train(resume_from=output_dir if resume else None)
        best = trainer.select_best()
        selected = run.final_step if best is None else best
        metadata = lora_metadata(backend, config, question_sets, selected)
        if best is not None:
            metadata["selected_by"] = f"best held-out score {run.best_score:+.4f} of {run.final_step} steps"
        lora = backend.snapshot_lora(ADAPTER_NAME, metadata)
    finally:
        backend.remove_lora(ADAPTER_NAME)
    return TrainedLoRA(lora=lora, run=run, family=backend.family, selected_step=selected)


def save_trained_lora(
    lora: LoRAWeights, path: str | Path, family: str, fmt: str = "comfyui", dtype: str = "fp32"
) -> Path:
    """Write a LoRA in a `LORA_FORMATS` format; ComfyUI names come from the family's name map."""
    names = MODULE_NAME_MAPS.get(family)
    dropout = json.loads(lora.metadata.get("dropout", "0") or "0")
    return save_lora_weights(path, lora, fmt, names.to_native, {"family": family}, dropout=dropout, dtype=dtype)


def load_lora(path: str | Path, family: str) -> LoRAWeights:
    """Read a LoRA file of any supported layout into the family's denoiser names.

    Every layer must be one a model of `family` has (checked through the family's name map), so a LoRA
    made for another model is refused here, not when it is applied.
    """
    names = MODULE_NAME_MAPS.get(family)
    lora = read_lora_file(path, names.from_native, family=family)
    for module in lora.modules:
        try:
            names.to_native(module)
        except DRFInputError as error:
            raise DRFInputError(
                f"{path} names layer {module!r}, which a {family} model does not have ({error}); the LoRA was made "
                f"for another model family: use it with that model's own LoRA loader"
            ) from None
    return lora


def export_lora(source: str | Path, target: str | Path, fmt: str, family: str | None = None) -> Path:
    """Convert a LoRA file to another format (`family` defaults to the file header's)."""
    family = family or read_lora_header(source).get("family")
    if not family:
        raise DRFInputError(
            f"{source} does not say which model family it is for; pass the family (one of {MODULE_NAME_MAPS.names()})"
        )
    lora = load_lora(source, family)
    return save_trained_lora(lora, target, family, fmt)


def sample_videos(
    backend: VideoBackend,
    prompts: Sequence[str],
    spec: VideoSpec,
    sampler: SamplerConfig,
    seed: int,
    negative_prompt: str = "",
    lora: LoRAWeights | None = None,
    strength: float = 1.0,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """`[B, F, 3, H, W]` videos in 0..1; with `lora`, the same noise as without (same seed)."""
    if not prompts or not all(p.strip() for p in prompts):
        raise DRFInputError("the prompt is empty; write what the video should show")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if lora is not None:
        backend.apply_lora(lora, PREVIEW_ADAPTER, strength=strength)
    try:
        return sample_video(
            backend, list(prompts), negative_prompt, spec, sampler, generator, on_step=on_step, should_stop=should_stop
        )
    finally:
        if lora is not None:
            backend.remove_lora(PREVIEW_ADAPTER)


@dataclass
class Critique:
    """A critic's verdict on one video, for people."""

    result: RewardResult
    explanations: list[dict[str, str]] = field(default_factory=list)
    heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)
    # The frames scored `[F, 3, H, W]` (detached, float32).
    frames: torch.Tensor | None = None
    # The critic saw them as one still image (`scoring.ScoredFrames`).
    still_image: bool = False

    @property
    def total(self) -> float:
        return float(self.result.total.detach())

    def chart(self) -> Image.Image:
        return plot_question_scores(self.result)

    def report(self) -> str:
        """Markdown: the summary, every question's score, and the critic's free-text answers."""
        lines = ["# Critique", "", "```", reward_summary(self.result), "```", ""]
        if self.still_image:
            lines += [
                "One frame: the critic saw it as a still image, and questions about motion or time were left out.",
                "",
            ]
        if any(q.answer_mass is not None for q in self.result.per_question):
            lines += [
                "Yes/No mass: the share of the critic's probability on the words Yes and No when asked a yes/no "
                f"question; below {LOW_ANSWER_MASS} it wanted to say something else, and its answer means little.",
                "",
            ]
        for aspect in dict.fromkeys(q.aspect for q in self.result.per_question):
            lines += [f"## {aspect}: {self.result.per_aspect.get(aspect, float('nan')):+.4f}", ""]
            for q in self.result.per_question:
                if q.aspect != aspect:
                    continue
                if q.kind == "yes_no":
                    verdict = "ok" if (q.probability or 0) >= 0.5 else "FAILS"
                    lines.append(
                        f"- {q.question} expected {q.expected}: p={q.probability:.3f} ({verdict}), score {q.value:+.4f}"
                        + answer_mass_note(q)
                    )
                else:
                    lines.append(f'- {q.question} target "{q.target}": weighted log-likelihood {q.value:+.4f}')
            answers = [e for e in self.explanations if e["aspect"] == aspect]
            if answers:
                lines += ["", "  The critic says:"]
                lines += [f'  - {e["question"]} -> "{e["answer"]}"' for e in answers]
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "per_aspect": self.result.per_aspect,
            "per_question": [q.to_dict() for q in self.result.per_question],
            "explanations": self.explanations,
            "still_image": self.still_image,
        }


def critique(
    reward: RewardFunction,
    frames: torch.Tensor,
    questions: QuestionSet,
    explain_with: Critic | None = None,
    critic_input: CriticInputConfig | None = None,
    heatmaps: bool = False,
    max_new_tokens: int = 64,
) -> Critique:
    """Score `frames` `[F, 3, H, W]` against `questions` with `reward`; optionally map the gradients.

    With `explain_with`, that critic also answers each explanation query in its own words
    (seeing the frames as `critic_input` says).
    """
    check_frames(frames)
    critic_input = critic_input or CriticInputConfig()
    frames = frames.detach().float()
    with torch.no_grad():
        result = reward(frames, questions)
    explanations = []
    if explain_with is not None:
        for aspect, query in questions.iter_explanations():
            answer = explain_with.generate(frames, query.question, critic_input, max_new_tokens=max_new_tokens)
            explanations.append({"aspect": aspect.name, "question": query.question, "answer": answer.strip()})
    maps = reward_heatmaps(reward, frames, questions) if heatmaps else {}
    return Critique(result=result, explanations=explanations, heatmaps=maps, frames=frames)


def critique_sample(
    reward: RewardFunction,
    frames: torch.Tensor,
    questions: QuestionSet,
    decode: DecodeConfig,
    critic_input: CriticInputConfig,
    explain_with: Critic | None = None,
    heatmaps: bool = False,
    max_new_tokens: int = 64,
) -> Critique:
    """`critique` of what training scores of a whole sample `frames` `[F, 3, H, W]` (`scoring.ScoredFrames`):
    a video's frames at `decode`'s frame selection, told their true rate; one frame as a still image,
    asked `questions` without those about motion or time. `reward` and `critic_input` are for the
    whole clip (this function adapts both, as the trainer does)."""
    check_frames(frames)
    scored = ScoredFrames.of(frames.shape[0], decode)
    verdict = critique(
        scored.reward(reward),
        scored.pick(frames),
        scored.questions(questions),
        explain_with=explain_with,
        critic_input=scored.critic_input(critic_input),
        heatmaps=heatmaps,
        max_new_tokens=max_new_tokens,
    )
    verdict.still_image = scored.still_image
    return verdict

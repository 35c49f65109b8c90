"""Watching a run for reward hacking: held-out scores, early stop, the best LoRA, question movers.

`Monitor.evaluate(step)` samples, without gradient and with the current LoRA, every training prompt
(and every held-out prompt) from fixed held-out seeds, decodes the frames training scores, and lets
the critic score them with
- the training questions -> `reward` (held-out seeds; comparable to the training reward),
- the held-out questions (`heldout.py`: reworded, never used for gradients) -> `questions_reward`,
  and `question_gap = reward - questions_reward`; `gap_growth` is how much that gap widened since
  the evaluation before training: a LoRA that learns the training questions' words rather than
  their content widens it (the hacking signal),
- the held-out prompts' own questions (given, or written by the rule decomposer) -> `prompts_reward`.
`score`, the number early stop and the best LoRA go by, is the mean over all held-out videos of
the reward under questions never used for gradients when there are any (held-out questions,
held-out prompts), else under the training questions.

`Monitor.record` keeps the best score (and a CPU copy of the LoRA parameters of that step), counts
evaluations without improvement and sets `stop_reason` for early stop. Everything it decides is
also written into the evaluation (`best_step`, `best_score`, `evaluations_since_best`,
`stop_reason`), so `restore(rows)` rebuilds the state from `metrics.jsonl` on resume (the best
parameters come back from the checkpoint).

An image model's samples (one frame) are still images (`scoring.ScoredFrames`): the held-out
questions and the held-out prompts' own questions then leave out motion and time and speak of an
image, as the training questions do (the paraphrase patterns say "video").

`question_movers` lists the yes/no questions whose p(expected answer) moved most since the start.

Knows the `VideoBackend` and `RewardFunction` interfaces; nothing about optimizers or ComfyUI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .config import MonitorConfig, TrainConfig
from .decompose import decompose
from .heldout import held_out_questions
from .models.base import VideoBackend
from .questions import QuestionSet
from .reward import RewardFunction, RewardResult
from .sampler import sample_video
from .scoring import ScoredFrames

logger = logging.getLogger(__name__)

# Training-step movers compare the mean of the first and of the last this-many steps (noise differs per step).
MOVER_WINDOW = 5


def answer_key(result_question: Any, prompt_index: int | None) -> str:
    """`"[TA] Are there apples?"`, prefixed by `"#2 "` when a run has several prompts."""
    prefix = f"#{prompt_index + 1} " if prompt_index is not None else ""
    return f"{prefix}[{result_question.aspect}] {result_question.question}"


def yes_no_answers(result: RewardResult, prompt_index: int | None = None) -> dict[str, float]:
    """p(expected answer) of every yes/no question of one scored video, by `answer_key`."""
    return {answer_key(q, prompt_index): q.probability for q in result.per_question if q.probability is not None}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_answers(answer_rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(key for row in answer_rows for key in row)
    return {key: _mean([row[key] for row in answer_rows if key in row]) for key in keys}


def question_movers(start: Mapping[str, float], now: Mapping[str, float], count: int) -> list[dict[str, float | str]]:
    """The `count` questions whose p(expected) changed most from `start` to `now`, largest change first."""
    changes = [(key, now[key] - start[key]) for key in now if key in start]
    changes.sort(key=lambda item: (-abs(item[1]), item[0]))
    return [
        {"question": key, "start": start[key], "now": now[key], "change": change} for key, change in changes[:count]
    ]


def training_movers(rows: Sequence[Mapping[str, Any]], count: int, window: int = MOVER_WINDOW) -> list[dict]:
    """Movers of the training steps: mean answers of the first `window` steps against the last `window`."""
    answered = [row["answers"] for row in rows if row.get("answers") and not row.get("skipped")]
    if count <= 0 or len(answered) < 2:
        return []
    size = max(1, min(window, len(answered) // 2))
    return question_movers(mean_answers(answered[:size]), mean_answers(answered[-size:]), count)


class Monitor:
    """Held-out evaluation and early-stop bookkeeping for one `Trainer` (see the module docstring)."""

    def __init__(
        self,
        backend: VideoBackend,
        reward: RewardFunction,
        config: TrainConfig,
        training_sets: Mapping[str, QuestionSet],
        held_out_prompt_sets: Sequence[QuestionSet],
        scored: ScoredFrames,
    ) -> None:
        """`reward` is already the one for `scored` (the trainer's), which says what of a sample is scored."""
        self.backend = backend
        self.config = config
        self.settings: MonitorConfig = config.monitor
        self.training_sets = dict(training_sets)
        given = {qs.prompt: qs for qs in held_out_prompt_sets}
        self.prompt_sets = {
            p: scored.questions(given.get(p) or decompose(p, method="rules")) for p in self.settings.prompts
        }
        self.frame_indices = list(scored.frame_indices)
        self.reward = reward
        method = self.settings.held_out_questions
        chat = reward.chat_model if method == "llm" else None

        def held_out(question_set: QuestionSet) -> QuestionSet | None:
            reworded = held_out_questions(question_set, method, chat)
            return None if reworded is None else scored.questions(reworded)

        self.question_sets = {p: held_out(qs) for p, qs in self.training_sets.items()}
        self.best_step: int | None = None
        self.best_score = float("-inf")
        self.best_parameters: dict[str, torch.Tensor] | None = None
        self.evaluations_since_best = 0
        self.stop_reason: str | None = None
        self.start: dict[str, Any] | None = None
        self.should_stop: Callable[[], bool] | None = None

    # --- evaluation ------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        interval = self.settings.interval
        return bool(interval) and step % interval == 0

    def _video(self, prompt: str, seed: int) -> torch.Tensor:
        c = self.config
        generator = torch.Generator(device="cpu").manual_seed(seed)
        video = sample_video(
            self.backend,
            [prompt],
            c.negative_prompt,
            c.video,
            c.sampler,
            generator,
            frame_indices=self.frame_indices,
            should_stop=self.should_stop,
        )
        return video[0].float()

    def evaluate(self, step: int, autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict:
        """Score the held-out videos of the current model (no gradient, dropout off); see the module docstring.

        Raises `sampler.SamplingInterrupted` when `self.should_stop()` turns true while sampling."""
        denoiser = self.backend.denoiser
        was_training = denoiser.training
        denoiser.eval()
        several = len(self.training_sets) > 1
        train_totals, question_totals, prompt_totals = [], [], []
        aspects: dict[str, list[float]] = {}
        answers: list[dict[str, float]] = []
        try:
            with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                for index, (prompt, questions) in enumerate(self.training_sets.items()):
                    for seed in self.settings.seeds:
                        frames = self._video(prompt, seed)
                        result = self.reward(frames, questions)
                        train_totals.append(float(result.total))
                        for name, value in result.per_aspect.items():
                            aspects.setdefault(name, []).append(value)
                        answers.append(yes_no_answers(result, index if several else None))
                        if self.question_sets[prompt] is not None:
                            question_totals.append(float(self.reward(frames, self.question_sets[prompt]).total))
                for prompt, questions in self.prompt_sets.items():
                    for seed in self.settings.seeds:
                        prompt_totals.append(float(self.reward(self._video(prompt, seed), questions).total))
        finally:
            denoiser.train(was_training)
        evaluation: dict[str, Any] = {
            "reward": _mean(train_totals),
            "reward_per_aspect": {name: _mean(values) for name, values in aspects.items()},
        }
        unseen = question_totals + prompt_totals
        evaluation["score"] = _mean(unseen) if unseen else evaluation["reward"]
        if question_totals:
            evaluation["questions_reward"] = _mean(question_totals)
            evaluation["question_gap"] = evaluation["reward"] - evaluation["questions_reward"]
            if self.start is not None and "question_gap" in self.start:
                evaluation["gap_growth"] = evaluation["question_gap"] - self.start["question_gap"]
        if prompt_totals:
            evaluation["prompts_reward"] = _mean(prompt_totals)
        evaluation["answers"] = mean_answers(answers)
        if self.start is not None and self.settings.movers:
            evaluation["movers"] = question_movers(self.start["answers"], evaluation["answers"], self.settings.movers)
        return evaluation

    # --- bookkeeping -----------------------------------------------------------------------------

    def record(self, step: int, evaluation: dict, parameters: Mapping[str, torch.Tensor]) -> None:
        """Update best / patience / stop reason from `evaluation` (and write them into it)."""
        s = self.settings
        if self.start is None:
            self.start = evaluation
        score = evaluation["score"]
        if self.best_step is None or score > self.best_score + s.early_stop_min_delta:
            self.best_step, self.best_score = step, score
            self.best_parameters = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in parameters.items()}
            self.evaluations_since_best = 0
        else:
            self.evaluations_since_best += 1
        if s.early_stop_patience and self.evaluations_since_best >= s.early_stop_patience:
            self.stop_reason = (
                f"early stop at step {step}: the held-out score has not beaten its best "
                f"({self.best_score:+.4f} at step {self.best_step}) for {self.evaluations_since_best} evaluations"
            )
        elif s.early_stop_drop and score < self.best_score - s.early_stop_drop:
            self.stop_reason = (
                f"early stop at step {step}: the held-out score {score:+.4f} fell more than {s.early_stop_drop:g} "
                f"below its best ({self.best_score:+.4f} at step {self.best_step})"
            )
        evaluation.update(
            best_step=self.best_step,
            best_score=self.best_score,
            evaluations_since_best=self.evaluations_since_best,
        )
        if self.stop_reason:
            evaluation["stop_reason"] = self.stop_reason
            logger.warning("%s", self.stop_reason)

    def restore(self, rows: Sequence[Mapping[str, Any]], best_parameters: Mapping[str, torch.Tensor] | None) -> None:
        """The state after the evaluations in `rows` (a resumed run's metrics); best parameters from its checkpoint."""
        evaluations = [row["held_out"] for row in rows if "held_out" in row]
        if not evaluations:
            return
        self.start = evaluations[0]
        last = evaluations[-1]
        self.best_step, self.best_score = last["best_step"], last["best_score"]
        self.evaluations_since_best = last["evaluations_since_best"]
        self.stop_reason = last.get("stop_reason")
        if best_parameters is None:
            logger.warning(
                "the checkpoint holds no best LoRA (step %s); the next evaluation starts a new best", self.best_step
            )
            self.best_step, self.best_score = None, float("-inf")
        else:
            self.best_parameters = {n: t.to("cpu", torch.float32, copy=True) for n, t in best_parameters.items()}


def held_out_summary(evaluation: Mapping[str, Any]) -> list[str]:
    """Readable lines for a node's text or a log: held-out reward, gap, best, movers."""
    lines = [f"held-out reward {evaluation['reward']:+.4f} (score {evaluation['score']:+.4f})"]
    if "questions_reward" in evaluation:
        growth = f", widened by {evaluation['gap_growth']:+.4f} since the start" if "gap_growth" in evaluation else ""
        gap = evaluation["question_gap"]
        lines.append(f"  held-out questions {evaluation['questions_reward']:+.4f} (gap {gap:+.4f}{growth})")
    if "prompts_reward" in evaluation:
        lines.append(f"  held-out prompts {evaluation['prompts_reward']:+.4f}")
    if evaluation.get("best_step") is not None:
        lines.append(f"  best score {evaluation['best_score']:+.4f} at step {evaluation['best_step']}")
    return lines


def movers_summary(movers: Sequence[Mapping[str, Any]], title: str) -> list[str]:
    if not movers:
        return []
    lines = [title]
    lines += [f"  {m['change']:+.3f} ({m['start']:.2f} -> {m['now']:.2f}) {m['question']}" for m in movers]
    return lines

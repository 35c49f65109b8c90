"""Is a LoRA worth keeping? The base model against the LoRA on prompts x seeds, with intervals.

`evaluate_lora` samples every prompt of the given question sets from every seed twice, without
and with the LoRA, from the same noise (one generator seeded per video), and lets the critic score
what training scores of both samples (`scoring.ScoredFrames`: the frames the config selects of a
video; an image model's one frame as a still image, its questions about motion or time left out)
with every question of the prompt. The
unit of evidence is a (prompt, seed) pair; `Evaluation` then holds, per aspect and in total, the
base mean, the LoRA mean and their paired difference, each with a confidence interval over the
pairs (`INTERVALS`: Student t, or a seeded percentile bootstrap); the win rate (LoRA total above
base total; ties count one half and are reported); and every question's change (p(expected
answer) for yes/no questions, weighted log-likelihood for explanation queries), from which the
most improved and most regressed yes/no questions are listed. `report()` is Markdown,
`chart()` a PNG-ready image, `to_dict()` JSON.

Knows the engine's sampling, LoRA and reward functions; nothing about training or ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from .api import sample_videos, warn_on_frame_rate
from .config import EvaluateConfig
from .critics.base import Critic
from .errors import DRFInputError
from .lora import LoRAWeights
from .models.base import VideoBackend
from .plots import _to_image
from .questions import QuestionSet
from .registry import Registry
from .reward import DRFReward, RewardResult
from .scoring import ScoredFrames


def parse_seeds(text: str, what: str = "seeds") -> list[int]:
    """`"0, 1, 2"` (commas, spaces or new lines) -> `[0, 1, 2]`; a clear error otherwise."""
    items = [item for item in text.replace("\n", ",").replace(" ", ",").split(",") if item.strip()]
    try:
        seeds = [int(item) for item in items]
    except ValueError:
        raise DRFInputError(f"{what}: {text!r} is not a list of whole numbers; write e.g. 0, 1, 2, 3") from None
    if not seeds:
        raise DRFInputError(f"{what}: give at least one seed, e.g. 0, 1, 2, 3")
    return seeds


# --- confidence intervals -----------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, dof: int) -> float:
    tail = 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(probability: float, dof: int) -> float:
    """The t value below which `probability` of Student's t with `dof` degrees of freedom lies."""
    if not 0 < probability < 1 or dof < 1:
        raise DRFInputError(f"t quantile needs 0 < p < 1 and dof >= 1, got p={probability}, dof={dof}")
    low, high = -1e6, 1e6
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, dof) < probability:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


Interval = Callable[[Sequence[float], EvaluateConfig], tuple[float, float]]
INTERVALS: Registry[Interval] = Registry("confidence interval")


@INTERVALS.register("t")
def t_interval(values: Sequence[float], config: EvaluateConfig) -> tuple[float, float]:
    """mean -+ t_{(1+c)/2, n-1} * s / sqrt(n), s the sample standard deviation (nan for one value)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return float("nan"), float("nan")
    half = student_t_quantile((1 + config.confidence) / 2, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


@INTERVALS.register("bootstrap")
def bootstrap_interval(values: Sequence[float], config: EvaluateConfig) -> tuple[float, float]:
    """Percentile bootstrap of the mean: `bootstrap_samples` resamples of the pairs (numpy seed 0)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return float("nan"), float("nan")
    rows = np.random.default_rng(0).integers(0, len(data), size=(config.bootstrap_samples, len(data)))
    means = data[rows].mean(axis=1)
    alpha = 1 - config.confidence
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


# --- results ------------------------------------------------------------------------------------


@dataclass
class PairScores:
    """One prompt and seed: the base video's and the LoRA video's scores."""

    prompt: str
    seed: int
    base: RewardResult
    lora: RewardResult

    @property
    def change(self) -> float:
        return float(self.lora.total) - float(self.base.total)


@dataclass
class MeanWithInterval:
    mean: float
    low: float
    high: float

    def text(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.4f}"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


@dataclass
class AspectComparison:
    name: str
    base: MeanWithInterval
    lora: MeanWithInterval
    change: MeanWithInterval

    @property
    def verdict(self) -> str:
        if math.isnan(self.change.low):
            return "one pair: no interval"
        if self.change.low > 0:
            return "LoRA better"
        if self.change.high < 0:
            return "LoRA worse"
        return "no clear difference"


@dataclass
class QuestionChange:
    prompt: str
    aspect: str
    kind: str
    question: str
    base: float  # mean p(expected) for yes/no, mean weighted log-likelihood for explanations
    lora: float

    @property
    def change(self) -> float:
        return self.lora - self.base


@dataclass
class Evaluation:
    config: EvaluateConfig
    pairs: list[PairScores]
    aspects: list[AspectComparison] = field(default_factory=list)
    questions: list[QuestionChange] = field(default_factory=list)
    # The samples were one image each: scored as still images, without questions about motion or time.
    still_image: bool = False

    @property
    def wins(self) -> int:
        return sum(pair.change > 0 for pair in self.pairs)

    @property
    def ties(self) -> int:
        return sum(pair.change == 0 for pair in self.pairs)

    @property
    def losses(self) -> int:
        return sum(pair.change < 0 for pair in self.pairs)

    @property
    def win_rate(self) -> float:
        """Share of pairs where the LoRA video scores higher; a tie counts one half."""
        return (self.wins + 0.5 * self.ties) / len(self.pairs)

    def _yes_no_changes(self) -> list[QuestionChange]:
        return [q for q in self.questions if q.kind == "yes_no"]

    def improved(self) -> list[QuestionChange]:
        ranked = sorted((q for q in self._yes_no_changes() if q.change > 0), key=lambda q: -q.change)
        return ranked[: self.config.top_questions]

    def regressed(self) -> list[QuestionChange]:
        ranked = sorted((q for q in self._yes_no_changes() if q.change < 0), key=lambda q: q.change)
        return ranked[: self.config.top_questions]

    def summary(self) -> str:
        total = next(a for a in self.aspects if a.name == "total")
        return (
            f"{len(self.pairs)} pairs: LoRA - base total {total.change.text()} ({total.verdict}); "
            f"win rate {self.win_rate:.2f} ({self.wins} wins, {self.ties} ties, {self.losses} losses)"
        )

    def _frames_text(self) -> str:
        if self.still_image:
            return "one image (scored as a still image; questions about motion or time left out)"
        return f"{self.config.video.num_frames} frames"

    def report(self) -> str:
        c = self.config
        level = f"{100 * c.confidence:g}%"
        method = (
            "Student t interval over the prompt x seed pairs"
            if c.interval == "t"
            else f"percentile bootstrap over the prompt x seed pairs ({c.bootstrap_samples} resamples, seed 0)"
        )
        prompts = list(dict.fromkeys(p.prompt for p in self.pairs))
        lines = [
            "# Evaluate LoRA: base vs LoRA",
            "",
            f"{len(prompts)} prompt(s) x {len(c.seeds)} seed(s) {list(c.seeds)} = {len(self.pairs)} pairs; the "
            f"same noise for the base model and the LoRA (strength {c.strength:g}); "
            f"{c.video.width}x{c.video.height}, {self._frames_text()}, {c.sampler.num_inference_steps} steps, "
            f"guidance {c.sampler.guidance_scale:g}.",
            f"Intervals: {level} {method}. Reward: yes/no `{c.reward.yes_no}`, higher is better.",
            "",
            f"**{self.summary()}**",
            "",
            f"| aspect | base [{level}] | LoRA [{level}] | LoRA - base [{level}] | verdict |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {a.name} | {a.base.text()} | {a.lora.text()} | {a.change.text()} | {a.verdict} |" for a in self.aspects
        ]
        for title, chosen in (("Most improved questions", self.improved()), ("Most regressed", self.regressed())):
            lines += ["", f"## {title} (p of the expected answer, mean over seeds)", ""]
            if not chosen:
                lines.append("none")
            lines += [f"- {q.change:+.3f} ({q.base:.3f} -> {q.lora:.3f}) [{q.aspect}] {q.question}" for q in chosen]
        lines += [
            "",
            "## Per prompt and seed",
            "",
            "| prompt | seed | base | LoRA | LoRA - base |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {p.prompt[:60]} | {p.seed} | {float(p.base.total):+.4f} | {float(p.lora.total):+.4f} | "
            f"{p.change:+.4f} |"
            for p in self.pairs
        ]
        lines += [
            "",
            "## Every question",
            "",
            "| prompt | aspect | question | base | LoRA | change |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {q.prompt[:40]} | {q.aspect} | {q.question} ({'p' if q.kind == 'yes_no' else 'log-lik.'}) | "
            f"{q.base:.4f} | {q.lora:.4f} | {q.change:+.4f} |"
            for q in self.questions
        ]
        return "\n".join(lines) + "\n"

    def chart(self) -> Image.Image:
        """Per-aspect means with intervals (base, LoRA), and the most improved / regressed questions."""
        figure = Figure(figsize=(11, 4.2))
        left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        positions = np.arange(len(self.aspects))
        for offset, name, color in ((-0.2, "base", "C7"), (0.2, "LoRA", "C0")):
            stats = [getattr(a, name.lower()) for a in self.aspects]
            means = np.array([s.mean for s in stats])
            errors = np.array([[s.mean - s.low for s in stats], [s.high - s.mean for s in stats]])
            errors = None if np.isnan(errors).any() else errors
            left.bar(positions + offset, means, width=0.4, color=color, yerr=errors, capsize=3, label=name)
        left.set_xticks(positions, [a.name for a in self.aspects])
        left.set_ylabel("reward (higher is better)")
        left.set_title(
            f"{100 * self.config.confidence:g}% intervals ({self.config.interval}); win rate {self.win_rate:.2f}"
        )
        left.legend(fontsize=8)
        left.grid(alpha=0.3, axis="y")
        movers = self.improved() + self.regressed()
        if movers:
            rows = list(range(len(movers)))[::-1]
            right.barh(rows, [q.change for q in movers], color=["C2" if q.change > 0 else "C3" for q in movers])
            right.set_yticks(rows, [f"[{q.aspect}] {q.question}"[:60] for q in movers], fontsize=7)
            right.axvline(0, color="gray", linewidth=0.8)
        else:
            right.text(0.5, 0.5, "no question changed", ha="center", va="center", transform=right.transAxes)
        right.set_xlabel("change of p(expected answer), LoRA - base")
        right.set_title("most improved / regressed questions")
        return _to_image(figure)

    def to_dict(self) -> dict[str, Any]:
        def stats(s: MeanWithInterval) -> dict[str, float]:
            return {"mean": s.mean, "low": s.low, "high": s.high}

        return {
            "config": self.config.to_dict(),
            "still_image": self.still_image,
            "win_rate": self.win_rate,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "aspects": {
                a.name: {"base": stats(a.base), "lora": stats(a.lora), "change": stats(a.change)} for a in self.aspects
            },
            "pairs": [
                {"prompt": p.prompt, "seed": p.seed, "base": float(p.base.total), "lora": float(p.lora.total)}
                for p in self.pairs
            ],
            "questions": [
                {
                    "prompt": q.prompt,
                    "aspect": q.aspect,
                    "kind": q.kind,
                    "question": q.question,
                    "base": q.base,
                    "lora": q.lora,
                }
                for q in self.questions
            ],
            "improved": [q.question for q in self.improved()],
            "regressed": [q.question for q in self.regressed()],
        }


# --- the evaluation -----------------------------------------------------------------------------


def _question_value(score: Any) -> float:
    return float(score.probability) if score.probability is not None else float(score.value)


def summarize(pairs: list[PairScores], config: EvaluateConfig, still_image: bool = False) -> Evaluation:
    """The statistics of scored pairs (see the module docstring)."""
    interval = INTERVALS.get(config.interval)

    def with_interval(values: list[float]) -> MeanWithInterval:
        low, high = interval(values, config)
        return MeanWithInterval(float(np.mean(values)), low, high)

    names = ["total", *dict.fromkeys(name for p in pairs for name in p.base.per_aspect)]
    aspects = []
    for name in names:
        scored = [p for p in pairs if name == "total" or name in p.base.per_aspect]

        def value(result: RewardResult, name: str = name) -> float:
            return float(result.total) if name == "total" else result.per_aspect[name]

        base = [value(p.base) for p in scored]
        lora = [value(p.lora) for p in scored]
        change = [b - a for a, b in zip(base, lora, strict=True)]
        aspects.append(AspectComparison(name, with_interval(base), with_interval(lora), with_interval(change)))
    by_question: dict[tuple[str, str, str, str], tuple[list[float], list[float]]] = {}
    for pair in pairs:
        for before, after in zip(pair.base.per_question, pair.lora.per_question, strict=True):
            key = (pair.prompt, before.aspect, before.kind, before.question)
            values = by_question.setdefault(key, ([], []))
            values[0].append(_question_value(before))
            values[1].append(_question_value(after))
    questions = [
        QuestionChange(prompt, aspect, kind, question, float(np.mean(base)), float(np.mean(lora)))
        for (prompt, aspect, kind, question), (base, lora) in by_question.items()
    ]
    return Evaluation(config=config, pairs=pairs, aspects=aspects, questions=questions, still_image=still_image)


def evaluate_lora(
    backend: VideoBackend,
    critic: Critic,
    question_sets: Sequence[QuestionSet],
    lora: LoRAWeights,
    config: EvaluateConfig,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Evaluation:
    """Score base and LoRA videos of every prompt x seed (same noise) and compare them; an image model's
    samples are scored as still images, as training scores them (`scoring.ScoredFrames`)."""
    config.validate()
    if not question_sets:
        raise DRFInputError("no prompts to evaluate; connect question sets (one per prompt), e.g. held-out prompts")
    # Sizes the model cannot make, a frame selection that does not fit, or an image's motion-only questions
    # are refused here, before anything is sampled.
    view = ScoredFrames.of(backend.num_frames_out(config.video), config.decode)
    question_sets = [view.questions(qs) for qs in question_sets]
    warn_on_frame_rate(backend, config.critic_input)
    reward = view.reward(DRFReward(critic, config.reward, config.critic_input))
    total = 2 * len(question_sets) * len(config.seeds)
    done = 0

    def scored(questions: QuestionSet, seed: int, with_lora: bool) -> RewardResult:
        nonlocal done
        video = sample_videos(
            backend, [questions.prompt], config.video, config.sampler, seed, config.negative_prompt,
            lora=lora if with_lora else None, strength=config.strength, should_stop=should_stop,
        )[0]  # fmt: skip
        with torch.no_grad():
            result = reward(view.pick(video).float(), questions)
        done += 1
        if progress is not None:
            progress(done, total)
        return result

    pairs = [
        PairScores(qs.prompt, seed, scored(qs, seed, False), scored(qs, seed, True))
        for qs in question_sets
        for seed in config.seeds
    ]
    return summarize(pairs, config, view.still_image)

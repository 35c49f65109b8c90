"""Charts for people: reward curves per aspect over training, and per-question scores.

With held-out monitoring (`monitor.py`), the reward curves get a second panel: the training reward
next to the held-out reward (held-out seeds, training questions), the held-out questions' and the
held-out prompts' reward, the gap between training and held-out questions (the reward-hacking
signal, on its own axis), and markers at the best evaluation and an early stop.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change, so it is
safe inside ComfyUI's server). Returns PIL images; callers decide where they go.
Knows the shape of `metrics.jsonl` rows and of `RewardResult`, nothing else.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .reward import RewardResult


def _to_image(figure: Figure) -> Image.Image:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _smooth(values: Sequence[float], factor: float) -> list[float]:
    smoothed, last = [], None
    for value in values:
        last = value if last is None else factor * last + (1 - factor) * value
        smoothed.append(last)
    return smoothed


def plot_reward_curves(metrics: Sequence[dict[str, Any]], title: str = "Diffusion-DRF reward") -> Image.Image:
    """Total reward and each aspect's reward against the optimizer step (raw and smoothed); with
    held-out evaluations in `metrics`, a second panel compares training and held-out rewards."""
    rows = [r for r in metrics if not r.get("skipped") and "reward" in r]
    evaluations = [(r["step"], r["held_out"]) for r in metrics if "held_out" in r]
    figure = Figure(figsize=(7, 7.5 if evaluations else 4))
    axes = figure.add_subplot(2 if evaluations else 1, 1, 1)
    if rows:
        steps = [r["step"] for r in rows]
        series = {"total": [r["reward"] for r in rows]}
        for name in rows[0].get("reward_per_aspect", {}):
            series[name] = [r["reward_per_aspect"].get(name, float("nan")) for r in rows]
        for index, (name, values) in enumerate(series.items()):
            color = f"C{index}"
            width = 2.2 if name == "total" else 1.4
            axes.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            axes.plot(steps, _smooth(values, 0.6), color=color, linewidth=width, label=name)
        axes.legend(loc="best", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.set_ylabel("reward (higher is better)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if evaluations:
        _plot_held_out(figure.add_subplot(2, 1, 2), rows, evaluations)
        figure.subplots_adjust(hspace=0.35)
    return _to_image(figure)


def _plot_held_out(axes: Any, rows: Sequence[dict[str, Any]], evaluations: Sequence[tuple[int, dict]]) -> None:
    steps = [step for step, _ in evaluations]
    if rows:
        axes.plot([r["step"] for r in rows], _smooth([r["reward"] for r in rows], 0.6), color="C0", linewidth=1.4,
                  label="training (smoothed)")  # fmt: skip
    series = (
        ("reward", "held-out seeds", "C1"),
        ("questions_reward", "held-out questions", "C2"),
        ("prompts_reward", "held-out prompts", "C4"),
    )
    for key, label, color in series:
        points = [(step, e[key]) for step, e in evaluations if key in e]
        if points:
            axes.plot(*zip(*points, strict=True), color=color, marker="o", markersize=3, linewidth=1.6, label=label)
    last = evaluations[-1][1]
    if last.get("best_step") is not None:
        axes.axvline(
            last["best_step"], color="C2", linestyle=":", linewidth=1.2, label=f"best (step {last['best_step']})"
        )
    if last.get("stop_reason"):
        axes.axvline(steps[-1], color="C3", linestyle="--", linewidth=1.2, label="early stop")
    gaps = [(step, e["question_gap"]) for step, e in evaluations if "question_gap" in e]
    if gaps:
        twin = axes.twinx()
        twin.plot(*zip(*gaps, strict=True), color="C3", alpha=0.7, linewidth=1.0, linestyle="-.", label="gap")
        twin.set_ylabel("training - held-out questions (gap)", fontsize=8, color="C3")
        twin.tick_params(axis="y", labelsize=7, colors="C3")
    axes.legend(loc="best", fontsize=7)
    axes.set_xlabel("step")
    axes.set_ylabel("reward")
    axes.set_title("held-out monitoring (a widening gap: the LoRA learns the questions' words)", fontsize=9)
    axes.grid(alpha=0.3)


def plot_question_scores(result: RewardResult, title: str = "Critic answers") -> Image.Image:
    """One bar per yes/no question: the critic's probability of the expected answer, by aspect."""
    scored = [q for q in result.per_question if q.probability is not None]
    height = max(2.5, 0.32 * len(scored) + 1.2)
    figure = Figure(figsize=(8, height))
    axes = figure.add_subplot(1, 1, 1)
    aspects = list(dict.fromkeys(q.aspect for q in scored))
    labels = [f"[{q.aspect}] {q.question}"[:70] for q in scored]
    colors = [f"C{aspects.index(q.aspect)}" for q in scored]
    positions = list(range(len(scored)))[::-1]
    axes.barh(positions, [q.probability for q in scored], color=colors)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.axvline(0.5, color="gray", linewidth=0.8, linestyle="--")
    axes.set_xlim(0, 1)
    axes.set_xlabel("p(expected answer)")
    summary = ", ".join(f"{name} {value:+.3f}" for name, value in result.per_aspect.items())
    axes.set_title(f"{title}\n{summary}", fontsize=9)
    return _to_image(figure)

"""Charts for people: reward curves per aspect over training, and per-question scores.

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
    """Total reward and each aspect's reward against the optimizer step (raw and smoothed)."""
    rows = [r for r in metrics if not r.get("skipped")]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot(1, 1, 1)
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
    return _to_image(figure)


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

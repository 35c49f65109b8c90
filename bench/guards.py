"""Benchmark: what the drift penalty and LoRA weight decay do to the tiny demo's curves.

`python bench/guards.py` trains the demo's LoRA (`drf_core.demo`: its prompt, tiny random models,
settings and held-out seeds) once per setting, with held-out monitoring every `--every` steps
(the demo's four held-out seeds, training and paraphrased held-out questions), and writes a
markdown table to `bench/guards_results.md` (`--out`): the training reward (mean of the first and
of the last five steps), the held-out reward with the training questions and with the held-out
questions (before training, at the end, at the best evaluation), how much the gap between them
widened, the drift penalty's value at the end, and the time. It reports what it measures,
whatever that is; the tiny random models say nothing about image quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from drf_core.api import train_lora  # noqa: E402
from drf_core.config import MonitorConfig, RegularizationConfig  # noqa: E402
from drf_core.critics import load_critic  # noqa: E402
from drf_core.decompose import decompose  # noqa: E402
from drf_core.demo import DEMO_PROMPT, HELD_OUT_SEEDS, demo_config  # noqa: E402
from drf_core.lora import remove_lora  # noqa: E402
from drf_core.models import load_video_backend  # noqa: E402
from drf_core.reward import DRFReward  # noqa: E402
from drf_core.tiny import write_tiny_models  # noqa: E402

# (label, drift_weight, weight_decay)
SETTINGS = (
    ("no regulariser", 0.0, 0.0),
    ("drift 10", 10.0, 0.0),
    ("drift 100", 100.0, 0.0),
    ("weight decay 0.1", 0.0, 0.1),
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run(steps: int, every: int, settings=SETTINGS, on_result=None, seeds=HELD_OUT_SEEDS) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_tiny_models(Path(folder) / "models", seed=0)
        backend = load_video_backend(paths.wan, "fp32", "cpu")
        critic = load_critic(paths.qwen, "fp32", "cpu")
        questions = decompose(DEMO_PROMPT, method="rules")
        for label, drift, decay in settings:
            config = demo_config(steps, seed=0)
            config.monitor = MonitorConfig(interval=every, seeds=list(seeds))
            config.regularization = RegularizationConfig(drift_weight=drift)
            config.optimizer = dataclasses.replace(config.optimizer, weight_decay=decay)
            config.checkpoint_interval = 0
            remove_lora(backend.denoiser)
            started = time.perf_counter()
            trained = train_lora(
                backend,
                DRFReward(critic, config.reward, config.critic_input),
                [questions],
                config,
                Path(folder) / label.replace(" ", "_"),
            )
            seconds = time.perf_counter() - started
            rows = trained.run.metrics
            train = [r["reward"] for r in rows if "reward" in r and not r["skipped"]]
            evaluations = [(r["step"], r["held_out"]) for r in rows if "held_out" in r]
            start, end = evaluations[0][1], evaluations[-1][1]
            best = dict(evaluations)[trained.run.best_step]
            drifts = [r["drift"] for r in rows if "drift" in r]
            results.append(
                {
                    "label": label,
                    "train_first": _mean(train[:5]),
                    "train_last": _mean(train[-5:]),
                    "held_start": start["reward"],
                    "held_end": end["reward"],
                    "questions_start": start["questions_reward"],
                    "questions_end": end["questions_reward"],
                    "gap_growth": end.get("gap_growth", 0.0),
                    "best_step": trained.run.best_step,
                    "best_score": best["score"],
                    "drift_end": _mean(drifts[-5:]) if drifts else None,
                    "seconds": seconds,
                }
            )
            logging.info("%s: %s", label, results[-1])
            if on_result is not None:
                on_result(results)
    return results


def report(results: list[dict], steps: int, every: int, seeds=HELD_OUT_SEEDS) -> str:
    lines = [
        "# Guards on the tiny demo: drift penalty and weight decay",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. `python bench/guards.py --steps {steps} --every {every} --seeds {len(seeds)}`: "
        "the demo's prompt, "
        f"tiny random models and settings (`drf_core.demo.demo_config`), {steps} steps, held-out evaluation every "
        f"{every} steps on seeds {list(seeds)} (training questions, and paraphrased held-out questions).",
        "",
        "| setting | training reward (first 5 -> last 5) | held-out, training questions (start -> end) | "
        "held-out questions (start -> end) | gap widened by | best step (score) | drift penalty (last 5) | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        drift = f"{r['drift_end']:.2e}" if r["drift_end"] is not None else "not computed"
        lines.append(
            f"| {r['label']} | {r['train_first']:+.4f} -> {r['train_last']:+.4f} "
            f"| {r['held_start']:+.4f} -> {r['held_end']:+.4f} "
            f"| {r['questions_start']:+.4f} -> {r['questions_end']:+.4f} "
            f"| {r['gap_growth']:+.4f} | {r['best_step']} ({r['best_score']:+.4f}) | {drift} | {r['seconds']:.0f} s |"
        )
    lines += [
        "",
        "The drift penalty is the mean squared difference between the LoRA model's and the base model's "
        "predictions at the gradient steps (`drf_core.regularize`); weight decay is AdamW's, on the LoRA only. "
        '"gap widened by": (training-question minus held-out-question reward) at the end minus the same before '
        "training; positive means the training questions gained more than their rewordings.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "guards_results.md"))
    parser.add_argument("--seeds", type=int, default=len(HELD_OUT_SEEDS), help="how many of the demo's held-out seeds")
    parser.add_argument("--settings", default=",".join(label for label, _, _ in SETTINGS), help="labels to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("drf_core.lora", "drf_core.checkpoint", "drf_core.models.wan", "drf_core.critics.qwen2_5_vl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    seeds = HELD_OUT_SEEDS[: args.seeds]
    chosen = [item for item in SETTINGS if item[0] in args.settings.split(",")]

    def write(results: list[dict]) -> None:  # after every setting, so a long run leaves what it measured
        Path(args.out).write_text(report(results, args.steps, args.every, seeds), encoding="utf-8")

    results = run(args.steps, args.every, chosen, on_result=write, seeds=seeds)
    sys.stdout.write(report(results, args.steps, args.every, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

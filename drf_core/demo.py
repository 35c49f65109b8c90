"""The end-to-end demo: tiny models, a built-in prompt, decomposition, training, before/after.

Everything runs on the CPU in a few minutes: tiny random Wan and Qwen2.5-VL folders are written
(`tiny.py`) and loaded with the normal loaders, the prompt is decomposed by the rules, a LoRA is
trained with the real trainer, and the demo writes what a user would look at: the LoRA in ComfyUI
and diffusers formats, `metrics.jsonl`, a per-aspect reward-curve PNG, a side-by-side before/after
preview (same seed) and a short report. The reward is also measured on held-out seeds before and
after training, so "it went up" is checked on videos the training never saw.

Random tiny models make random videos: the demo shows the machinery working, not pretty output.
Knows the engine's public functions; nothing about ComfyUI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .api import critique, sample_videos, save_trained_lora, train_lora
from .checkpoint import next_free_run_dir
from .config import (
    CriticInputConfig,
    DecodeConfig,
    LoRAConfig,
    OptimizerConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from .critics import load_critic
from .decompose import decompose
from .io import save_image_atomic, write_json_atomic, write_text_atomic
from .media import label_positions, save_animation, side_by_side
from .models import load_video_backend
from .reward import DRFReward
from .tiny import write_tiny_models
from .trainer import ProgressEvent

logger = logging.getLogger(__name__)

DEMO_PROMPT = "two red apples on a wooden table, the camera slowly pans left"
PREVIEW_SEED = 1234
HELD_OUT_SEEDS = (100, 101, 102, 103)


def demo_config(steps: int, seed: int) -> TrainConfig:
    """Settings sized for tiny models on 2 CPU cores (about a second per step)."""
    return TrainConfig(
        prompts=[DEMO_PROMPT],
        steps=steps,
        seed=seed,
        video=VideoSpec(height=64, width=64, num_frames=9),
        sampler=SamplerConfig(num_inference_steps=8, truncated_backprop_steps=2, guidance_scale=3.0),
        decode=DecodeConfig(frame_selection="all", frame_selection_count=1),
        critic_input=CriticInputConfig(height=56, width=56),
        lora=LoRAConfig(rank=4, alpha=4.0, target_preset="attention_ffn"),
        optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=2),
        checkpoint_interval=10,
    )


@dataclass
class DemoResult:
    output_dir: Path
    reward_before: float
    reward_after: float
    train_first: float
    train_last: float
    files: dict[str, Path]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_demo(
    output_dir: str | Path, steps: int = 30, seed: int = 0, progress: Callable[[ProgressEvent], None] | None = None
) -> DemoResult:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = output_dir / "models"
    if not (models / "wan" / "model_index.json").is_file() or not (models / "qwen2_5_vl" / "config.json").is_file():
        write_tiny_models(models, seed=seed)
    backend = load_video_backend(models / "wan", "fp32", "auto")
    critic = load_critic(models / "qwen2_5_vl", "fp32", "auto")

    questions = decompose(DEMO_PROMPT, method="rules")
    questions.save(output_dir / "questions.json")
    config = demo_config(steps, seed)
    write_json_atomic(output_dir / "train_config.json", config.to_dict())

    reward = DRFReward(critic, config.reward, config.critic_input)

    def held_out_reward(lora) -> tuple[float, dict[str, float]]:
        scores = []
        for held_out_seed in HELD_OUT_SEEDS:
            video = sample_videos(backend, [DEMO_PROMPT], config.video, config.sampler, held_out_seed, lora=lora)
            scores.append(critique(reward, video[0], questions))
        per_aspect = {a: _mean([s.result.per_aspect[a] for s in scores]) for a in scores[0].result.per_aspect}
        return _mean([s.total for s in scores]), per_aspect

    before, before_aspects = held_out_reward(None)
    base_video = sample_videos(backend, [DEMO_PROMPT], config.video, config.sampler, PREVIEW_SEED)[0]

    run_dir = next_free_run_dir(output_dir / "run")  # a demo run again next to an earlier one keeps it
    trained = train_lora(backend, reward, [questions], config, run_dir, progress=progress, resume=False)
    lora = trained.lora
    after, after_aspects = held_out_reward(lora)
    lora_video = sample_videos(backend, [DEMO_PROMPT], config.video, config.sampler, PREVIEW_SEED, lora=lora)[0]

    files = {
        "lora_comfyui": save_trained_lora(lora, output_dir / "drf_lora.safetensors", trained.family, "comfyui"),
        "lora_diffusers": save_trained_lora(
            lora, output_dir / "drf_lora_diffusers.safetensors", trained.family, "diffusers"
        ),
        "metrics": run_dir / "metrics.jsonl",
        "questions": output_dir / "questions.json",
    }
    curve = output_dir / "reward_curve.png"
    save_image_atomic(trained.reward_curve(), curve)
    files["reward_curve"] = curve
    videos = (base_video, lora_video)
    files["preview"] = save_animation(
        side_by_side(*videos),
        output_dir / "preview_before_after.gif",
        fps=8,
        labels=label_positions(videos, ("base", "LoRA")),
    )
    after_critique = critique(reward, lora_video, questions, explain_with=critic, critic_input=config.critic_input)
    rewards = [row["reward"] for row in trained.run.metrics if not row["skipped"]]
    window = max(1, min(5, len(rewards) // 3))
    result = DemoResult(
        output_dir=output_dir,
        reward_before=before,
        reward_after=after,
        train_first=_mean(rewards[:window]),
        train_last=_mean(rewards[-window:]),
        files=files,
    )
    report = _report(result, trained.run.final_step, time.perf_counter() - started, before_aspects, after_aspects)
    files["report"] = write_text_atomic(output_dir / "report.md", report + "\n" + after_critique.report() + "\n")
    write_json_atomic(
        output_dir / "summary.json",
        {
            "reward_before": before,
            "reward_after": after,
            "train_first": result.train_first,
            "train_last": result.train_last,
            "steps": trained.run.final_step,
            "files": {k: str(v) for k, v in files.items()},
        },
    )
    return result


def _report(result: DemoResult, steps: int, seconds: float, before: dict, after: dict) -> str:
    rose = "rose" if result.reward_after > result.reward_before else "did NOT rise"
    lines = [
        "# Diffusion-DRF demo",
        "",
        f'Prompt: "{DEMO_PROMPT}"  ',
        f"{steps} training steps in {seconds:.0f} s on {torch.get_num_threads()} CPU threads (tiny random models).",
        "",
        f"Held-out reward (mean over seeds {list(HELD_OUT_SEEDS)}, never trained on) {rose}: "
        f"{result.reward_before:+.4f} -> {result.reward_after:+.4f}.  ",
        f"Training reward (mean of first vs last steps): {result.train_first:+.4f} -> {result.train_last:+.4f}.",
        "",
        "| aspect | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {before[name]:+.4f} | {after.get(name, float('nan')):+.4f} |" for name in before]
    lines += ["", "Files:", ""]
    lines += [f"- {name}: `{path.relative_to(result.output_dir)}`" for name, path in result.files.items()]
    lines += ["", f"Below: the critic's verdict on the LoRA preview (seed {PREVIEW_SEED}).", ""]
    return "\n".join(lines)

"""Benchmark: what the critic's input costs, old default against new (decode with gradient + reward + backward).

The old default scored the first 5 frames squashed to 448x448; the new one scores 8 frames spread
over the whole clip at the official Qwen-VL size (aspect ratio kept, `smart_resize`). Only the part
of a training step after the sampler depends on this choice: decoding the selected frames with
gradient (the Wan VAE is causal, so frames spread to the end of the clip decode every latent frame),
the critic's forward over them, and the backward through both. `python bench/critic_input.py`
measures exactly that part, at Wan's length and aspect ratio (128x224, 33 frames: a CPU can run it;
`--height/--width` for more), for the four
combinations of {first 5, uniform 8} x {448x448, official size}:

- random latents of the video's shape (requires_grad, as the sampler's output is) are decoded with
  `backend.decode` with `checkpoint_per_latent_frame`, scored by `DRFReward` with the
  critic's gradient checkpointing on (the engine's defaults), and `backward()` runs to the latents;
- step 1 warms up, the next `--timed-steps` are timed (median); peak memory above what is allocated
  before a step is `max_memory_allocated` on CUDA, and on the CPU the allocator's running total
  rebuilt from `torch.profiler` events of one more step (as `train_step.py` measures it).

Models: `train_step.py`'s `--size small` folders (drf_core.tiny's VAE, a 64-wide Qwen2.5-VL
critic), so the numbers compare settings on one machine; they are not a real model's GiB. The
report also lists, from the engine's own preprocessing rules, how many visual tokens a real
Qwen2.5-VL receives under each setting at the same size. Each configuration runs in a fresh process.
Writes `bench/critic_input_results.md` (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (str(REPO_ROOT), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import train_step  # noqa: E402  (bench/train_step.py: model folders, memory probe, machine facts)

logger = logging.getLogger("bench.critic_input")

PROMPT = train_step.PROMPT
WAN_HEIGHT, WAN_WIDTH, WAN_FRAMES = 480, 832, 33  # Wan2.1's default video (the engine's VideoSpec)
# (label, frame selection, count, critic height, critic width); 0 x 0 = the official size rule.
SETTINGS = (
    ("old default: first 5 frames, 448x448", "prefix", 5, 448, 448),
    ("first 5 frames, official size", "prefix", 5, 0, 0),
    ("uniform 8 frames, 448x448", "uniform", 8, 448, 448),
    ("**new default: uniform 8 frames, official size**", "uniform", 8, 0, 0),
)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from drf_core.config import CriticInputConfig, RewardConfig, VideoSpec, resolve_device
    from drf_core.critics import load_critic
    from drf_core.decompose import decompose
    from drf_core.frames import select_frames
    from drf_core.models import load_video_backend
    from drf_core.models.base import DecodeOptions
    from drf_core.reward import DRFReward

    device = resolve_device(spec["device"])
    backend = load_video_backend(spec["wan"], "auto", device)
    critic = load_critic(spec["qwen"], "auto", device)
    critic.set_gradient_checkpointing(True)
    video = VideoSpec(spec["height"], spec["width"], spec["num_frames"])
    indices = select_frames(spec["selection"], backend.num_frames_out(video), spec["count"])
    visual = CriticInputConfig(height=spec["critic_height"], width=spec["critic_width"]).for_frames(indices)
    reward = DRFReward(critic, RewardConfig(), visual)
    questions = decompose(PROMPT)
    noise = backend.init_noise(video, 1, torch.Generator().manual_seed(0))
    facts: dict[str, Any] = {}

    def step() -> float:
        latents = noise.clone().requires_grad_(True)
        frames = backend.decode(latents, indices, DecodeOptions(checkpoint_per_latent_frame=True))[0]
        result = reward(frames, questions)
        (-result.total).backward()
        facts.update(frames=list(frames.shape), reward=float(result.total.detach()))
        facts["grad_norm"] = float(latents.grad.norm())
        return float(result.total.detach())

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    seconds, cuda_peaks = [], []
    for _ in range(spec["timed_steps"]):
        synchronize()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        step()
        synchronize()
        seconds.append(time.perf_counter() - started)
        if device.type == "cuda":
            cuda_peaks.append((torch.cuda.max_memory_allocated(device) - start) / 2**20)
    if device.type == "cuda":
        peak = statistics.median(cuda_peaks)
    else:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        peak = train_step.allocator_peak_bytes(prof) / 2**20
    visual_inputs = critic._preprocess(torch.zeros(len(indices), 3, spec["height"], spec["width"]), visual)
    return {
        "indices": indices,
        "critic_fps": visual.fps,
        "critic_grid": visual_inputs.grid_thw.tolist(),
        "critic_tokens": sum(visual_inputs.tokens_per_item),
        "seconds": seconds,
        "peak_mib": peak,
        "questions": sum(len(a.yes_no) for a in questions.aspects),
        "explanations": sum(len(a.explanations) for a in questions.aspects),
        **facts,
    }


def run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=train_step.worker_environment(),
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(train_step.RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len(train_step.RESULT_MARKER) :])


def real_model_tokens(height: int, width: int, num_frames: int) -> list[tuple[str, int, list[int]]]:
    """Visual tokens a real Qwen2.5-VL-7B-Instruct gets (its preprocessor_config.json's limits) per setting."""
    from drf_core.critics.qwen_vision import QwenVisionSettings, target_size
    from drf_core.frames import select_frames
    from drf_core.tiny import QWEN2_5_VL_PREPROCESSOR_CONFIG

    settings = QwenVisionSettings(
        min_pixels=QWEN2_5_VL_PREPROCESSOR_CONFIG["min_pixels"],
        max_pixels=QWEN2_5_VL_PREPROCESSOR_CONFIG["max_pixels"],
    )
    rows = []
    for label, selection, count, critic_height, critic_width in SETTINGS:
        count = len(select_frames(selection, num_frames, count))
        size_h, size_w = target_size(height, width, critic_height, critic_width, settings, count, video=True)
        temporal = -(-count // settings.temporal_patch_size)
        tokens = temporal * (size_h // settings.factor) * (size_w // settings.factor)
        rows.append((label, tokens, [size_h, size_w]))
    return rows


def render(args: argparse.Namespace, machine: dict[str, str], results: list[dict[str, Any]], wall: float) -> str:
    first = results[0]
    on_cuda = machine["device"].startswith("cuda")
    lines = [
        "# Critic input benchmark: old default against new",
        "",
        f"Written by `python bench/critic_input.py {args.command_line}`; every number below was measured by that run.",
        "",
        "## Machine",
        "",
        *[f"- {name}: {value}" for name, value in machine.items()],
        "",
        "## What runs",
        "",
        f"- video {args.height}x{args.width}, {args.num_frames} frames (random latents with gradient), decoded "
        "with gradient by the Wan VAE (drf_core.tiny's: base_dim 16), checkpointed per latent frame",
        f"- reward: {first['questions']} yes/no questions + {first['explanations']} explanation queries (rule "
        f'decomposition of "{PROMPT}") on `--size small`\'s Qwen2.5-VL critic (64 wide), gradient '
        "checkpointing on; then backward to the latents",
        f"- step 1 warms up; {args.timed_steps} step(s) timed (median); peak = "
        + ("`max_memory_allocated` above the step's start" if on_cuda else "CPU allocator peak above the step's start")
        + " (train_step.py's method)",
        "",
        "| setting | frames scored | critic fps told | critic input (t, h, w patches) | visual tokens | step s | "
        "peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, *_), result in zip([SETTINGS[i] for i in args.settings], results, strict=True):
        grid = result["critic_grid"][0]
        lines.append(
            f"| {label} | {result['indices']} | {result['critic_fps']:.2f} | {grid} ({grid[1] * 14}x{grid[2] * 14} "
            f"px) | {result['critic_tokens']} | {statistics.median(result['seconds']):.2f} | {result['peak_mib']:.1f} |"
        )
    if args.settings[0] == 0 and args.settings[-1] == len(SETTINGS) - 1:
        old, new = results[0], results[-1]
        time_ratio = statistics.median(new["seconds"]) / statistics.median(old["seconds"])
        lines += [
            "",
            f"New default / old default: step time {time_ratio:.2f}x, "
            f"peak memory {new['peak_mib'] / old['peak_mib']:.2f}x.",
        ]
    lines += [
        "",
        f"Visual tokens a real Qwen2.5-VL-7B-Instruct receives for Wan's {WAN_HEIGHT}x{WAN_WIDTH}, {WAN_FRAMES} "
        "frames (its preprocessor_config.json limits; computed with the engine's size rules, not measured). "
        "The critic's activations grow with these tokens (times the questions in a batch):",
        "",
        "| setting | critic frame size | visual tokens |",
        "|---|---|---|",
    ]
    for label, tokens, size in real_model_tokens(WAN_HEIGHT, WAN_WIDTH, WAN_FRAMES):
        lines.append(f"| {label} | {size[0]}x{size[1]} | {tokens} |")
    lines += ["", f"Whole benchmark: {wall:.0f} s wall."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--height", type=int, default=128, help="video height (default 128: Wan's 480 / 3.75)")
    parser.add_argument("--width", type=int, default=224, help="video width (default 224, Wan's aspect ratio)")
    parser.add_argument("--num-frames", type=int, default=33, help="video frames (default 33, 4n+1)")
    parser.add_argument("--timed-steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--out", default=str(BENCH_DIR / "critic_input_results.md"), help="report file")
    parser.add_argument(
        "--settings",
        type=lambda text: [int(part) for part in text.split(",") if part.strip()],
        default=list(range(len(SETTINGS))),
        help=f"which rows to run, comma separated indices into {len(SETTINGS)} settings (default: all)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command_line = " ".join(sys.argv[1:] if argv is None else argv)
    if args.timed_steps < 1:
        parser.error("--timed-steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.worker:
        print(train_step.RESULT_MARKER + json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0
    logger.setLevel(logging.INFO)
    from drf_core.config import resolve_device

    device = resolve_device(args.device)
    machine = train_step.machine_info(device)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="drf_bench_models_") as models_dir:
        wan, qwen = train_step.write_model_folders(train_step.SIZES["small"], Path(models_dir))
        for label, selection, count, critic_height, critic_width in [SETTINGS[i] for i in args.settings]:
            spec = {
                "device": str(device),
                "wan": str(wan),
                "qwen": str(qwen),
                "height": args.height,
                "width": args.width,
                "num_frames": args.num_frames,
                "selection": selection,
                "count": count,
                "critic_height": critic_height,
                "critic_width": critic_width,
                "timed_steps": args.timed_steps,
            }
            results.append(run_in_subprocess(spec))
            logger.info(
                "%s: %.2f s, %.1f MiB", label, statistics.median(results[-1]["seconds"]), results[-1]["peak_mib"]
            )
    report = render(args, machine, results, time.perf_counter() - started)
    print(report)
    Path(args.out).write_text(report, encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

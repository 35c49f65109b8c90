"""Benchmark: one Diffusion-DRF training step (time, peak memory) and the no-grad sampler vs `WanPipeline`.

`python bench/train_step.py` writes random Wan and Qwen2.5-VL model folders to a temp dir (no
network), then runs each configuration in a fresh subprocess that loads them with the engine's own
loaders (`load_video_backend`, `load_critic`):

- the real `drf_core.trainer.Trainer` at T denoising steps, for every mode of
  `sampler.CHECKPOINTING` and every K: median seconds of the timed optimizer steps after a warm-up
  step, and one step's peak memory above what is allocated when it starts (CUDA:
  `max_memory_allocated`; CPU: the allocator's running total rebuilt from `torch.profiler` events);
- `sampler.sample_video` (no gradient) against `WanPipeline.__call__(output_type="pt")` on the same
  folder, seed and settings: median times, their ratio, the largest difference of the outputs.

It prints a markdown report (machine, model sizes, tables, targets met or not, method) and writes it
to `bench/results.md` (or `--out`). Every number in it is measured by the run that writes it.
Knows the engine's public functions and model-folder layout; changes nothing in the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("bench.train_step")

PROMPT = "two red apples on a wooden table, the camera slowly pans left"
NEGATIVE_PROMPT = "blurry, static"
RESULT_MARKER = "BENCH_RESULT "
TARGET_MEMORY_RATIO = 1.10  # peak at K=8 within 1.1x of K=1 with checkpointing
TARGET_SAMPLER_RATIO = 1.05  # engine sampler within 1.05x of WanPipeline
GUIDANCE_SCALE = 5.0
SEED = 0


# ----------------------------------------------------------------------------------------------
# Model sizes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSize:
    """One preset: overrides of `drf_core.tiny`'s model configs, and the video the trainer samples."""

    description: str
    height: int
    width: int
    num_frames: int
    decoded_frames: int  # decode.frame_selection "prefix" with this count
    critic_height: int
    critic_width: int
    lora_rank: int
    # Overrides of the tiny WanTransformer3DModel config / Qwen2.5-VL text and vision configs (empty: keep).
    transformer: dict[str, Any] = field(default_factory=dict)
    critic_text: dict[str, Any] = field(default_factory=dict)
    critic_vision: dict[str, Any] = field(default_factory=dict)


SIZES: dict[str, BenchSize] = {
    "tiny": BenchSize(
        description="drf_core.tiny's test models unchanged; weights and overhead dominate (a smoke run)",
        height=64,
        width=64,
        num_frames=9,
        decoded_frames=5,
        critic_height=56,
        critic_width=56,
        lora_rank=4,
    ),
    "small": BenchSize(
        description=(
            "a wider, deeper transformer, a wider critic and a larger video, so activations dominate memory; "
            "one decoded frame so that, as at real sizes, a denoising step's activations outweigh the VAE "
            "decode's (the VAE keeps the tiny config: base_dim 16)"
        ),
        height=128,
        width=128,
        num_frames=17,
        decoded_frames=1,
        critic_height=112,
        critic_width=112,
        lora_rank=16,
        transformer={"num_layers": 6, "num_attention_heads": 8, "attention_head_dim": 32, "ffn_dim": 1024},
        critic_text={
            "hidden_size": 64,
            "intermediate_size": 256,
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1000000.0},
        },
        critic_vision={"hidden_size": 64, "intermediate_size": 256, "num_heads": 4, "out_hidden_size": 64},
    ),
}


def write_model_folders(size: BenchSize, directory: Path) -> tuple[Path, Path]:
    """Write drf_core.tiny's folders, then replace the transformer / critic by `size`'s larger ones."""
    import torch
    from diffusers import WanTransformer3DModel
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from drf_core.tiny import build_tiny_qwen2_5_vl_config, build_tiny_qwen_tokenizer, write_tiny_models

    paths = write_tiny_models(directory, seed=SEED)
    if size.transformer:
        tiny = WanTransformer3DModel.from_pretrained(paths.wan / "transformer", local_files_only=True)
        torch.manual_seed(SEED + 1)
        WanTransformer3DModel(**{**dict(tiny.config), **size.transformer}).save_pretrained(paths.wan / "transformer")
    if size.critic_text or size.critic_vision:
        data = build_tiny_qwen2_5_vl_config(build_tiny_qwen_tokenizer()).to_dict()
        text = {k: v for k, v in data["text_config"].items() if k != "layer_types"}  # rebuilt from the layers
        config = Qwen2_5_VLConfig(
            **{
                **data,
                "text_config": {**text, **size.critic_text},
                "vision_config": {**data["vision_config"], **size.critic_vision},
            }
        )
        torch.manual_seed(SEED)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        model.generation_config = GenerationConfig.from_pretrained(paths.qwen, local_files_only=True)
        model.save_pretrained(paths.qwen)
    return paths.wan, paths.qwen


# ----------------------------------------------------------------------------------------------
# Memory probes (run inside a worker process)
# ----------------------------------------------------------------------------------------------


def allocator_peak_bytes(prof: Any) -> int:
    """The largest running total of the CPU allocator's allocations over a profiled window.

    Rebuilt from the profiler's allocation events (the ones `torch.profiler._memory_profiler` reads):
    each carries the signed size of one allocation or free; the running sum from the window's
    start is the memory allocated since then, its maximum the step's peak above its start.
    """
    from torch._C._profiler import _EventType

    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    events.sort()
    running = peak = 0
    for _, size in events:
        running += size
        peak = max(peak, running)
    return peak


class StepProbe:
    """The Trainer's progress callback: times steps and measures one step's peak memory.

    Step 1 warms up; steps 2..1+timed are timed (the Trainer's own `seconds`). On CUDA their peak is
    `max_memory_allocated` (the Trainer resets it at each step's start) above `memory_allocated` just
    before the step. On the CPU one more step runs under `torch.profiler` for the allocator peak; its
    time is not used (the profiler slows it down).
    """

    def __init__(self, device: Any, timed_steps: int) -> None:
        self.device = device
        self.timed = set(range(2, 2 + timed_steps))
        self.profiled_step = 2 + timed_steps if device.type == "cpu" else None
        self.total_steps = 1 + timed_steps + (1 if self.profiled_step else 0)
        self.seconds: list[float] = []
        self.cuda_peaks_mib: list[float] = []
        self.allocator_peak_mib: float | None = None
        self._cuda_start = 0
        self._profiler: Any = None

    def __call__(self, event: Any) -> None:
        import torch

        step = event.step
        if step in self.timed:
            self.seconds.append(float(event.metrics["seconds"]))
            if self.device.type == "cuda":
                self.cuda_peaks_mib.append(float(event.metrics["peak_memory_mb"]) - self._cuda_start / 2**20)
        if step == self.profiled_step:
            self._profiler.stop()
            self.allocator_peak_mib = allocator_peak_bytes(self._profiler) / 2**20
        # Get ready for the next step.
        if step + 1 in self.timed and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
        if step + 1 == self.profiled_step:
            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            self._profiler.start()


# ----------------------------------------------------------------------------------------------
# Workers (each configuration in a fresh process)
# ----------------------------------------------------------------------------------------------


TRANSFORMER_FACTS = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "text_dim", "patch_size")
VAE_FACTS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks")
CRITIC_TEXT_FACTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
CRITIC_VISION_FACTS = ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size")


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _pick(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    values = {name: getattr(config, name, None) if not isinstance(config, dict) else config.get(name) for name in names}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def train_config(size: BenchSize, mode: str, grad_steps: int, num_steps: int, total_steps: int) -> Any:
    from drf_core.config import (
        CriticInputConfig,
        DecodeConfig,
        LoRAConfig,
        SamplerConfig,
        TrainConfig,
        VideoSpec,
    )

    checkpointed = mode != "none"
    return TrainConfig(
        prompts=[PROMPT],
        negative_prompt=NEGATIVE_PROMPT,
        steps=total_steps,
        seed=SEED,
        video=VideoSpec(size.height, size.width, size.num_frames),
        sampler=SamplerConfig(
            num_inference_steps=num_steps,
            truncated_backprop_steps=grad_steps,
            guidance_scale=GUIDANCE_SCALE,
            checkpointing=mode,
        ),
        decode=DecodeConfig("prefix", size.decoded_frames, checkpoint_per_latent_frame=checkpointed),
        critic_input=CriticInputConfig(height=size.critic_height, width=size.critic_width),
        lora=LoRAConfig(rank=size.lora_rank, alpha=float(size.lora_rank), target_preset="attention"),
        checkpoint_interval=0,
        critic_gradient_checkpointing=checkpointed,
        release_text_encoder=True,
    )


def run_train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from drf_core.config import resolve_device
    from drf_core.critics import load_critic
    from drf_core.decompose import decompose
    from drf_core.models import load_video_backend
    from drf_core.reward import DRFReward
    from drf_core.trainer import Trainer

    size = dataclasses.replace(SIZES[spec["size"]], decoded_frames=spec["decoded_frames"])
    device = resolve_device(spec["device"])
    backend = load_video_backend(spec["wan"], "auto", device)
    critic = load_critic(spec["qwen"], "auto", device)
    questions = decompose(PROMPT)
    probe = StepProbe(device, spec["timed_steps"])
    config = train_config(size, spec["mode"], spec["k"], spec["num_steps"], probe.total_steps)
    with tempfile.TemporaryDirectory(prefix="drf_bench_run_") as output_dir:
        reward = DRFReward(critic, config.reward, config.critic_input)
        trainer = Trainer(backend, reward, [questions], config, output_dir, progress=probe)
        lora_count = sum(p.numel() for p in trainer.parameters)
        result = trainer.train()
    if result.final_step != probe.total_steps:
        raise RuntimeError(f"the trainer stopped at step {result.final_step} of {probe.total_steps}")
    skipped = [row["step"] for row in result.metrics if row["skipped"]]
    latent = backend.init_noise(config.video, 1, torch.Generator().manual_seed(0)).shape
    return {
        "mode": spec["mode"],
        "k": spec["k"],
        "seconds": probe.seconds,
        "cuda_peaks_mib": probe.cuda_peaks_mib,
        "allocator_peak_mib": probe.allocator_peak_mib,
        "skipped_steps": skipped,
        "rewards": [row["reward"] for row in result.metrics],
        "grad_norms": [row["grad_norm"] for row in result.metrics],
        "facts": {
            "transformer_parameters": _count(backend.denoiser) - lora_count,
            "lora_parameters": lora_count,
            "vae_parameters": _count(backend.vae),
            "critic_parameters": _count(critic.model),
            "transformer": _pick(backend.denoiser.config, TRANSFORMER_FACTS),
            "vae": _pick(backend.vae.config, VAE_FACTS),
            "critic_text": _pick(critic.model.config.text_config, CRITIC_TEXT_FACTS),
            "critic_vision": _pick(critic.model.config.vision_config, CRITIC_VISION_FACTS),
            "latent_shape": list(latent),
            "tokens_per_pass": latent[2] * (latent[3] // 2) * (latent[4] // 2),
            "frame_indices": list(trainer.frame_indices),
            "questions": sum(len(a.yes_no) for a in questions.aspects),
            "explanations": sum(len(a.explanations) for a in questions.aspects),
            "dtype": str(backend.dtype).removeprefix("torch."),
            "dtype_bytes": torch.empty((), dtype=backend.dtype).element_size(),
            "threads": torch.get_num_threads(),
        },
    }


def run_sampler_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from diffusers import WanPipeline

    from drf_core.config import SamplerConfig, VideoSpec, resolve_device
    from drf_core.models import load_video_backend
    from drf_core.sampler import sample_video

    size = SIZES[spec["size"]]
    device = resolve_device(spec["device"])
    backend = load_video_backend(spec["wan"], "auto", device)
    pipe = WanPipeline.from_pretrained(spec["wan"], dtype=backend.dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    video = VideoSpec(size.height, size.width, size.num_frames)
    sampler = SamplerConfig(num_inference_steps=spec["num_steps"], guidance_scale=GUIDANCE_SCALE)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def engine(clear_cache: bool) -> torch.Tensor:
        if clear_cache:
            backend._embedding_cache.clear()  # the benchmark's only look inside: equal work per run
        generator = torch.Generator(device="cpu").manual_seed(SEED)
        return sample_video(backend, [PROMPT], NEGATIVE_PROMPT, video, sampler, generator)

    def pipeline() -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(SEED)
        return pipe(
            PROMPT,
            negative_prompt=NEGATIVE_PROMPT,
            height=video.height,
            width=video.width,
            num_frames=video.num_frames,
            num_inference_steps=sampler.num_inference_steps,
            guidance_scale=GUIDANCE_SCALE,
            generator=generator,
            output_type="pt",
        ).frames

    runs = {"engine": lambda: engine(False), "engine_uncached": lambda: engine(True), "pipeline": pipeline}
    outputs = {name: run() for name, run in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(spec["repeats"]):
        for name, run in runs.items():  # interleaved, so drift hits all three alike
            synchronize()
            started = time.perf_counter()
            outputs[name] = run()
            synchronize()
            times[name].append(time.perf_counter() - started)
    reference = outputs["pipeline"].float()
    return {
        "times": times,
        "max_abs_diff": float((outputs["engine"].float() - reference).abs().max()),
        "max_abs_diff_uncached": float((outputs["engine_uncached"].float() - reference).abs().max()),
        "shape": list(reference.shape),
    }


WORKERS = {"train": run_train_worker, "sampler": run_sampler_worker}


def worker_environment() -> dict[str, str]:
    """This process's environment, with OpenMP threads that sleep instead of spinning while they wait.

    With OpenMP's default (spinning) waits, a second busy process on a 2-core machine made each small
    op wait for descheduled spinning threads: one transformer forward took ~50x longer. Passive waits
    keep the numbers stable on a shared machine (there the forward took as long as with one thread).
    A value the user has set is kept.
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one worker in a fresh Python process and return its JSON result."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=worker_environment(),
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {spec} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["wall_seconds"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _proc_field(path: str, prefix: str) -> str | None:
    """The value after the first `prefix...:` line of a /proc file, or None."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), None)


def machine_info(device: Any) -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    memory = _proc_field("/proc/meminfo", "MemTotal")
    cuda_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} logical, torch threads {torch.get_num_threads()}",
        "memory": f"{int(memory.split()[0]) / 2**20:.1f} GiB" if memory else "unknown",
        "device": f"{device}{cuda_name}",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}",
        "OS": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _facts_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in values.items())


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def _peak(result: dict[str, Any]) -> float:
    if result["cuda_peaks_mib"]:
        return statistics.median(result["cuda_peaks_mib"])
    return float(result["allocator_peak_mib"])


def _seconds(result: dict[str, Any]) -> str:
    values = result["seconds"]
    text = f"{statistics.median(values):.2f}"
    return text + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")


def _mark(met: bool) -> str:
    return "**met**" if met else "**not met**"


def same_result_lines(args: argparse.Namespace, by_key: dict) -> list[str]:
    """Checkpointing must change memory and time, never the result: compare rewards and gradient norms."""
    lines = []
    for k in args.ks:
        rows = [by_key[(mode, k)] for mode in args.modes if (mode, k) in by_key]
        if len(rows) < 2:
            continue
        worst = 0.0
        for name in ("rewards", "grad_norms"):
            reference = rows[0][name]
            for row in rows[1:]:
                for a, b in zip(reference, row[name], strict=True):
                    worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
        lines.append(
            f"- same result in every mode at K={k}: rewards and gradient norms of all "
            f"{len(rows[0]['rewards'])} steps agree to a relative {worst:.1e}"
        )
    return ["Checks that the modes compute the same thing:", "", *lines] if lines else []


def render_report(
    size_name: str, args: argparse.Namespace, machine: dict[str, str], train: list[dict], sampler: dict
) -> str:
    size = dataclasses.replace(SIZES[size_name], decoded_frames=args.decoded_frames)
    facts = train[0]["facts"]
    on_cuda = bool(train[0]["cuda_peaks_mib"])
    by_key = {(r["mode"], r["k"]): r for r in train}
    first_k, last_k = min(args.ks), max(args.ks)
    memory_name = "peak MiB (max_memory_allocated)" if on_cuda else "peak MiB (allocator)"
    lines = [
        "# Training-step benchmark",
        "",
        f"Written by `python bench/train_step.py {args.command_line}`; every number below was measured by that run.",
        "",
        "## Machine",
        "",
        *[f"- {name}: {value}" for name, value in machine.items()],
        f"- load average (1 min) at start / end of the run: {args.load_start} / {_load_average()} (other work "
        "on the machine slows the step times; the memory numbers do not depend on it)",
        f"- worker environment: OMP_WAIT_POLICY={worker_environment()['OMP_WAIT_POLICY']}",
        "",
        f"## Models (`--size {size_name}`: {size.description})",
        "",
        f"- Wan transformer: {_facts_text(facts['transformer'])}; {facts['transformer_parameters']:,} parameters; "
        f"dtype {facts['dtype']}",
        f"- LoRA: rank {size.lora_rank} on the attention projections, {facts['lora_parameters']:,} trainable "
        "parameters",
        f"- Wan VAE: {_facts_text(facts['vae'])}; {facts['vae_parameters']:,} parameters",
        f"- video {size.height}x{size.width}, {size.num_frames} "
        f"frames -> latents {facts['latent_shape']} = {facts['tokens_per_pass']} tokens per transformer pass "
        f"(2 passes per step: guidance {GUIDANCE_SCALE})",
        f'- decoded with gradient: frames {facts["frame_indices"]} (`decode.frame_selection` "prefix", '
        f"count {size.decoded_frames})",
        f"- Qwen2.5-VL critic: text {_facts_text(facts['critic_text'])}; vision {_facts_text(facts['critic_vision'])}; "
        f"{facts['critic_parameters']:,} parameters; sees {size.critic_height}x"
        f"{size.critic_width} frames as a video; {facts['questions']} yes/no questions + "
        f'{facts["explanations"]} explanation queries (rule decomposition of "{PROMPT}")',
        f"- T = {args.num_steps} denoising steps (the folder's UniPC scheduler), AdamW, one video per step",
        "",
        f"## Training step (T={args.num_steps})",
        "",
        "One row = one configuration in a fresh process, measured through `drf_core.trainer.Trainer`: step 1 "
        f"warms up, then {args.timed_steps} step(s) are timed (median, range in brackets).",
        "",
        f"| checkpointing | critic / VAE checkpointing | K | step s | {memory_name} | ratio to K={first_k} |",
        "|---|---|---|---|---|---|",
    ]
    for mode in args.modes:
        base = by_key.get((mode, first_k))
        for k in args.ks:
            result = by_key[(mode, k)]
            ratio = _peak(result) / _peak(base) if base else float("nan")
            extra = "on / per latent frame" if mode != "none" else "off / off"
            lines.append(f"| {mode} | {extra} | {k} | {_seconds(result)} | {_peak(result):.1f} | {ratio:.2f}x |")
    lines += ["", "## Targets", ""]
    for mode in [m for m in args.modes if m != "none"]:
        if (mode, first_k) in by_key and (mode, last_k) in by_key:
            low, high = _peak(by_key[(mode, first_k)]), _peak(by_key[(mode, last_k)])
            ratio = high / low
            lines.append(
                f"- peak memory at K={last_k} within {TARGET_MEMORY_RATIO}x of K={first_k}, checkpointing "
                f"`{mode}`: {high:.1f} / {low:.1f} MiB = {ratio:.3f}x -> {_mark(ratio <= TARGET_MEMORY_RATIO)}"
            )
    engine = statistics.median(sampler["times"]["engine"])
    uncached = statistics.median(sampler["times"]["engine_uncached"])
    pipeline = statistics.median(sampler["times"]["pipeline"])
    lines.append(
        f"- sampler within {TARGET_SAMPLER_RATIO}x of `WanPipeline`: {engine:.3f} / {pipeline:.3f} s = "
        f"{engine / pipeline:.3f}x -> {_mark(engine / pipeline <= TARGET_SAMPLER_RATIO)} (with the text encoder "
        f"run every time, as the pipeline does: {uncached / pipeline:.3f}x)"
    )
    if ("none", last_k) in by_key and ("block", last_k) in by_key:
        none, block = _peak(by_key[("none", last_k)]), _peak(by_key[("block", last_k)])
        verdict = "passes" if none >= 1.25 * block else "FAILS (the method does not separate them)"
        lines.append(
            f"- method check: `none` at K={last_k} must need clearly more memory than `block` at K={last_k}: "
            f"{none:.1f} vs {block:.1f} MiB ({none / block:.2f}x) -> {verdict}"
        )
    lines += ["", *same_result_lines(args, by_key)]
    lines += ["", "Memory added per extra gradient step (from the first to the last K):", ""]
    for mode in args.modes:
        if (mode, first_k) in by_key and (mode, last_k) in by_key and last_k > first_k:
            low, high = _peak(by_key[(mode, first_k)]), _peak(by_key[(mode, last_k)])
            lines.append(f"- `{mode}`: {(high - low) / (last_k - first_k):+.2f} MiB per step of K")
    transformer = facts["transformer"]
    layers, inner = transformer["num_layers"], transformer["num_attention_heads"] * transformer["attention_head_dim"]
    block_inputs = layers * 2 * facts["tokens_per_pass"] * inner * facts["dtype_bytes"] / 2**20
    lines.append(
        f"- for comparison, the inputs that per-block checkpointing keeps per gradient step: {layers} layers x 2 "
        f"guidance passes x {facts['tokens_per_pass']} tokens x {inner} x {facts['dtype_bytes']} bytes = "
        f"{block_inputs:.2f} MiB (the rest of a step's share is outside the blocks: text and time embeddings, "
        "patch embedding, output projection, scheduler arithmetic)"
    )
    lines += [
        "",
        f"## Sampler without gradient (T={args.num_steps}, guidance {GUIDANCE_SCALE}, output {sampler['shape']})",
        "",
        f"Warm-up run of each, then {args.sampler_repeats} interleaved repeats; median (range).",
        "",
        "| sampler | seconds | ratio to WanPipeline | max abs diff to WanPipeline |",
        "|---|---|---|---|",
    ]
    rows = [
        ('`WanPipeline.__call__(output_type="pt")`', "pipeline", "0 (reference)"),
        ("`sample_video` (prompt embeddings cached)", "engine", f"{sampler['max_abs_diff']:.3g}"),
        ("`sample_video`, cache cleared each run", "engine_uncached", f"{sampler['max_abs_diff_uncached']:.3g}"),
    ]
    for label, key, diff in rows:
        values = sampler["times"][key]
        median = statistics.median(values)
        lines.append(
            f"| {label} | {median:.3f} ({min(values):.3f}-{max(values):.3f}) | {median / pipeline:.3f}x | {diff} |"
        )
    lines += ["", "## How the numbers are measured", ""]
    if on_cuda:
        lines.append(
            "- Peak memory: `torch.cuda.max_memory_allocated` during a timed step (the Trainer resets it at the "
            "step's start) minus `torch.cuda.memory_allocated` just before the step: the step's own tensors "
            "above the weights, LoRA, optimizer state and cached prompt embeddings it starts with."
        )
    else:
        lines.append(
            "- Peak memory (CPU): torch has no CPU `max_memory_allocated`, so one more step (after the timed "
            "ones) runs under `torch.profiler` with `profile_memory=True`; the allocation and free events of "
            "the CPU allocator are put in time order and summed, and the largest running total is the step's "
            "peak above what was allocated when it started (weights, LoRA, optimizer state, cached prompt "
            "embeddings are not counted). It counts tensor bytes only, like `max_memory_allocated` on CUDA, "
            "and is exactly repeatable (same ops, same sizes). That step's time is not used."
        )
        lines.append(
            "- Not used: the process's resident set (VmHWM after a reset through `/proc/self/clear_refs`, or "
            "`ru_maxrss`). glibc keeps memory freed by the warm-up step and the next step reuses it, so the "
            "resident set of a later step grows by far less than the step allocates, and by about as much "
            "for `none` as for `block` (see bench/README.md)."
        )
    lines += [
        "- Step time: the Trainer's own `seconds` for each timed optimizer step (sample with K gradient steps, "
        "decode the selected frames with gradient, reward, backward, clip, AdamW).",
        "- `none` runs with no checkpointing anywhere (critic and VAE too); every other mode runs with the "
        "critic's gradient checkpointing and the VAE's per-latent-frame checkpointing on (the engine's "
        "defaults), so their rows differ from `none` in all three places.",
        "- Sampler: same folder loaded twice (the engine's `load_video_backend` and "
        "`WanPipeline.from_pretrained`), same seed and settings. The engine caches prompt embeddings, so after "
        "the warm-up its default run skips the text encoder; the `cache cleared` row does the pipeline's work.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from drf_core.sampler import CHECKPOINTING

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model and video size preset")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results.md"), help="where to write the report")
    parser.add_argument("--num-steps", type=int, default=8, help="T, denoising steps")
    parser.add_argument("--ks", type=_int_list, default=[1, 2, 4, 8], help="K values, comma separated")
    parser.add_argument(
        "--modes",
        type=lambda text: [m for m in text.split(",") if m],
        default=list(CHECKPOINTING.names()),
        help=f"checkpointing modes, comma separated (of {', '.join(CHECKPOINTING.names())})",
    )
    parser.add_argument(
        "--decoded-frames", type=int, default=None, help="frames decoded with gradient (default: the preset's)"
    )
    parser.add_argument("--timed-steps", type=int, default=2, help="timed optimizer steps after the warm-up")
    parser.add_argument("--sampler-repeats", type=int, default=11, help="timed sampler runs of each kind")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command_line = " ".join(sys.argv[1:] if argv is None else argv)
    unknown = [mode for mode in args.modes if mode not in CHECKPOINTING]
    if unknown:
        parser.error(f"unknown checkpointing mode(s) {unknown}; choose from {', '.join(CHECKPOINTING.names())}")
    if args.decoded_frames is None:
        args.decoded_frames = SIZES[args.size].decoded_frames
    if args.decoded_frames < 1:
        parser.error("--decoded-frames must be at least 1")
    if any(k < 1 or k > args.num_steps for k in args.ks):
        parser.error(f"every K must be in 1..T={args.num_steps}, got {args.ks}")
    if args.timed_steps < 1 or args.sampler_repeats < 1:
        parser.error("--timed-steps and --sampler-repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.worker:
        spec = json.loads(args.worker)
        result = WORKERS[spec["kind"]](spec)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    logger.setLevel(logging.INFO)
    from drf_core.config import resolve_device

    device = resolve_device(args.device)
    machine = machine_info(device)
    args.load_start = _load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drf_bench_models_") as models_dir:
        wan, qwen = write_model_folders(SIZES[args.size], Path(models_dir))
        common = {"size": args.size, "device": str(device), "wan": str(wan), "qwen": str(qwen)}
        common.update(num_steps=args.num_steps, decoded_frames=args.decoded_frames)
        train = []
        for mode in args.modes:
            for k in args.ks:
                spec = {**common, "kind": "train", "mode": mode, "k": k, "timed_steps": args.timed_steps}
                train.append(run_in_subprocess(spec))
                logger.info(
                    "%s K=%d: step %.2f s, peak %.1f MiB (%.0f s wall)",
                    mode,
                    k,
                    statistics.median(train[-1]["seconds"]),
                    _peak(train[-1]),
                    train[-1]["wall_seconds"],
                )
        sampler = run_in_subprocess({**common, "kind": "sampler", "repeats": args.sampler_repeats})
        logger.info("sampler: %s (%.0f s wall)", sampler["times"], sampler["wall_seconds"])
    report = render_report(args.size, args, machine, train, sampler)
    report += f"\nWhole benchmark: {time.perf_counter() - started:.0f} s wall.\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

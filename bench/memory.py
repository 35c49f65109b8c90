"""Memory model: the engine's own training step traced at real model sizes with fake tensors.

`python bench/memory.py` builds Wan2.1-T2V-1.3B (or Wan2.2-TI2V-5B), its UMT5-XXL text encoder and
a Qwen2.5-VL-7B / -3B critic from their published configs as fake-tensor models
(`memory_models.py`), hands them to the engine (`WanBackend`, `QwenVLCritic`) and runs
`drf_core.trainer.Trainer.train()` for the step count asked, under `memory_trace.LiveBytes`: every
tensor storage is counted while it lives, rounded to the CUDA allocator's 512-byte blocks. It prints
and writes (`bench/memory_results.md`) a table per setting: traced peak, where it happens, and what
is alive at that moment (weights per model, LoRA + optimizer state, activations by the phase that
made them), plus a check at tiny size that the trace equals the real CPU allocation.

`python bench/memory.py --preset 24GB --critic 7B --json` traces one configuration and prints one
JSON object (`peak_gib`, `settings`, the breakdown). Presets are `drf_core.memory_presets`'
bundles of engine settings, traced field by field (`PRESET_FIELDS`). The report run also writes
`drf_core/memory_estimates.json`, the traced peaks the engine's check before step 1 reads.

Phase offload (`train.offload = "phase"`): the host is modelled as a second device the tracer does
not count (`_traced_host`): a group moved to the host stops being counted, a group moved back is
counted again, so the table shows what the GPU holds in each phase.

How the trace maps to a GPU: the models are bf16 and the step runs under bf16 autocast, as the
engine does on CUDA (`dtype="auto"`, `mixed_precision="auto"`). The fake tensors live on the CPU
device: torch's autograd engine needs a real CUDA device to run a backward pass over CUDA tensors,
even fake ones. So attention runs torch's fused CPU flash kernel (it keeps what CUDA's flash and
memory-efficient kernels keep: the output and a float32 log-sum-exp) and autocast follows torch's
CPU op lists (see README: "What memory to expect"). Changes nothing in the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.memory_trace import LiveBytes, cuda_autocast_policy, cuda_block_bytes, exact_bytes  # noqa: E402

logger = logging.getLogger("bench.memory")

PROMPT = "two red apples on a wooden table, the camera slowly pans left"
NEGATIVE_PROMPT = "blurry, static"
GIB = 2**30
MIB = 2**20
# The CUDA context and allocator slack (issue 11): a card needs about 1.07 x peak + 0.8 GiB.
CARD_FACTOR, CARD_OVERHEAD_GIB = 1.07, 0.8


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySettings:
    """One traced configuration: the models and the engine settings that change memory."""

    video_model: str = "Wan2.1-T2V-1.3B"
    critic: str = "7B"
    height: int = 480
    width: int = 832
    num_frames: int = 33
    num_steps: int = 20  # T
    grad_steps: int = 1  # K
    guidance_scale: float = 5.0
    frames_scored: int = 5  # decode.frame_selection_count
    frame_selection: str = "uniform"  # decode.frame_selection: spread over the clip
    release_text_encoder: bool = False
    critic_size: int = 448  # critic_input height = width
    questions_per_batch: int = 0  # critic_input.max_questions_per_batch (0: all at once)
    lora_rank: int = 16
    offload: str = "none"  # train.offload
    checkpoint_residual_blocks: bool = False  # decode.checkpoint_residual_blocks
    checkpoint_decode: bool = False  # decode.checkpoint_decode
    segment_latent_frames: int = 0  # decode.segment_latent_frames
    frame_by_frame_backward: bool = False  # decode.frame_by_frame_backward
    caches_on_host: bool = False  # decode.caches_on_host (the host is not counted, as with offload)
    backward_tiles: int = 1  # decode.backward_tiles
    cache_interval: int = 1  # decode.cache_interval
    # drf_core.quantization.CRITIC_QUANTIZERS ("none", "int8", "int4"): stand-ins with bitsandbytes' exact
    # stored bytes (bitsandbytes cannot run on fake tensors; bench/memory_quant.py).
    critic_quantization: str = "none"
    # drf_core.models.VIDEO_WEIGHT_STORAGES ("auto", "fp8_e4m3fn", "fp8_e5m2"): the engine's store_video_weights.
    video_weight_storage: str = "auto"

    def train_config(self, steps: int) -> Any:
        from drf_core.config import CriticInputConfig, DecodeConfig, LoRAConfig, SamplerConfig, TrainConfig, VideoSpec

        defaults = TrainConfig()
        return dataclasses.replace(
            defaults,
            prompts=[PROMPT],
            negative_prompt=NEGATIVE_PROMPT,
            steps=steps,
            mixed_precision="bf16",  # what "auto" picks on CUDA
            video=VideoSpec(self.height, self.width, self.num_frames),
            sampler=dataclasses.replace(
                SamplerConfig(),
                num_inference_steps=self.num_steps,
                truncated_backprop_steps=self.grad_steps,
                guidance_scale=self.guidance_scale,
            ),
            decode=dataclasses.replace(
                DecodeConfig(),
                frame_selection=self.frame_selection,
                frame_selection_count=self.frames_scored,
                checkpoint_residual_blocks=self.checkpoint_residual_blocks,
                checkpoint_decode=self.checkpoint_decode,
                segment_latent_frames=self.segment_latent_frames,
                frame_by_frame_backward=self.frame_by_frame_backward,
                caches_on_host=self.caches_on_host,
                backward_tiles=self.backward_tiles,
                cache_interval=self.cache_interval,
            ),
            critic_input=dataclasses.replace(
                CriticInputConfig(),
                height=self.critic_size,
                width=self.critic_size,
                max_questions_per_batch=self.questions_per_batch,
            ),
            lora=dataclasses.replace(LoRAConfig(), rank=self.lora_rank, alpha=float(self.lora_rank)),
            checkpoint_interval=0,
            release_text_encoder=self.release_text_encoder,
            offload=self.offload,
        )


# TrainConfig paths a memory preset sets (drf_core.memory_presets) -> the MemorySettings field tracing it.
PRESET_FIELDS = {
    "offload": ("offload",),
    "release_text_encoder": ("release_text_encoder",),
    "decode.checkpoint_residual_blocks": ("checkpoint_residual_blocks",),
    "decode.checkpoint_decode": ("checkpoint_decode",),
    "decode.segment_latent_frames": ("segment_latent_frames",),
    "decode.frame_by_frame_backward": ("frame_by_frame_backward",),
    "decode.caches_on_host": ("caches_on_host",),
    "decode.backward_tiles": ("backward_tiles",),
    "decode.cache_interval": ("cache_interval",),
    "critic_input.max_questions_per_batch": ("questions_per_batch",),
    "critic_input.height": ("critic_size",),
    "critic_input.width": ("critic_size",),
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The MemorySettings fields that trace preset `name` (its training and loading settings)."""
    from drf_core.memory_presets import MEMORY_PRESETS

    preset = MEMORY_PRESETS.get(name)
    overrides: dict[str, Any] = {}
    for path, value in preset.train.items():
        if path not in PRESET_FIELDS:
            raise KeyError(f"memory preset {name!r} sets {path}, which bench/memory.py cannot trace yet")
        for field_name in PRESET_FIELDS[path]:
            overrides[field_name] = value
    for field_name, value in preset.models.items():
        if field_name not in {f.name for f in dataclasses.fields(MemorySettings)}:
            raise KeyError(f"memory preset {name!r} sets models.{field_name}, which bench/memory.py cannot trace yet")
        overrides[field_name] = value
    return overrides


def _presets() -> dict[str, dict[str, Any]]:
    from drf_core.memory_presets import MEMORY_PRESETS

    return {name: preset_overrides(name) for name in MEMORY_PRESETS}


PRESETS = _presets()


def preset_settings(preset: str, **overrides: Any) -> MemorySettings:
    return dataclasses.replace(MemorySettings(), **{**PRESETS[preset], **overrides})


# --- driving the trainer under the tracer ----------------------------------------------------------


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _in_phase(tracker: LiveBytes, name: str, fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        label = f"backward: {name} (recompute)" if tracker.current_phase.startswith("backward") else name
        with tracker.phase(label):
            return fn(*args, **kwargs)

    return wrapped


def _stage_phase(tracker: LiveBytes, name: str, fn: Any) -> Any:
    """An autograd entry point (`backward`, `grad`) outside any backward phase starts phase `name`;
    inside one (a stage held by `_held_phase`, the VAE's frame-by-frame backward) it belongs to it."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if tracker.current_phase.startswith("backward"):
            return fn(*args, **kwargs)
        with tracker.phase(name):
            return fn(*args, **kwargs)

    return wrapped


_HELD_PHASES = {"VAE": "backward: VAE decode", "video model": "backward: sampling"}


def _held_phase(tracker: LiveBytes, hold: Any) -> Any:
    """`PhaseOffload.hold(group)`: the backward stage that reads that group's weights."""

    @contextlib.contextmanager
    def wrapped(self: Any, *names: str) -> Iterator[None]:
        label = " + ".join(_HELD_PHASES.get(name, f"backward: {name}") for name in names)
        with hold(self, *names), tracker.phase(label):
            yield

    return wrapped


def _sampling_phase(tracker: LiveBytes, fn: Any, full_no_grad_calls: int | None) -> Any:
    """Phase marks around `backend.predict`; with `full_no_grad_calls`, the no-grad shortcut.

    The shortcut: the denoiser calls without gradient all see the same shapes, keep nothing and
    return one tensor, so after `full_no_grad_calls` traced calls of a shape the later ones return
    an empty tensor of the output's shape (the same bytes, allocated the same way) instead of
    tracing the transformer again. `validate_tiny` checks that it leaves the traced peak unchanged.
    """
    seen: dict[tuple[Any, ...], tuple[int, torch.Size, torch.dtype]] = {}

    def wrapped(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        grad = torch.is_grad_enabled()
        name = "sampling, with grad" if grad else "sampling, no grad"
        if tracker.current_phase.startswith("backward"):
            name = f"backward: {name} (recompute)"
        key = (tuple(latents.shape), latents.dtype)
        with tracker.phase(name):
            if not grad and full_no_grad_calls is not None and key in seen:
                count, shape, dtype = seen[key]
                if count >= full_no_grad_calls:
                    return torch.empty(shape, dtype=dtype, device=latents.device)
            out = fn(latents, *args, **kwargs)
            if not grad:
                count = seen[key][0] if key in seen else 0
                seen[key] = (count + 1, out.shape, out.dtype)
            return out

    return wrapped


# Phase offload's groups (drf_core.offload) -> the tracer's weight labels.
_GROUP_LABELS = {
    "video model": "weights: transformer",
    "text encoder": "weights: text encoder",
    "VAE": "weights: VAE",
    "critic": "weights: critic",
}


def _traced_host(tracker: LiveBytes) -> Any:
    """`PhaseOffload._move` for fake models: the host is a second device the tracer does not count.

    Fake tensors cannot change device in place (`Module.to` would swap them), so a move to the host
    stops counting the group's storages and a move back counts them again, as the GPU would see.
    """

    def move(_offload: Any, name: str, modules: list[torch.nn.Module], device: torch.device) -> None:
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        grads = [t.grad for t in tensors if t.grad is not None]
        if device.type == "meta":
            tracker.untrack(tensors + grads)
        else:
            label = _GROUP_LABELS.get(name, f"weights: {name}")
            for tensor in tensors:
                tracker.track(tensor, label)
            for grad in grads:
                tracker.track(grad, "LoRA + optimizer state")

    return move


@dataclass
class TraceResult:
    peak_bytes: int
    peak_phase: str
    peak_labels: dict[str, int]
    phase_peaks: dict[str, int]
    resident: dict[str, int]  # weights per model, registered before the step
    step_peaks: list[int]  # per optimizer step: the window peak above the step's start
    step_starts: list[int]
    seconds: float
    ops: dict[str, int]
    host_peak_bytes: int = 0  # tensors the step kept in host RAM (the decode's causal caches)


def trace_training(
    backend: Any,
    critic: Any,
    config: Any,
    tracker: LiveBytes,
    on_step: Any = None,
    full_no_grad_calls: int | None = None,
) -> TraceResult:
    """Run `Trainer.train()` for `config.steps` steps under `tracker`, with phases marked."""
    from drf_core import offload
    from drf_core.decompose import decompose
    from drf_core.reward import DRFReward
    from drf_core.trainer import Trainer

    started = time.perf_counter()
    questions = decompose(PROMPT)
    resident = {
        "weights: transformer": tracker.add_resident(backend.transformer, "weights: transformer"),
        "weights: text encoder": tracker.add_resident(backend.text_encoder, "weights: text encoder"),
        "weights: VAE": tracker.add_resident(backend.vae, "weights: VAE"),
        "weights: critic": tracker.add_resident(critic.model, "weights: critic"),
    }
    step_peaks: list[int] = []
    step_starts: list[int] = [tracker.total]
    trainer_box: list[Any] = []

    def progress(event: Any) -> None:
        trainer = trainer_box[0]
        state = [t for s in trainer.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        tracker.relabel(list(trainer.parameters) + state, "LoRA + optimizer state")
        step_peaks.append(tracker.window_peak - step_starts[-1])
        if on_step is not None:
            on_step(event.step)
        step_starts.append(tracker.total)
        tracker.reset_window()

    if config.offload == "phase":  # loaded into host RAM (as `python -m drf_core train` does): not on the GPU
        for module in (backend.transformer, backend.text_encoder, backend.vae, critic.model):
            if module is not None:
                tracker.untrack([*module.parameters(), *module.buffers()])
        tracker.peak, tracker.peak_phase, tracker.peak_labels = tracker.total, "setup", {}
        tracker.phase_peaks = {"setup": tracker.total}  # registering the weights is not the GPU's peak
    with tempfile.TemporaryDirectory(prefix="drf_memory_run_") as output_dir, contextlib.ExitStack() as stack:
        stack.enter_context(tracker)
        if tracker.fake_mode is not None:  # the host of phase offload: the meta device, not counted
            stack.enter_context(_patched(offload, "HOST", torch.device("meta")))
            stack.enter_context(_patched(offload.PhaseOffload, "_move", _traced_host(tracker)))
        with tracker.phase("LoRA + optimizer state"):
            trainer = Trainer(
                backend,
                DRFReward(critic, config.reward, config.critic_input),
                [questions],
                config,
                output_dir,
                progress=progress,
            )
        trainer_box.append(trainer)
        # Checkpoint files copy the LoRA to the host; fake tensors cannot be written.
        stack.enter_context(_patched(trainer, "save_checkpoint", lambda: Path(output_dir) / "not-written"))
        stack.enter_context(
            _patched(backend, "encode_prompts", _in_phase(tracker, "text encoding", backend.encode_prompts))
        )
        stack.enter_context(_patched(backend, "predict", _sampling_phase(tracker, backend.predict, full_no_grad_calls)))
        stack.enter_context(_patched(backend, "decode", _in_phase(tracker, "VAE decode", backend.decode)))
        for method in ("score", "score_yes_no", "score_answers"):
            stack.enter_context(_patched(critic, method, _in_phase(tracker, "critic", getattr(critic, method))))
        stack.enter_context(
            _patched(torch.autograd, "backward", _stage_phase(tracker, "backward", torch.autograd.backward))
        )
        # Phase offload's backward stages: the critic (to the frames), the VAE (to the latents), the video model.
        stack.enter_context(
            _patched(torch.autograd, "grad", _stage_phase(tracker, "backward: critic", torch.autograd.grad))
        )
        stack.enter_context(_patched(offload.PhaseOffload, "hold", _held_phase(tracker, offload.PhaseOffload.hold)))
        stack.enter_context(
            _patched(
                torch.nn.utils, "clip_grad_norm_", _in_phase(tracker, "optimizer step", torch.nn.utils.clip_grad_norm_)
            )
        )
        opening = trainer.optimizer.register_step_pre_hook(lambda *_: tracker.push_phase("optimizer step"))
        closing = trainer.optimizer.register_step_post_hook(lambda *_: tracker.pop_phase())
        stack.callback(opening.remove)
        stack.callback(closing.remove)
        tracker.reset_window()
        step_starts[0] = tracker.total
        trainer.train()
    return TraceResult(
        peak_bytes=tracker.peak,
        peak_phase=tracker.peak_phase,
        peak_labels=dict(tracker.peak_labels),
        phase_peaks=dict(tracker.phase_peaks),
        resident=resident,
        step_peaks=step_peaks,
        step_starts=step_starts[:-1],
        seconds=time.perf_counter() - started,
        ops=dict(tracker.ops),
        host_peak_bytes=tracker.host_peak,
    )


def trace_real_size(settings: MemorySettings, steps: int = 1) -> dict[str, Any]:
    """Trace `settings` with fake bf16 models of the published configs; a JSON-ready summary."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.memory_models import build_critic, build_video_backend
    from bench.memory_quant import apply_memory_settings, fake_tensor_layerwise_casting
    from drf_core.decompose import decompose

    questions = decompose(PROMPT)
    texts = [PROMPT, NEGATIVE_PROMPT]
    for aspect in questions.aspects:
        texts += [q.question for q in aspect.yes_no]
        texts += [text for e in aspect.explanations for text in (e.question, e.target)]
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    device, dtype = torch.device("cpu"), torch.bfloat16
    built = time.perf_counter()
    with fake_tensor_layerwise_casting():
        with fake_mode:
            backend = build_video_backend(settings.video_model, dtype, device)
            critic = build_critic(settings.critic, dtype, device, texts)
            apply_memory_settings(backend, critic, settings.critic_quantization, settings.video_weight_storage)
        build_seconds = time.perf_counter() - built
        tracker = LiveBytes(cuda_block_bytes, fake_mode)
        models = model_facts(backend, critic)
        with cuda_autocast_policy():
            result = trace_training(backend, critic, settings.train_config(steps), tracker, full_no_grad_calls=2)
    return {**summarize(settings, result, build_seconds), "models": models}


def model_facts(backend: Any, critic: Any) -> dict[str, Any]:
    """What `drf_core.memory_presets.identify_models` recognises loaded models by."""
    text = getattr(critic.model.config, "text_config", critic.model.config)
    return {
        "denoiser_parameters": sum(p.numel() for n, p in backend.denoiser.named_parameters() if "lora_" not in n),
        "critic_text_shape": [text.hidden_size, text.num_hidden_layers],
    }


def trace_tiny(settings: MemorySettings) -> dict[str, Any]:
    """`settings` traced with fake copies of the tiny models (`drf_core.tiny`), fp32, CUDA rounding.

    What the stored estimates' tiny rows hold, so a test can check the table against the tool fast.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.memory_models import fake_copy_backend, fake_copy_critic
    from drf_core.critics import load_critic
    from drf_core.models import load_video_backend
    from drf_core.tiny import write_tiny_models

    with tempfile.TemporaryDirectory(prefix="drf_memory_tiny_") as folder:
        paths = write_tiny_models(folder)
        backend = load_video_backend(paths.wan, "fp32", "cpu")
        critic = load_critic(paths.qwen, "fp32", "cpu")
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fake_backend, fake_critic = fake_copy_backend(backend), fake_copy_critic(critic)
    models = model_facts(fake_backend, fake_critic)
    config = dataclasses.replace(settings.train_config(1), mixed_precision="auto")  # fp32 on the CPU
    result = trace_training(fake_backend, fake_critic, config, LiveBytes(cuda_block_bytes, fake_mode))
    return {**summarize(settings, result), "models": models}


def offload_peak_fix(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary traced before the tracer forgot the weight registration under phase offload.

    Those traces (2026-12-02, before this fix) counted every model on the GPU while registering the
    weights, which phase offload keeps in RAM; their step's peak is the largest phase peak after
    that ("setup" excluded). The breakdown at that moment was not recorded (`at_peak_gib` is dropped).
    """
    if summary["settings"].get("offload") != "phase" or summary["peak_phase"] != "setup":
        return summary
    phase, gib = max(((p, g) for p, g in summary["phase_peaks_gib"].items() if p != "setup"), key=lambda pg: pg[1])
    return {
        **summary,
        "peak_gib": gib,
        "peak_bytes": round(gib * GIB),
        "card_gib": round(CARD_FACTOR * gib + CARD_OVERHEAD_GIB, 2),
        "peak_phase": phase,
        "at_peak_gib": {},
        "note": "peak from the phase peaks (weight registration excluded); breakdown not recorded",
    }


def summarize(settings: MemorySettings, result: TraceResult, build_seconds: float = 0.0) -> dict[str, Any]:
    peak_gib = result.peak_bytes / GIB
    return {
        "peak_gib": round(peak_gib, 3),
        "peak_bytes": result.peak_bytes,
        "card_gib": round(CARD_FACTOR * peak_gib + CARD_OVERHEAD_GIB, 2),
        "peak_phase": result.peak_phase,
        "at_peak_gib": {k: round(v / GIB, 3) for k, v in sorted(result.peak_labels.items(), key=lambda kv: -kv[1])},
        "phase_peaks_gib": {k: round(v / GIB, 3) for k, v in result.phase_peaks.items()},
        "host_caches_peak_gib": round(result.host_peak_bytes / GIB, 3),
        "resident_gib": {k: round(v / GIB, 3) for k, v in result.resident.items()},
        "settings": dataclasses.asdict(settings),
        "trace_seconds": round(result.seconds + build_seconds, 1),
        "ops_traced": sum(result.ops.values()),
        "ops_by_phase": result.ops,
    }


# --- validation at tiny size -----------------------------------------------------------------------

TINY = MemorySettings(
    video_model="tiny",
    critic="tiny",
    height=64,
    width=64,
    num_frames=9,
    num_steps=4,
    grad_steps=1,
    frames_scored=5,
    critic_size=56,
    lora_rank=4,
)


def validate_tiny(steps: int = 2) -> dict[str, Any]:
    """The last step of a tiny run measured three ways; they should agree.

    - `profiler`: real tensors, the CPU allocator's own events (`torch.profiler`, as
      `bench/train_step.py` measures);
    - `traced_real`: the same real run counted by `LiveBytes` (exact bytes, no rounding);
    - `traced_fake`: the same models and settings rebuilt with fake weights, counted by `LiveBytes`.
    Each is the step's peak above what was allocated when it started.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.memory_models import fake_copy_backend, fake_copy_critic
    from bench.train_step import allocator_peak_bytes
    from drf_core.critics import load_critic
    from drf_core.models import load_video_backend
    from drf_core.tiny import write_tiny_models

    config = dataclasses.replace(TINY.train_config(steps), mixed_precision="auto")  # fp32 on the CPU
    with tempfile.TemporaryDirectory(prefix="drf_memory_tiny_") as folder:
        paths = write_tiny_models(folder)
        backend = load_video_backend(paths.wan, "fp32", "cpu")
        critic = load_critic(paths.qwen, "fp32", "cpu")
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fake_backend, fake_critic = fake_copy_backend(backend), fake_copy_critic(critic)

    profiled: dict[str, Any] = {}

    def profile_last_step(step: int) -> None:
        if step == steps - 1:
            profiled["profiler"] = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            profiled["profiler"].start()
        elif step == steps:
            profiled["profiler"].stop()
            profiled["peak"] = allocator_peak_bytes(profiled["profiler"])

    real = trace_training(backend, critic, config, LiveBytes(exact_bytes), on_step=profile_last_step)
    fake = trace_training(fake_backend, fake_critic, config, LiveBytes(exact_bytes, fake_mode))
    with fake_mode:
        fake_backend, fake_critic = fake_copy_backend(backend), fake_copy_critic(critic)
    shortcut = trace_training(
        fake_backend, fake_critic, config, LiveBytes(exact_bytes, fake_mode), full_no_grad_calls=2
    )
    return {
        "settings": dataclasses.asdict(TINY),
        "steps": steps,
        "profiler_bytes": profiled["peak"],
        "traced_real_bytes": real.step_peaks[-1],
        "traced_fake_bytes": fake.step_peaks[-1],
        "traced_fake_shortcut_bytes": shortcut.step_peaks[-1],
        "fake_shortcut_whole_run_peak_bytes": shortcut.peak_bytes,
        "fake_whole_run_peak_bytes": fake.peak_bytes,
        "real_whole_run_peak_bytes": real.peak_bytes,
    }


# --- the report ----------------------------------------------------------------------------------------

# (row name, preset, overrides): the settings issue 11 asks about, each against the defaults.
SWEEP: list[tuple[str, str, dict[str, Any]]] = [
    ("preset 24GB, 7B critic", "24GB", {}),
    ("preset 16GB, 3B critic", "16GB", {"critic": "3B"}),
    ("preset 24GB, 7B, K=4", "24GB", {"grad_steps": 4}),
    ("preset 24GB, 7B, 1 frame scored", "24GB", {"frames_scored": 1}),
    ("preset 24GB, 7B, 9 frames scored", "24GB", {"frames_scored": 9}),
    ("preset 24GB, 7B, decode.cache_interval 1", "24GB", {"cache_interval": 1}),
    ("48GB+ (the defaults), 7B critic", "48GB+", {}),
    ("48GB+, 3B critic", "48GB+", {"critic": "3B"}),
    ("critic int8 (weight bytes exact, see note)", "48GB+", {"critic_quantization": "int8"}),
    ("critic int4 / NF4 (weight bytes exact, see note)", "48GB+", {"critic_quantization": "int4"}),
    ("video weights fp8", "48GB+", {"video_weight_storage": "fp8_e4m3fn"}),
]
QUANTIZATION_NOTE = (
    "Note on the critic int8 / int4 rows: bitsandbytes cannot run on fake tensors, so its layers are traced as "
    "stand-ins holding exactly the tensors it stores (int8 + a float32 scale per row; packed NF4 + a float32 "
    "scale per 64 weights; `lm_head` stays bf16) and allocating what its CUDA matmul allocates "
    "(`bench/memory_quant.py`); weight bytes are exact, the transients follow the library's code. The fp8 video "
    "row runs the engine's own `store_video_weights` (diffusers layerwise casting); each layer's cast makes "
    "its fp8 weights anew, so at the peak they count under the phase that last ran the layer, not under "
    "'weights: transformer'."
)
TARGETS_GIB = {"24GB": 21.7, "16GB": 14.2}  # issue 11: traced peak for a 24 / 16 GB card

_BREAKDOWN = (
    ("weights: transformer", "transformer"),
    ("weights: text encoder", "text encoder"),
    ("weights: VAE", "VAE"),
    ("weights: critic", "critic"),
    ("LoRA + optimizer state", "LoRA + AdamW"),
)


def _activation_groups(at_peak: dict[str, float]) -> dict[str, float]:
    """Bytes alive at the peak that are not weights, grouped by the phase that made them."""
    groups: dict[str, float] = {}
    known = {label for label, _ in _BREAKDOWN}
    for label, gib in at_peak.items():
        if label in known:
            continue
        group = label.split(":")[0] if label.startswith("backward") else label
        groups[group] = groups.get(group, 0.0) + gib
    return groups


def render_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| setting | traced peak GiB | card (1.07 x + 0.8) | peak during | weights: transformer / UMT5 / VAE / critic "
        "| LoRA + AdamW | activations alive at the peak, by the phase that made them (GiB) "
        "| host RAM for the decode's caches (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in rows:
        at_peak = summary["at_peak_gib"]
        weights = " / ".join(f"{at_peak.get(label, 0.0):.2f}" for label, _ in _BREAKDOWN[:4])
        groups = _activation_groups(at_peak)
        activations = ", ".join(f"{k} {v:.2f}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.005)
        if summary.get("note"):  # `offload_peak_fix`: the breakdown at the peak was not recorded
            weights, activations = "not recorded", summary["note"]
        lines.append(
            f"| {name} | **{summary['peak_gib']:.2f}** | {summary['card_gib']:.1f} | {summary['peak_phase']} "
            f"| {weights} | {at_peak.get('LoRA + optimizer state', 0.0):.2f} | {activations} "
            f"| {summary.get('host_caches_peak_gib', 0.0):.2f} |"
        )
    return lines


def _preset_text() -> str:
    return "; ".join(f"`{name}` = {values or 'the defaults'}" for name, values in PRESETS.items())


def render_report(rows: list[tuple[str, dict[str, Any]]], tiny: dict[str, Any] | None, command: str) -> str:
    import platform

    import diffusers
    import transformers

    base = rows[0][1]["settings"] if rows else dataclasses.asdict(MemorySettings())
    lines = [
        "# Memory model: traced peaks at real sizes",
        "",
        f"Written by `python bench/memory.py {command}`; every number below was traced by that run "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}).",
        "",
        "The engine's own training step (`Trainer.train()`: text encoding, sampling, decode, critic, reward, "
        "backward, clipping, AdamW) on fake-tensor models of the published configs, every tensor storage counted "
        "while it lives and rounded to the CUDA allocator's 512-byte blocks. A GPU needs about "
        f"{CARD_FACTOR} x peak + {CARD_OVERHEAD_GIB} GiB (CUDA context, allocator slack); `bench/README.md` says "
        "what is and is not modelled.",
        "",
        f"Common settings: {base['video_model']} at {base['height']}x{base['width']}x{base['num_frames']}, "
        f"T={base['num_steps']}, guidance {base['guidance_scale']}, LoRA rank {base['lora_rank']} (attention), "
        f"bf16 models under bf16 autocast, critic input {base['critic_size']}x{base['critic_size']} as a video, "
        "21 yes/no questions + 4 explanation queries; each row changes what its name says "
        f"(presets: {_preset_text()}).",
        "",
        *render_table(rows),
        "",
    ]
    for name, summary in rows:
        preset = next((p for p in TARGETS_GIB if name.startswith(f"preset {p}")), None)
        if preset:
            target = TARGETS_GIB[preset]
            gap = summary["peak_gib"] - target
            verdict = "met" if gap <= 0 else f"not met: {gap:.2f} GiB over"
            lines.append(f"- {name}: target <= {target} GiB traced -> {verdict}")
    if any("critic_quantization" in overrides for _, _, overrides in SWEEP):
        lines += ["", QUANTIZATION_NOTE]
    lines += ["", "Peak total reached inside each phase (GiB), first row:", ""]
    if rows:
        lines += [f"- {phase}: {gib:.2f}" for phase, gib in rows[0][1]["phase_peaks_gib"].items()]
    if tiny is not None:
        profiler, real, fake = tiny["profiler_bytes"], tiny["traced_real_bytes"], tiny["traced_fake_bytes"]
        settings = tiny["settings"]
        lines += [
            "",
            "## Check at tiny size (drf_core.tiny models, CPU, fp32)",
            "",
            f"{settings['height']}x{settings['width']}x{settings['num_frames']}, T={settings['num_steps']}, "
            f"K={settings['grad_steps']}, {settings['frames_scored']} frames scored; step {tiny['steps']} of a run, "
            "its peak above what was allocated when it started (exact bytes, no rounding):",
            "",
            "| measured by | peak bytes | vs profiler |",
            "|---|---|---|",
            f"| `torch.profiler` allocation events, real tensors (as `bench/train_step.py`) | {profiler:,} | 1 |",
            f"| this tracer, real tensors | {real:,} | {real / profiler:.4f} |",
            f"| this tracer, fake tensors | {fake:,} | {fake / profiler:.4f} |",
            f"| this tracer, fake tensors, no-grad shortcut | {tiny['traced_fake_shortcut_bytes']:,} | "
            f"{tiny['traced_fake_shortcut_bytes'] / profiler:.4f} |",
        ]
    lines += [
        "",
        "Trace times on this machine (seconds, 2 shared CPU cores): "
        + ", ".join(f"{name}: {summary['trace_seconds']:.0f}" for name, summary in rows),
    ]
    return "\n".join(lines) + "\n"


# --- the stored estimates drf_core reads ----------------------------------------------------------------


def estimate_row(settings: MemorySettings, summary: dict[str, Any], preset: str | None) -> dict[str, Any]:
    from drf_core.memory_presets import memory_key

    return {
        "preset": preset,
        "video_model": settings.video_model,
        "critic": settings.critic,
        "key": json.loads(json.dumps(memory_key(settings.train_config(1)))),
        "peak_gib": summary["peak_gib"],
        "peak_bytes": summary["peak_bytes"],
    }


def tiny_estimate_rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every preset at tiny size (fake copies of `drf_core.tiny`'s models): rows + the models' facts."""
    rows, facts = [], {}
    for preset in PRESETS:
        settings = dataclasses.replace(TINY, **PRESETS[preset])
        summary = trace_tiny(settings)
        facts = summary["models"]
        rows.append(estimate_row(settings, summary, preset))
    return rows, facts


def write_estimates(
    rows: list[tuple[str, dict[str, Any]]], path: Path, command: str, tiny: dict[str, Any] | None = None
) -> None:
    """`drf_core/memory_estimates.json`: the traced rows, keyed as `memory_presets.memory_key` keys a run."""
    table_rows = []
    video: dict[str, Any] = {}
    critic: dict[str, Any] = {}
    for _name, summary in rows:
        settings = MemorySettings(**summary["settings"])
        same = {"critic": settings.critic, "video_model": settings.video_model}
        preset = next((p for p in PRESETS if preset_settings(p, **same) == settings), None)
        table_rows.append(estimate_row(settings, summary, preset))
        video[settings.video_model] = {"denoiser_parameters": summary["models"]["denoiser_parameters"]}
        critic[settings.critic] = {"text_shape": summary["models"]["critic_text_shape"]}
    tiny_rows, tiny_facts = (tiny["rows"], tiny["facts"]) if tiny else tiny_estimate_rows()
    video["tiny"] = {"denoiser_parameters": tiny_facts["denoiser_parameters"]}
    critic["tiny"] = {"text_shape": tiny_facts["critic_text_shape"]}
    table = {
        "about": f"Traced peaks (GiB) written by `python bench/memory.py {command}` "
        f"({time.strftime('%Y-%m-%d', time.gmtime())}, torch {torch.__version__}); read by drf_core.memory_presets.",
        "card_factor": CARD_FACTOR,
        "card_overhead_gib": CARD_OVERHEAD_GIB,
        "models": {"video": video, "critic": critic},
        "rows": table_rows + tiny_rows,
    }
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


# --- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.memory_models import CRITIC_MODELS, VIDEO_MODELS
    from drf_core.config import CRITIC_QUANTIZATION_MODES, VIDEO_WEIGHT_STORAGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="trace one preset (with --json: print it)")
    parser.add_argument("--critic", choices=sorted(CRITIC_MODELS), help="critic size for --preset (default 7B)")
    parser.add_argument("--video-model", choices=sorted(VIDEO_MODELS), help="video model for --preset")
    parser.add_argument("--frames", type=int, help="frames scored (overrides the preset)")
    parser.add_argument("--k", type=int, help="K, denoising steps with gradient (overrides the preset)")
    parser.add_argument("--num-steps", type=int, help="T (overrides the preset)")
    parser.add_argument("--size", help="HEIGHTxWIDTHxFRAMES (overrides the preset), e.g. 480x832x33")
    parser.add_argument(
        "--critic-quantization", choices=CRITIC_QUANTIZATION_MODES, help="critic weights (overrides the preset)"
    )
    parser.add_argument(
        "--video-weight-storage", choices=VIDEO_WEIGHT_STORAGES, help="video base weights (overrides the preset)"
    )
    parser.add_argument("--cache-interval", type=int, default=None, help="decode.cache_interval (overrides the preset)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with --preset)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps traced (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="rows traced at the same time (one process each)")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--from-json", nargs="+", help="build the report from saved --row/--preset --json outputs")
    parser.add_argument("--tiny-json", help="the tiny-size check's result saved by --tiny-only")
    parser.add_argument("--tiny-only", action="store_true", help="run the tiny-size check only; print its JSON")
    parser.add_argument("--tiny-rows-only", action="store_true", help="trace the estimates' tiny rows; print JSON")
    parser.add_argument("--tiny-rows", help="the estimates' tiny rows saved by --tiny-rows-only")
    parser.add_argument("--no-validate", action="store_true", help="skip the tiny-size check in the report")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "memory_results.md"), help="report file")
    parser.add_argument(
        "--estimates",
        default=str(REPO_ROOT / "drf_core" / "memory_estimates.json"),
        help="where the report run writes the estimates drf_core reads ('' : not written)",
    )
    args = parser.parse_args(argv)
    args.command_line = " ".join(sys.argv[1:] if argv is None else argv)
    if args.json and not args.preset and args.row is None:
        parser.error("--json needs --preset (one configuration)")
    if args.jobs < 1 or args.steps < 1:
        parser.error("--jobs and --steps must be at least 1")
    return args


# Command-line flags that override one MemorySettings field (flag's dest -> field).
_OVERRIDE_FLAGS = {
    "critic": "critic",
    "video_model": "video_model",
    "frames": "frames_scored",
    "k": "grad_steps",
    "num_steps": "num_steps",
    "critic_quantization": "critic_quantization",
    "video_weight_storage": "video_weight_storage",
    "cache_interval": "cache_interval",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        field: getattr(args, flag) for flag, field in _OVERRIDE_FLAGS.items() if getattr(args, flag) is not None
    }
    if args.size:
        height, width, frames = (int(part) for part in args.size.lower().split("x"))
        overrides.update(height=height, width=width, num_frames=frames)
    return overrides


def _row_name(summary: dict[str, Any]) -> str:
    """A saved summary's SWEEP row: its `row`, else the row with the same settings."""
    if summary.get("row"):
        return summary["row"]
    for name, preset, overrides in SWEEP:
        if dataclasses.asdict(preset_settings(preset, **overrides)) == summary["settings"]:
            return name
    return f"preset {summary.get('preset')}: {summary['settings']}"


def _trace_rows(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """Every SWEEP row, each in its own process (`--row I --json`), `args.jobs` at a time."""
    import subprocess

    pending = list(range(len(SWEEP)))
    running: dict[int, subprocess.Popen] = {}
    results: dict[int, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            index = pending.pop(0)
            command = [sys.executable, str(Path(__file__).resolve()), "--row", str(index), "--json"]
            command += ["--steps", str(args.steps)]
            running[index] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, encoding="utf-8")
        for index, process in list(running.items()):
            if process.poll() is None:
                continue
            output = process.stdout.read() if process.stdout else ""
            if process.returncode != 0:
                raise RuntimeError(f"row {index} ({SWEEP[index][0]}) failed with exit code {process.returncode}")
            results[index] = json.loads(output.strip().splitlines()[-1])
            logger.info(
                "%s: peak %.2f GiB (%.0f s)",
                SWEEP[index][0],
                results[index]["peak_gib"],
                results[index]["trace_seconds"],
            )
            del running[index]
        time.sleep(1.0)
    return [(SWEEP[i][0], results[i]) for i in range(len(SWEEP))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    if args.tiny_only:
        print(json.dumps(validate_tiny()))
        return 0
    if args.tiny_rows_only:
        rows, facts = tiny_estimate_rows()
        print(json.dumps({"rows": rows, "facts": facts}))
        return 0
    if args.row is not None:
        name, preset, overrides = SWEEP[args.row]
        summary = trace_real_size(preset_settings(preset, **overrides), args.steps)
        print(json.dumps({**summary, "row": name}))
        return 0
    if args.preset:
        summary = trace_real_size(preset_settings(args.preset, **_overrides(args)), args.steps)
        summary["preset"] = args.preset
        if args.json:
            print(json.dumps(summary))
        else:
            print("\n".join(render_table([(f"preset {args.preset}", summary)])))
        return 0
    if args.from_json:  # rows traced earlier, one `--row I --json` (or `--preset ... --json`) output per file
        summaries = [json.loads(Path(f).read_text(encoding="utf-8").strip().splitlines()[-1]) for f in args.from_json]
        rows = [(_row_name(summary), offload_peak_fix(summary)) for summary in summaries]
    else:
        rows = _trace_rows(args)
    if args.tiny_json:
        tiny = json.loads(Path(args.tiny_json).read_text(encoding="utf-8"))
    else:
        tiny = None if args.no_validate else validate_tiny()
    report = render_report(rows, tiny, args.command_line)
    print(report)
    Path(args.out).write_text(report, encoding="utf-8")
    if args.estimates:
        tiny_rows = json.loads(Path(args.tiny_rows).read_text(encoding="utf-8")) if args.tiny_rows else None
        write_estimates(rows, Path(args.estimates), args.command_line, tiny_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

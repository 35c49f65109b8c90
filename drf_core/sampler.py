"""The differentiable sampler: T denoising steps, gradient only through the last K of them.

`sample_latents` runs a backend's scheduler from noise. The first `T-K` steps run under
`torch.no_grad`; the last `K` steps run with gradient (DRaFT-K / AlignProp truncated backprop),
each denoiser call optionally checkpointed (`CHECKPOINTING`). The scheduler's own `step` is cheap,
stateful arithmetic (multistep solvers keep a history of model outputs) and always stays outside
any checkpoint, so the history it keeps is part of the ordinary autograd graph.

`SCHEDULERS` holds the scheduler replacements a user can pick ("unipc", "flow_euler"); each entry
builds a diffusers scheduler from the model folder's scheduler config. `DiffusersScheduler` wraps a
diffusers scheduler as the backend-facing `DenoisingScheduler`.

Family-agnostic: this module only calls `VideoBackend` methods. It knows no model class, no
reward, no critic and no training loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .config import SamplerConfig, VideoSpec
from .errors import DRFInputError
from .models.base import DenoisingScheduler, PromptEmbeddings, VideoBackend
from .registry import Registry

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]
# Called at each denoising step that carries gradient with (latents, timestep, embeddings,
# guidance scale, the model's prediction); `regularize.DriftPenalty` is one.
GradStepHook = Callable[[torch.Tensor, torch.Tensor, PromptEmbeddings, float, torch.Tensor], None]


class SamplingInterrupted(KeyboardInterrupt):
    """`should_stop()` turned true between two denoising steps.

    A `KeyboardInterrupt`, so a caller that treats Ctrl-C as "stop cleanly, discard the unfinished
    step" treats this the same way.
    """


# ----------------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerChoice:
    """A scheduler a user can swap in: the diffusers class and how to build it from a config.

    `build(config, flow_shift)` gets the model folder's scheduler config (a plain dict) and the
    user's flow shift (None: keep the folder's shift) and returns a fresh diffusers scheduler.
    """

    diffusers_class: str
    build: Callable[[dict[str, Any], float | None], Any]


SCHEDULERS: Registry[SchedulerChoice] = Registry("scheduler")

# Config keys under which diffusers' flow-matching schedulers keep their shift.
_SHIFT_KEYS = ("flow_shift", "shift")


def folder_flow_shift(config: dict[str, Any]) -> float | None:
    """The flow shift a scheduler config carries (UniPC: `flow_shift`, flow-Euler: `shift`)."""
    for key in _SHIFT_KEYS:
        if config.get(key) is not None:
            return float(config[key])
    return None


def _build_unipc(config: dict[str, Any], flow_shift: float | None) -> Any:
    from diffusers import UniPCMultistepScheduler

    shift = flow_shift if flow_shift is not None else folder_flow_shift(config)
    overrides: dict[str, Any] = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
    if shift is not None:
        overrides["flow_shift"] = shift
    return UniPCMultistepScheduler.from_config(config, **overrides)


def _build_flow_euler(config: dict[str, Any], flow_shift: float | None) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    shift = flow_shift if flow_shift is not None else folder_flow_shift(config)
    overrides: dict[str, Any] = {} if shift is None else {"shift": shift}
    return FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)


SCHEDULERS.add("unipc", SchedulerChoice("UniPCMultistepScheduler", _build_unipc))
SCHEDULERS.add("flow_euler", SchedulerChoice("FlowMatchEulerDiscreteScheduler", _build_flow_euler))


def build_scheduler(
    folder_scheduler_class: type, folder_config: dict[str, Any], name: str, flow_shift: float | None
) -> Any:
    """A fresh diffusers scheduler: the folder's own class ("default") or a `SCHEDULERS` entry."""
    config = dict(folder_config)
    if name != "default":
        return SCHEDULERS.get(name).build(config, flow_shift)
    if flow_shift is None:
        return folder_scheduler_class.from_config(config)
    shift_key = next((key for key in _SHIFT_KEYS if key in config), None)
    if shift_key is None:
        raise DRFInputError(
            f"the model folder's scheduler {folder_scheduler_class.__name__} has no flow shift setting; "
            f"leave flow_shift empty or choose a scheduler from: {', '.join(SCHEDULERS.names())}"
        )
    return folder_scheduler_class.from_config(config, **{shift_key: flow_shift})


class DiffusersScheduler(DenoisingScheduler):
    """A diffusers scheduler with its timesteps set exactly as the diffusers pipelines set them."""

    def __init__(self, scheduler: Any, num_inference_steps: int, device: torch.device) -> None:
        scheduler.set_timesteps(num_inference_steps, device=device)
        scheduler.set_begin_index(0)
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps

    @property
    def config(self) -> Any:
        return self.scheduler.config

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(model_output, timestep, latents, return_dict=False)[0]


# ----------------------------------------------------------------------------------------------
# Checkpointing of the denoiser calls inside the gradient window
# ----------------------------------------------------------------------------------------------

Predict = Callable[[torch.Tensor, torch.Tensor, PromptEmbeddings, float], torch.Tensor]


@dataclass(frozen=True)
class CheckpointingMode:
    """How denoiser calls inside the gradient window keep (or recompute) their activations.

    `window(backend)` is a context manager around the whole gradient window; `wrap(backend)`
    returns the function the sampler calls instead of `backend.predict`.
    """

    description: str
    window: Callable[[VideoBackend], Any]
    wrap: Callable[[VideoBackend], Predict]


@contextmanager
def _nothing(backend: VideoBackend) -> Iterator[None]:
    yield


@contextmanager
def _block_checkpointing(backend: VideoBackend) -> Iterator[None]:
    backend.set_block_checkpointing(True)
    try:
        yield
    finally:
        # Recomputation during backward calls the blocks directly, so turning the switch off
        # here (before backward) is safe.
        backend.set_block_checkpointing(False)


def _plain_predict(backend: VideoBackend) -> Predict:
    return backend.predict


def _checkpointed_predict(backend: VideoBackend) -> Predict:
    def predict(latents, timestep, embeddings, guidance_scale):
        return checkpoint(backend.predict, latents, timestep, embeddings, guidance_scale, use_reentrant=False)

    return predict


def _checkpointed_predict_with_blocks(backend: VideoBackend) -> Predict:
    """Checkpoint each denoiser call; when backward recomputes it, checkpoint its blocks too.

    Per gradient step only the call's inputs are kept (flat in K, like "step"), and the
    recomputation holds one block's activations at a time instead of the whole call's (like
    "block"). Block checkpointing is switched on inside the checkpointed function, so it is also on
    when backward reruns it. Costs one more forward per gradient step than "block".
    """

    def blocks_checkpointed(latents, timestep, embeddings, guidance_scale):
        backend.set_block_checkpointing(True)
        try:
            return backend.predict(latents, timestep, embeddings, guidance_scale)
        finally:
            backend.set_block_checkpointing(False)

    def predict(latents, timestep, embeddings, guidance_scale):
        return checkpoint(blocks_checkpointed, latents, timestep, embeddings, guidance_scale, use_reentrant=False)

    return predict


CHECKPOINTING: Registry[CheckpointingMode] = Registry("checkpointing mode")
CHECKPOINTING.add("none", CheckpointingMode("keep every activation (most memory)", _nothing, _plain_predict))
CHECKPOINTING.add(
    "step", CheckpointingMode("recompute each denoiser call in backward", _nothing, _checkpointed_predict)
)
CHECKPOINTING.add(
    "block",
    CheckpointingMode(
        "recompute each transformer block in backward (memory grows with K)", _block_checkpointing, _plain_predict
    ),
)
CHECKPOINTING.add(
    "step_block",
    CheckpointingMode(
        "recompute each denoiser call, block by block (least memory, flat in K)",
        _nothing,
        _checkpointed_predict_with_blocks,
    ),
)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def check_grad_steps(grad_steps: int, num_inference_steps: int) -> None:
    if grad_steps < 0:
        raise DRFInputError(f"K={grad_steps} gradient steps is negative; use 0 <= K <= T")
    if grad_steps > num_inference_steps:
        raise DRFInputError(
            f"K={grad_steps} > T={num_inference_steps}: cannot backpropagate through more denoising steps "
            "than the sampler runs; use K <= T"
        )


def sample_latents(
    backend: VideoBackend,
    embeddings: PromptEmbeddings,
    noise: torch.Tensor,
    sampler_config: SamplerConfig,
    grad_steps: int,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    grad_step_hook: GradStepHook | None = None,
) -> torch.Tensor:
    """Run the T denoising steps from `noise`; the last `grad_steps` (K) carry gradient.

    K = 0 runs everything without gradient (previews). Within the gradient window each
    `backend.predict` call is checkpointed according to `sampler_config.checkpointing`.
    `on_step(i, total)` is called after step i (1-based); `should_stop()` is polled before each
    step and raises `SamplingInterrupted` when true; `grad_step_hook` sees every prediction made
    with gradient (before the scheduler step). Returns the final latents (with a graph back
    into the denoiser when K > 0).
    """
    num_steps = sampler_config.num_inference_steps
    check_grad_steps(grad_steps, num_steps)
    mode = CHECKPOINTING.get(sampler_config.checkpointing)
    scheduler = backend.new_scheduler(num_steps, sampler_config.scheduler, sampler_config.flow_shift)
    timesteps = scheduler.timesteps
    total = len(timesteps)
    first_grad_step = total - grad_steps
    guidance = sampler_config.guidance_scale

    def check_stop(i: int) -> None:
        if should_stop is not None and should_stop():
            raise SamplingInterrupted(f"sampling stopped before denoising step {i + 1} of {total}")

    latents = noise
    with torch.no_grad():
        for i in range(first_grad_step):
            check_stop(i)
            model_output = backend.predict(latents, timesteps[i], embeddings, guidance)
            latents = scheduler.step(model_output, timesteps[i], latents)
            if on_step is not None:
                on_step(i + 1, total)
    if grad_steps == 0:
        return latents

    predict = mode.wrap(backend)
    with torch.enable_grad(), mode.window(backend):
        for i in range(first_grad_step, total):
            check_stop(i)
            model_output = predict(latents, timesteps[i], embeddings, guidance)
            if grad_step_hook is not None:
                grad_step_hook(latents, timesteps[i], embeddings, guidance, model_output)
            latents = scheduler.step(model_output, timesteps[i], latents)
            if on_step is not None:
                on_step(i + 1, total)
    return latents


def draw_truncation_steps(sampler_config: SamplerConfig, generator: torch.Generator) -> int:
    """K for one training step: the fixed value, or uniform in `truncated_backprop_range` (inclusive)."""
    if sampler_config.truncated_backprop_range is None:
        return sampler_config.truncated_backprop_steps
    low, high = sampler_config.truncated_backprop_range
    if not 0 <= low <= high:
        raise DRFInputError(f"truncated_backprop_range ({low}, {high}) needs 0 <= min <= max")
    check_grad_steps(high, sampler_config.num_inference_steps)
    return int(torch.randint(low, high + 1, (1,), generator=generator, device=generator.device).item())


def sample_video(
    backend: VideoBackend,
    prompts: Sequence[str],
    negative_prompt: str,
    spec: VideoSpec,
    sampler_config: SamplerConfig,
    generator: torch.Generator | None,
    frame_indices: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """A preview without gradient: encode, draw noise, sample all steps, decode -> `[B, F, 3, H, W]`."""
    with torch.no_grad():
        embeddings = backend.encode_prompts(prompts, negative_prompt, sampler_config.guidance_scale)
        noise = backend.init_noise(spec, len(prompts), generator)
        latents = sample_latents(
            backend, embeddings, noise, sampler_config, 0, on_step=on_step, should_stop=should_stop
        )
        return backend.decode(latents, frame_indices=frame_indices)

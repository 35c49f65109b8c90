"""The differentiable sampler: T denoising steps, gradient only through the last K of them.

`sample_latents` runs a backend's scheduler from noise. The first `T-K` steps run under
`torch.no_grad`; the last `K` steps run with gradient (DRaFT-K / AlignProp truncated backprop),
each denoiser call optionally checkpointed (`CHECKPOINTING`). The scheduler's own `step` is cheap,
stateful arithmetic (multistep solvers keep a history of model outputs) and always stays outside
any checkpoint, so the history it keeps is part of the ordinary autograd graph.

The scheduler comes from the backend (`VideoBackend.new_scheduler`); `start` gives it the noise
and the prompt conditioning (a scheduler that runs a host's own solver may need them) and returns
the first latents, `close` ends it whether sampling finished or not.

Family-agnostic: this module only calls `VideoBackend` and `DenoisingScheduler` methods. It knows
no model class, no backend, no reward, no critic and no training loop.
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
from .models.base import PromptEmbeddings, VideoBackend
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

    try:
        with torch.no_grad():
            latents = scheduler.start(noise, embeddings, guidance)
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
    finally:
        scheduler.close()


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
    """A preview without gradient: draw noise, encode, sample all steps, decode -> `[B, F, 3, H, W]`.

    The noise comes first: it checks the sizes (`spec`), so a size the model cannot make is refused
    before the text encoder runs."""
    with torch.no_grad():
        noise = backend.init_noise(spec, len(prompts), generator)
        embeddings = backend.encode_prompts(prompts, negative_prompt, sampler_config.guidance_scale)
        latents = sample_latents(
            backend, embeddings, noise, sampler_config, 0, on_step=on_step, should_stop=should_stop
        )
        return backend.decode(latents, frame_indices=frame_indices)

"""ComfyUI's own samplers, stepped one denoiser call at a time by the pack's sampler.

ComfyUI runs a whole sampling run inside `CFGGuider.sample` (it loads the model through its memory
manager, prepares the conditioning, applies model patches, scales the noise, runs the k-diffusion
solver, un-scales and `process_latent_out`s the result). The pack's sampler instead calls
`predict` and `step` itself, so it can switch gradients on for the last K steps and checkpoint
each denoiser call. `ComfySolverRun` joins the two: the guider runs in a worker thread with the
real solver function of `comfy.samplers.sampler_object(name)` (without its `@torch.no_grad`); every
time that solver asks for the denoised latents, the worker hands `(x, sigma)` to the sampler's
thread and waits. The sampler's thread evaluates the guider's model function (`predict`) and hands
the result back with `step`, together with its gradient mode, which the worker adopts for the
solver's arithmetic up to the next request. With gradients off this is exactly core KSampler's
computation (same functions, same order); with gradients on, the solver's arithmetic is part of
the autograd graph.

Only solvers that call the model once per step at the scheduler's sigmas, without fresh noise,
are offered (`SOLVERS`); the run checks each call against the expected sigma. The model function
stays callable after the run (`_KeptGuider`), because backward recomputes checkpointed calls; each
call first makes sure ComfyUI has this clone loaded (loading another clone of the same model takes
the adapters off its layers).

Imported only inside ComfyUI (it imports `comfy`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management as model_management
import comfy.samplers
import torch

from ..drf_core.errors import DRFInputError
from ..drf_core.models.base import DenoisingScheduler, PromptEmbeddings
from .comfy_names import SOLVERS

logger = logging.getLogger(__name__)

# Seconds the worker may take to reach its next denoiser call (model loading included).
HANDOFF_TIMEOUT_S = 3600.0


class _Stop(Exception):
    """Raised inside the worker when the sampler's thread ends the run early."""


@dataclass
class ComfyEmbeddings(PromptEmbeddings):
    """Prompt embeddings with the entries ComfyUI's CONDITIONING carries beside the text tensor, batched
    like it (`pooled_output` `[B, D]` for Flux's vector input, `guidance` as core FluxGuidance sets it)."""

    positive_extras: dict[str, Any] = field(default_factory=dict)
    negative_extras: dict[str, Any] = field(default_factory=dict)

    def select(self, indices: Sequence[int]) -> ComfyEmbeddings:
        chosen = super().select(indices)
        rows = list(indices)
        pick = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in self.positive_extras.items()}
        pick_negative = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in self.negative_extras.items()}
        return ComfyEmbeddings(chosen.positive, chosen.negative, pick, pick_negative)


def _conditioning(tensor: torch.Tensor, extras: dict[str, Any] | None = None) -> list:
    """ComfyUI's CONDITIONING for one batched text tensor `[B, L, D]` and its extra entries."""
    return [[tensor, dict(extras or {})]]


class _KeptGuider(comfy.samplers.CFGGuider):
    """`CFGGuider` whose model function keeps working after `sample` returned.

    `CFGGuider.sample` deletes its prepared model and conditioning when it ends; this one predicts
    from the references `keep()` took while sampling (the same objects), exactly as
    `CFGGuider.predict_noise` does.
    """

    kept: tuple[Any, dict] | None = None

    def keep(self) -> None:
        self.kept = (self.inner_model, self.conds)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        inner_model, conds = self.kept if self.kept is not None else (self.inner_model, self.conds)
        restore = inner_model.current_patcher is None  # the run's cleanup cleared it
        if restore:
            inner_model.current_patcher = self.model_patcher
        try:
            return comfy.samplers.sampling_function(
                inner_model,
                x,
                timestep,
                conds.get("negative", None),
                conds.get("positive", None),
                self.cfg,
                model_options=model_options if model_options is not None else {},
                seed=seed,
            )
        finally:
            if restore:
                inner_model.current_patcher = None


class ComfySolverRun(DenoisingScheduler):
    """One sampling run of a ComfyUI sampler on a ModelPatcher, stepped by the pack's sampler."""

    def __init__(
        self,
        patcher: Any,
        sampler_name: str,
        scheduler_name: str,
        steps: int,
        prepare: Callable[[], None],
        step_range: tuple[int, int | None] = (0, None),
    ) -> None:
        SOLVERS.get(sampler_name)
        if scheduler_name not in comfy.samplers.SCHEDULER_NAMES:
            raise DRFInputError(
                f"ComfyUI has no scheduler {scheduler_name!r}; choose one of {comfy.samplers.SCHEDULER_NAMES}"
            )
        self.patcher = patcher
        self.sampler_name = sampler_name
        # Exactly core KSampler's sigmas (denoise 1.0), including the discarded penultimate sigma of UniPC;
        # a step range cuts them as KSamplerAdvanced's start_at_step / end_at_step do (leftover noise kept).
        self.sigmas = comfy.samplers.KSampler(
            patcher, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler_name, denoise=1.0
        ).sigmas.float()
        first, last = step_range
        if last is not None and last < len(self.sigmas) - 1:
            self.sigmas = self.sigmas[: last + 1]
        self.sigmas = self.sigmas[first:]
        self.timesteps = self.sigmas[:-1]
        self._prepare = prepare
        self._requests: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._extra_args: dict[str, Any] = {}
        self._calls = 0

    # --- the sampler's thread ------------------------------------------------------------------

    def start(
        self,
        noise: torch.Tensor,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        latent_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Start the run from `noise` over `latent_image` (an empty latent when None), as KSampler does.

        The worker begins in the caller's gradient mode, so a run that continues another one's latents
        (`ComfyExpertChain`) keeps them in the autograd graph when gradients are on.
        """
        guider = _KeptGuider(self.patcher)
        positive_extras = getattr(embeddings, "positive_extras", {})
        if embeddings.negative is not None:
            negative = _conditioning(embeddings.negative, getattr(embeddings, "negative_extras", {}))
        else:
            negative = _conditioning(embeddings.positive, positive_extras)
        guider.set_conds(_conditioning(embeddings.positive, positive_extras), negative)
        guider.set_cfg(guidance_scale)
        if latent_image is None:
            latent_image = torch.zeros_like(noise)
        args = (guider, noise, latent_image, torch.is_grad_enabled())
        self._thread = threading.Thread(target=self._work, args=args, name="drf-comfy-solver", daemon=True)
        self._thread.start()
        return self._next_latents()

    def denoise(self, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guider's denoised prediction at `sigma` (CFG, conditioning and model patches applied)."""
        if self._model is None:
            raise RuntimeError("the ComfyUI sampling run has not started (call start first)")
        if not any(loaded.model is self.patcher for loaded in model_management.current_loaded_models):
            model_management.load_models_gpu([self.patcher])
        sigmas = sigma.to(device=latents.device, dtype=torch.float32).reshape(1).expand(latents.shape[0])
        return self._model(latents, sigmas, **self._extra_args)

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        self._replies.put(("denoised", model_output, torch.is_grad_enabled()))
        return self._next_latents()

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self._replies.put(("stop", None, False))
            thread.join()
        self._thread = None

    def _next_latents(self) -> torch.Tensor:
        """The latents of the worker's next denoiser call, or the run's result after its last step."""
        try:
            kind, value = self._requests.get(timeout=HANDOFF_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"ComfyUI's sampler did not answer within {HANDOFF_TIMEOUT_S:.0f} s") from None
        if kind == "error":
            raise value
        return value

    # --- the worker ----------------------------------------------------------------------------

    def _work(self, guider: Any, noise: torch.Tensor, latent_image: torch.Tensor, grad_enabled: bool) -> None:
        try:
            with torch.inference_mode(False), torch.set_grad_enabled(grad_enabled):
                result = guider.sample(noise, latent_image, self._ksampler(), self.sigmas.clone(), seed=None)
            self._requests.put(("done", result))
        except _Stop:
            self._requests.put(("done", None))
        except BaseException as error:  # handed to the sampler's thread, which raises it
            self._requests.put(("error", error))

    def _ksampler(self) -> Any:
        """`sampler_object(name)` with its solver function running through the hand-off."""
        original = comfy.samplers.sampler_object(self.sampler_name)
        solver = getattr(original.sampler_function, "__wrapped__", original.sampler_function)
        run = self

        def stepped_solver(model_k, noise, sigmas, extra_args=None, callback=None, disable=None, **options):
            run._prepare()  # the model is loaded now: make its tensors usable by autograd
            model_k.inner_model.keep()
            run._model, run._extra_args = model_k, dict(extra_args or {})
            return solver(_HandOff(run, model_k), noise, sigmas, extra_args=extra_args, disable=True, **options)

        return comfy.samplers.KSAMPLER(stepped_solver, original.extra_options, original.inpaint_options)

    def _request(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Called by the solver in the worker: hand `x` over, wait for the denoised latents."""
        expected = self.timesteps[self._calls] if self._calls < len(self.timesteps) else None
        if expected is None or not torch.allclose(sigma.float().cpu(), expected.expand(sigma.shape), rtol=0, atol=0):
            raise DRFInputError(
                f"ComfyUI's {self.sampler_name} sampler called the model at sigma {sigma.flatten()[:1].tolist()} "
                f"(call {self._calls + 1}), not at the expected {expected}; use one of {SOLVERS.names()}"
            )
        self._calls += 1
        self._requests.put(("latents", x))
        kind, denoised, grad_enabled = self._replies.get()
        if kind == "stop":
            raise _Stop()
        torch.set_grad_enabled(grad_enabled)
        return denoised


class _HandOff:
    """Looks like the solver's model (`KSamplerX0Inpaint`) but asks the sampler's thread instead."""

    def __init__(self, run: ComfySolverRun, model_k: Any) -> None:
        self.run = run
        self.inner_model = model_k.inner_model

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.run._request(x, sigma)


class ComfyExpertChain(DenoisingScheduler):
    """Wan 2.2 A14B's two experts, chained as ComfyUI's Wan 2.2 templates chain two KSamplerAdvanced.

    The high-noise expert's run does steps `[0, switch)` and returns its latents with the leftover
    noise; the low-noise expert's run starts from them with no added noise for steps `[switch, T)`.
    Each run cuts its own model's sigmas (`step_range`), so a different shift per expert is honoured.
    """

    def __init__(self, high: ComfySolverRun, low: ComfySolverRun) -> None:
        self.runs = (high, low)
        self.timesteps = torch.cat([high.timesteps, low.timesteps])
        self._high_sigmas = set(high.timesteps.tolist())
        self._active = 0
        self._left = len(high.timesteps)
        self._embeddings: PromptEmbeddings | None = None
        self._guidance = 1.0

    def start(self, noise: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float) -> torch.Tensor:
        self._embeddings, self._guidance = embeddings, guidance_scale
        return self.runs[0].start(noise, embeddings, guidance_scale)

    def denoise(self, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The expert whose steps include `sigma` predicts (by value: backward recomputes checkpointed
        calls of the high-noise expert after the low-noise one took over)."""
        return self.runs[0 if float(sigma.flatten()[0]) in self._high_sigmas else 1].denoise(latents, sigma)

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        result = self.runs[self._active].step(model_output, timestep, latents)
        self._left -= 1
        if self._active == 0 and self._left == 0:
            self._active = 1
            return self.runs[1].start(torch.zeros_like(result), self._embeddings, self._guidance, result)
        return result

    def close(self) -> None:
        for run in self.runs:
            run.close()

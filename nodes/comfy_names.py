"""Names of the ComfyUI samplers and schedulers the ComfyUI backend can run (no `comfy` import).

The node specs list these without ComfyUI; the backend checks them against ComfyUI when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..drf_core.registry import Registry


@dataclass(frozen=True)
class Solver:
    """A ComfyUI sampler the pack's loop can step: one model call per step, at `sigmas[i]`, no fresh noise."""

    description: str


SOLVERS: Registry[Solver] = Registry("ComfyUI sampler")
SOLVERS.add("uni_pc", Solver("UniPC (bh1), the sampler of ComfyUI's Wan 2.1 text-to-video template"))
SOLVERS.add("euler", Solver("Euler"))
SOLVERS.add("uni_pc_bh2", Solver("UniPC (bh2)"))

# ComfyUI 0.3.64's `comfy.samplers.SCHEDULER_NAMES`.
COMFY_SCHEDULERS = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

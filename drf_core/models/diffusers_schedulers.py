"""Schedulers of the diffusers backends: the folder's own, or a replacement a user picks.

`SCHEDULERS` holds the scheduler replacements a user can pick ("unipc", "flow_euler"); each entry
builds a diffusers scheduler from the model folder's scheduler config. `DiffusersScheduler` wraps a
diffusers scheduler as the sampler-facing `DenoisingScheduler`.

Knows diffusers' scheduler classes; nothing about model families, sampling loops or training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DRFInputError
from ..registry import Registry
from .base import DenoisingScheduler


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

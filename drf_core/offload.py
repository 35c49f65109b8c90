"""Phase offload: only the models the current phase needs stay on their compute device.

A training step uses its models one after another: the text encoder while encoding prompts, the
video model while sampling, the VAE while decoding, the critic while scoring. With phase offload
(`TrainConfig.offload = "phase"`) the others wait on the host (CPU RAM), so the device holds the
largest phase rather than the sum of all models.

`PhaseOffload` groups modules by name (`TEXT_ENCODER`, `VIDEO_MODEL`, `VAE`, `CRITIC`; a backend
names its own through `offload_groups()`). A forward pre-hook on every submodule of a group moves
that group onto its device the moment any part of it runs and every other group to the host first
(so the device never holds both), which also covers callers that reach a submodule directly (the
VAE's decoder, the critic's vision tower) and the held-out evaluation. Moves are `Module.to`:
parameters keep their identity (optimizer state and LoRA references stay valid) and their `.grad`
moves with them, so a move is value-preserving.

Backward needs care: it runs through the critic, the VAE decode and the last K denoiser steps, and
autograd keeps references to the weights it saved, which must be on the device when backward
reads them. The trainer therefore runs backward in three stages (the critic, to the frames; the
VAE, to the latents; the video model, to the LoRA) and holds the one group each stage reads with
`hold(...)`, during which the hooks move nothing (checkpoint recomputation calls the VAE again).

Once phase offload has run on a set of loaded models it stays on for them (`phase_offload`
returns the same object), so later uses of the same models (previews, evaluation) place them
correctly too; loading the models again gives plain models.

Knows torch modules and devices; nothing about model families, critics or training.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "phase")
TEXT_ENCODER, VIDEO_MODEL, VAE, CRITIC = "text encoder", "video model", "VAE", "critic"
HOST = torch.device("cpu")
# A module whose device a host's memory manager decides (ComfyUI's, for the models the pack loads
# there) carries this attribute set to True; phase offload leaves it alone, so the two never fight.
HOST_MANAGED_ATTRIBUTE = "_drf_host_managed"

GroupSource = Callable[[], dict[str, tuple[list[torch.nn.Module], torch.device]]]

# The offload that manages a module (by the module), so `execution_device` can answer for it.
_MANAGED: weakref.WeakKeyDictionary[torch.nn.Module, PhaseOffload] = weakref.WeakKeyDictionary()


def execution_device(module: torch.nn.Module, fallback: Callable[[torch.nn.Module], torch.device]) -> torch.device:
    """Where `module` computes: its offload's device when one manages it, else `fallback(module)`.

    A module waiting on the host still computes on the device (its pre-hook brings it there), so
    inputs must go to the device, not to where its weights sit right now.
    """
    offload = _MANAGED.get(module)
    if offload is not None:
        return offload.device_of(module)
    return fallback(module)


class PhaseOffload:
    """Keeps one group of modules at a time (plus any held ones) on its compute device.

    `groups()` is asked again at every move, so a module a backend frees (a released text
    encoder) is not kept alive here. `host` is where the others wait (the CPU; the memory tool
    uses the meta device, which keeps no bytes).
    """

    def __init__(self, groups: GroupSource, host: torch.device | str | None = None) -> None:
        self._groups = groups
        self.host = torch.device(host) if host is not None else HOST
        self.active: tuple[str, ...] = ()
        self._held = False
        self._hooked: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.moves: list[tuple[str, str]] = []  # (group, device) in order, for logs and tests
        # Where each group is (unknown until this offload first moves it: then it is moved anyway).
        self.placed: dict[str, torch.device] = {}
        self._left_to_host: set[str] = set()
        self._install_hooks()

    # --- groups --------------------------------------------------------------------------------
    def groups(self) -> dict[str, tuple[list[torch.nn.Module], torch.device]]:
        """The groups this offload moves: modules a host's own memory manager places are left to it."""
        found = {}
        for name, (modules, device) in self._groups().items():
            mine = [m for m in modules if not getattr(m, HOST_MANAGED_ATTRIBUTE, False)]
            if len(mine) < len(modules) and name not in self._left_to_host:
                self._left_to_host.add(name)
                logger.info("phase offload: the %s is placed by the host's memory manager, not moved here", name)
            if mine:
                found[name] = (mine, device)
        return found

    def _install_hooks(self) -> None:
        for name, (modules, _device) in self.groups().items():
            for module in modules:
                _MANAGED[module] = self
                for sub in module.modules():
                    if sub in self._hooked:
                        continue
                    sub.register_forward_pre_hook(self._pre_hook(name))
                    self._hooked.add(sub)

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any) -> None:
            if not self._held and name not in self.active:
                self.use(name)

        return hook

    def device_of(self, module: torch.nn.Module) -> torch.device:
        for modules, device in self.groups().values():
            if any(module is m for m in modules):
                return device
        raise KeyError(f"{type(module).__name__} is not managed by this offload")

    # --- moves ---------------------------------------------------------------------------------
    def _move(self, name: str, modules: list[torch.nn.Module], device: torch.device) -> None:
        """Move one group (`Module.to`: parameters keep their identity, gradients move along)."""
        for module in modules:
            module.to(device)

    def use(self, *names: str) -> None:
        """Put the groups `names` on their devices, every other group on the host (that first)."""
        groups = self.groups()
        for gone in [name for name in self.placed if name not in groups]:  # freed (a released text encoder)
            del self.placed[gone]
        wanted = tuple(name for name in names if name in groups)
        leaving = [name for name in groups if name not in wanted and self.placed.get(name) != self.host]
        for name in leaving:
            self._place(name, groups[name][0], self.host)
        if leaving:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for name in wanted:
            modules, device = groups[name]
            if self.placed.get(name) != device:
                self._place(name, modules, device)
        self.active = wanted

    def _place(self, name: str, modules: list[torch.nn.Module], device: torch.device) -> None:
        self._move(name, modules, device)
        self.placed[name] = device
        self.moves.append((name, str(device)))
        logger.debug("phase offload: %s -> %s", name, device)

    @contextlib.contextmanager
    def hold(self, *names: str) -> Iterator[None]:
        """Keep exactly `names` on the device inside the block; calls move nothing (backward)."""
        self.use(*names)
        self._held = True
        try:
            yield
        finally:
            self._held = False


_OFFLOADS: weakref.WeakKeyDictionary[Any, PhaseOffload] = weakref.WeakKeyDictionary()


def phase_offload(backend: Any, critic_modules: list[torch.nn.Module], critic_device: torch.device) -> PhaseOffload:
    """The phase offload of `backend`'s groups plus the critic's modules (made once per backend).

    The same backend trained with another critic later gets that critic added to its offload.
    """
    state = {"critic": (list(critic_modules), torch.device(critic_device))}
    offload = _OFFLOADS.get(backend)
    if offload is None:

        def groups() -> dict[str, tuple[list[torch.nn.Module], torch.device]]:
            return {**backend.offload_groups(), CRITIC: state["critic"]}

        offload = PhaseOffload(groups)
        offload._critic_state = state  # type: ignore[attr-defined]
        _OFFLOADS[backend] = offload
    else:
        offload._critic_state.update(state)  # type: ignore[attr-defined]
        offload._install_hooks()
    return offload


def active_offload(backend: Any) -> PhaseOffload | None:
    """The phase offload installed on `backend` by an earlier run, if any."""
    return _OFFLOADS.get(backend)

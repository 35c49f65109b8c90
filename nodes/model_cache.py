"""Loaded models kept between queue runs, behind small handles that travel on the wires.

A loader node returns a `ModelHandle` (what to load: kind, folder, dtype, device, loader options), not the model.
`handle.get()` loads it once and keeps it in `MODEL_CACHE`, so every later run (and every node of
the same run) reuses it. `MODEL_CACHE.release()` drops models; a later `get()` simply loads again.
Because the handle, not the model, sits in the host's output cache, releasing really frees the memory.

A host with a memory manager of its own (ComfyUI: `comfy_memory.ComfyModelHost`) sets
`MODEL_CACHE.host`: it adopts each model the cache loads and is told each time one is used, so
the host decides which device holds the weights.

One model of each kind is kept (loading another video model replaces the first): the models this
pack uses are several GiB each. Knows how to call a loader; nothing about ComfyUI.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..drf_core.critics import load_critic
from ..drf_core.models import load_video_backend
from ..drf_core.registry import Registry

logger = logging.getLogger(__name__)

LOADERS: Registry[Callable[..., Any]] = Registry("model kind")
LOADERS.add("video_model", load_video_backend)
LOADERS.add("critic", load_critic)


@dataclass(frozen=True)
class ModelHandle:
    """What to load; `get()` returns the loaded model (from the cache when it is there)."""

    kind: str
    path: str
    dtype: str
    device: str
    # Keyword options of the kind's loader, e.g. (("quantization", "int8"),) for a critic.
    options: tuple[tuple[str, str], ...] = ()

    def get(self) -> Any:
        return MODEL_CACHE.get(self)

    def release(self) -> None:
        """Drop this model from the cache (if it is the one loaded); the next `get()` loads it afresh."""
        if self in MODEL_CACHE.loaded():
            MODEL_CACHE.release(kind=self.kind)

    def __str__(self) -> str:
        extra = "".join(f", {name} {value}" for name, value in self.options)
        return f"{self.kind} {self.path} ({self.dtype}, {self.device}{extra})"


class ModelHost(Protocol):
    """A host's memory manager: `adopt` a model just loaded; `use` one about to be used."""

    def adopt(self, label: str, model: Any) -> None: ...

    def use(self, label: str, model: Any) -> None: ...


def _model_device(model: Any) -> torch.device | None:
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else None


class ModelCache:
    """At most one loaded model per kind; thread-safe; `release` frees on request."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[ModelHandle, Any]] = {}
        self._lock = threading.RLock()
        self.loads = 0
        self.host: ModelHost | None = None

    def get(self, handle: ModelHandle) -> Any:
        with self._lock:
            cached = self._models.get(handle.kind)
            if cached is not None and cached[0] == handle:
                model = cached[1]
            else:
                if cached is not None:
                    self.release(kind=handle.kind)
                logger.info("loading %s", handle)
                model = LOADERS.get(handle.kind)(
                    handle.path, dtype=handle.dtype, device=handle.device, **dict(handle.options)
                )
                self.loads += 1
                self._models[handle.kind] = (handle, model)
                if self.host is not None:
                    self.host.adopt(str(handle), model)
            if self.host is not None:
                self.host.use(str(handle), model)
            return model

    def loaded(self) -> list[ModelHandle]:
        with self._lock:
            return [handle for handle, _ in self._models.values()]

    def release(self, device: torch.device | str | None = None, kind: str | None = None) -> list[ModelHandle]:
        """Drop the models on `device` (all devices when None) or of `kind`; returns what was dropped."""
        target = torch.device(device) if device is not None else None
        with self._lock:
            dropped = []
            for name, (handle, model) in list(self._models.items()):
                if kind is not None and name != kind:
                    continue
                if target is not None and not _same_device(_model_device(model), target):
                    continue
                del self._models[name]
                dropped.append(handle)
            if dropped:
                logger.info("released %s", ", ".join(str(h) for h in dropped))
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return dropped


def _same_device(a: torch.device | None, b: torch.device) -> bool:
    if a is None:
        return True  # unknown: release it rather than keep memory the host asked for
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


MODEL_CACHE = ModelCache()

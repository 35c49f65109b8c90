"""How a video model's frozen base weights are stored: as loaded, or in fp8 with the LoRA on top.

`VIDEO_WEIGHT_STORAGES` maps the user-facing names ("auto", "fp8_e4m3fn", "fp8_e5m2") to a storage
dtype (None: as loaded). `store_video_weights(backend, storage)` applies one to a loaded backend
(presets call it at train time); the backend does the work (`VideoBackend.store_base_weights`; the
diffusers Wan backend uses diffusers' layerwise casting: each layer's weights are kept in fp8 and
cast to the compute dtype only while that layer runs, LoRA layers are skipped and stay trainable in
full precision).

Knows the names and dtypes; nothing about a model family.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import DRFInputError
from ..registry import Registry

logger = logging.getLogger(__name__)

VIDEO_WEIGHT_STORAGES: Registry[torch.dtype | None] = Registry("video weight storage")
VIDEO_WEIGHT_STORAGES.add("auto", None)
VIDEO_WEIGHT_STORAGES.add("fp8_e4m3fn", torch.float8_e4m3fn)
VIDEO_WEIGHT_STORAGES.add("fp8_e5m2", torch.float8_e5m2)


def storage_dtype(storage: str, where: str = "video_weight_storage") -> torch.dtype | None:
    """The dtype `storage` names (None for "auto"); a clear error for an unknown name."""
    if storage not in VIDEO_WEIGHT_STORAGES:
        raise DRFInputError(
            f"{where}: unknown storage {storage!r}; choose one of: {', '.join(VIDEO_WEIGHT_STORAGES.names())}"
        )
    return VIDEO_WEIGHT_STORAGES.get(storage)


def store_video_weights(backend: Any, storage: str) -> Any:
    """Store the backend's frozen base weights as `storage`, in place; returns the backend.

    "auto" changes nothing. Storing twice in the same format does nothing; another format on a backend
    already stored in fp8 is refused (the original weights are gone: load the model again).
    """
    dtype = storage_dtype(storage)
    current = getattr(backend, "weight_storage", "auto")
    if dtype is None or storage == current:
        return backend
    if current != "auto":
        raise DRFInputError(
            f"the video model's base weights are already stored as {current!r}; they cannot be changed to "
            f"{storage!r} (the original weights are gone): load the video model again"
        )
    backend.store_base_weights(dtype)
    backend.weight_storage = storage
    logger.info("video model: frozen base weights stored as %s", storage)
    return backend

"""Checkpointing the Wan VAE decoder's residual blocks, with their causal feature cache.

The Wan VAE decodes one latent frame at a time; each causal 3-D convolution reads the last frames
of the previous chunk from a shared cache list (`feat_cache`, advanced by `feat_idx`) and writes its
own. `checkpoint_residual_blocks(decoder)` makes every residual block a pure function for the
duration of a decode: its cache slots go in, new ones come out, through
`torch.utils.checkpoint` (non-reentrant, so it nests inside the per-latent-frame checkpoint of
`WanBackend.decode`). Backward then keeps each block's input instead of its activations and
recomputes one block at a time. The result and the gradients are the block's own (recomputation
sees exactly the inputs the forward saw).

Works for diffusers' `WanResidualBlock` and ComfyUI's `ResidualBlock` (the same layout: two
cached causal convolutions, `forward(x, feat_cache, feat_idx)`). Knows nothing else about models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

RESIDUAL_BLOCK_CLASSES = ("WanResidualBlock", "ResidualBlock")


def _cached_slots(block: torch.nn.Module) -> int:
    """How many cache entries a block reads and writes: its causal convolutions over time (k_t > 1)."""
    return sum(1 for module in block.modules() if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1)


def _checkpointed_forward(block: torch.nn.Module, original: Any, slots: int) -> Any:
    def pure(x: torch.Tensor, *entries: Any) -> tuple[Any, ...]:
        local = list(entries)
        index = [0]
        out = original(x, feat_cache=local, feat_idx=index)
        if index[0] != slots:
            raise RuntimeError(
                f"{type(block).__name__} used {index[0]} cache slots, expected {slots}; this VAE's residual blocks "
                "are not the Wan layout, so decode.checkpoint_residual_blocks cannot be used with it"
            )
        return (out, *local)

    def forward(x: torch.Tensor, feat_cache: list[Any] | None = None, feat_idx: list[int] | None = None) -> Any:
        if feat_cache is None or feat_idx is None or not torch.is_grad_enabled():
            if feat_cache is None:
                return original(x)
            return original(x, feat_cache=feat_cache, feat_idx=feat_idx)
        start = feat_idx[0]
        out, *entries = checkpoint(pure, x, *feat_cache[start : start + slots], use_reentrant=False)
        feat_cache[start : start + slots] = entries
        feat_idx[0] = start + slots
        return out

    return forward


@contextlib.contextmanager
def checkpoint_residual_blocks(decoder: torch.nn.Module) -> Iterator[int]:
    """Inside the block, every residual block of `decoder` is checkpointed (while grad is on).

    Yields how many blocks were wrapped; their own `forward` comes back on exit.
    """
    wrapped: list[torch.nn.Module] = []
    try:
        for module in decoder.modules():
            if type(module).__name__ not in RESIDUAL_BLOCK_CLASSES or "forward" in vars(module):
                continue
            module.forward = _checkpointed_forward(module, module.forward, _cached_slots(module))
            wrapped.append(module)
        yield len(wrapped)
    finally:
        for module in wrapped:
            del module.forward

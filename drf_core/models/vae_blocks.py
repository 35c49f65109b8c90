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
# Layers that are a function of their one input (no cache): diffusers' and ComfyUI's names.
PURE_LAYER_CLASSES = ("WanRMS_norm", "RMS_norm", "WanUpsample", "Upsample")


def _cached_slots(block: torch.nn.Module) -> int:
    """How many cache entries a block reads and writes: its causal convolutions over time (k_t > 1)."""
    return sum(1 for module in block.modules() if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] > 1)


def _checkpointed_forward(block: torch.nn.Module, original: Any, slots: int) -> Any:
    def pure(x: torch.Tensor, *entries: Any) -> tuple[Any, ...]:
        local = list(entries)
        index = [0]
        with _recomputed_pure_layers(block):  # in the forward and in its recomputation alike
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


class _RecomputedLayer(torch.autograd.Function):
    """`layer(x)` for a frozen layer that acts on each frame on its own, one frame at a time,
    saving only `x` and recomputing the layer frame by frame in backward.

    The layers this wraps (RMS norms over channels, nearest upsampling) compute every output
    element from its own frame only, so frame by frame is the same computation; their float32
    temporaries then exist for one frame at a time, in the forward and in backward. Frames are
    dim 2 of a video tensor `[B, C, T, H, W]` and dim 0 of a `[B*T, C, H, W]` batch of frames.

    An autograd function rather than `torch.utils.checkpoint`: it nests inside a residual block's
    non-reentrant checkpoint (whose recomputation then sees the same saved tensors) and works
    under `torch.autograd.grad`, which reentrant checkpoints refuse.
    """

    @staticmethod
    def forward(ctx: Any, layer: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.layer = layer
        ctx.save_for_backward(x)
        return torch.cat([layer(frame) for frame in _frames(x)], _frame_dim(x))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (x,) = ctx.saved_tensors
        grads = []
        for frame, frame_grad in zip(_frames(x), _frames(grad), strict=True):
            frame = frame.detach().requires_grad_()
            with torch.enable_grad():
                out = ctx.layer(frame)
            grads.append(torch.autograd.grad(out, frame, frame_grad)[0])
        return None, torch.cat(grads, _frame_dim(x))


def _frame_dim(x: torch.Tensor) -> int:
    return 2 if x.dim() == 5 else 0


def _frames(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return x.split(1, _frame_dim(x))


def _checkpointed_layer(original: Any) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return original(x)
        return _RecomputedLayer.apply(original, x)

    return forward


@contextlib.contextmanager
def checkpoint_residual_blocks(decoder: torch.nn.Module) -> Iterator[int]:
    """Inside the block, every residual block of `decoder` is checkpointed (while grad is on), and
    so is every RMS norm and upsampling layer, inside the blocks and out.

    The norms and upsamplers compute in float32 on a bf16 decoder (diffusers' Wan VAE upcasts
    both); checkpointed, they keep only their bf16 input for backward, so those float32 copies
    live only while their own layer runs backward, not for a whole residual block's or latent
    frame's backward.
    Yields how many residual blocks were wrapped; every wrapped module's own `forward` comes back on exit.
    """
    inside_blocks = {
        id(inner)
        for module in decoder.modules()
        if type(module).__name__ in RESIDUAL_BLOCK_CLASSES
        for inner in module.modules()
    }
    wrapped: list[torch.nn.Module] = []
    try:
        for module in decoder.modules():
            if type(module).__name__ in RESIDUAL_BLOCK_CLASSES and "forward" not in vars(module):
                module.forward = _checkpointed_forward(module, module.forward, _cached_slots(module))
                wrapped.append(module)
        with _recomputed_pure_layers(decoder, skip=inside_blocks):  # a block wraps its own when it runs
            yield len(wrapped)
    finally:
        for module in wrapped:
            del module.forward


@contextlib.contextmanager
def _recomputed_pure_layers(root: torch.nn.Module, skip: set[int] = frozenset()) -> Iterator[None]:
    """Inside the block, the RMS norms and upsamplers under `root` (but those in `skip`) save only their input."""
    wrapped = []
    try:
        for module in root.modules():
            if type(module).__name__ in PURE_LAYER_CLASSES and id(module) not in skip and "forward" not in vars(module):
                module.forward = _checkpointed_layer(module.forward)
                wrapped.append(module)
        yield
    finally:
        for module in wrapped:
            del module.forward

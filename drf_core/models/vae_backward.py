"""Backward through a causal video VAE decode, one latent frame at a time, optionally in tiles.

A Wan-style decoder decodes one latent frame per call and carries a causal cache (the last frames
of every temporal convolution's input) from one call to the next. `decode_frame_by_frame` runs the
decode with the least memory an exact backward can have:

- forward decodes without keeping any activation; it keeps the latents and, for every latent
  frame, the cache it starts from (on a host device when given: CPU RAM);
- backward decodes the latent frames again, from the last to the first, each from its kept cache,
  and hands the gradient of that cache on to the frame before.

With `tiles` > 1 and a `DecoderSplit` for the decoder, backward also cuts each frame into
`tiles x tiles` spatial tiles: the decoder is split where its receptive field stops being global
(the trunk: the input convolution, the middle block with its attention, the upsamplers that double
time) from the tail (resolution-doubling residual stages and the head: convolutions and per-pixel
layers only). The trunk is recomputed whole; the tail is recomputed per tile on a crop that adds
`halo` pixels of context on every side, enough that the tile's own outputs are computed exactly
as on the whole frame, and only those outputs' gradients flow back. The tiles' gradients add up to
the whole frame's (up to floating-point summation order, since convolutions over a crop may sum
in another order). Each tile fetches its crop of the kept cache from the host, so the device never
holds a whole frame's tail activations or caches.

`DECODER_SPLITS` knows the layouts of diffusers' `WanDecoder3d` (Wan 2.1 VAE) and ComfyUI's
`comfy.ldm.wan.vae.Decoder3d` (Wan 2.1 VAE) and `comfy.ldm.wan.vae2_2.Decoder3d` (Wan 2.2 VAE); a
decoder without one is recomputed whole (tiles are ignored, logged).
Knows nothing about training or which frames are scored.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..registry import Registry

logger = logging.getLogger(__name__)

CACHE_FRAMES = 2  # frames a causal convolution's cache keeps (Wan's CACHE_T)

# One causal decoder call: (latent frame [B, C, 1, h, w], its index, the cache before it) ->
# (its pixel frames, the cache after it). Must not change the list it is given.
DecoderStep = Callable[[torch.Tensor, int, list[Any]], tuple[torch.Tensor, list[Any]]]


@dataclass(frozen=True)
class DecoderSplit:
    """A decoder cut into a trunk (global receptive field) and a tail (local), over one cache list.

    `trunk(x, index, cache)` and `tail(h, index, cache)` update the cache list in place: the trunk
    reads and writes slots `[0, trunk_slots)`, the tail the rest. `halo` is how many pixels of the
    tail's input a tile needs on each side (at least the tail's spatial receptive radius there).
    """

    trunk: Callable[[torch.Tensor, int, list[Any]], torch.Tensor]
    tail: Callable[[torch.Tensor, int, list[Any]], torch.Tensor]
    trunk_slots: int
    halo: int


# "module.ClassName" of a decoder -> a function building its split (None: this instance has no known split).
DECODER_SPLITS: Registry[Callable[[torch.nn.Module], DecoderSplit | None]] = Registry("decoder split")


def split_decoder(decoder: torch.nn.Module) -> DecoderSplit | None:
    name = f"{type(decoder).__module__}.{type(decoder).__name__}"
    return DECODER_SPLITS.get(name)(decoder) if name in DECODER_SPLITS else None


def decode_frame_by_frame(
    step: DecoderStep,
    z: torch.Tensor,
    cache: list[Any],
    host: torch.device | str | None = None,
    split: DecoderSplit | None = None,
    tiles: int = 1,
    cache_interval: int = 1,
) -> torch.Tensor:
    """Every latent frame of `z` through `step`, with the frame-by-frame (and tiled) backward above.

    `cache` is the empty cache the first frame starts from; `host` keeps the caches (None: on `z`'s
    device); `split` and `tiles` > 1 tile the backward. `cache_interval` > 1 keeps only every n-th
    frame's starting cache: backward decodes the frames in between once more without gradient to
    get theirs back (at most n - 1 of those are kept at a time), trading one more decode of the
    clip for about 1/n of the kept caches' memory. The values are `step`'s own.
    """
    if cache_interval < 1:
        raise ValueError(f"cache_interval must be at least 1, got {cache_interval}")
    host = torch.device(host) if host is not None else None
    if tiles > 1 and split is None:
        logger.info("decode.backward_tiles: no known split for this VAE's decoder; its backward runs untiled")
    plan = _Plan(step, host, split if tiles > 1 else None, tiles, cache_interval)
    return _FrameByFrameDecode.apply(plan, list(cache), z)


@dataclass(frozen=True)
class _Plan:
    step: DecoderStep
    host: torch.device | None
    split: DecoderSplit | None
    tiles: int
    interval: int  # the forward keeps every `interval`-th latent frame's starting cache


def _is_float(entry: Any) -> bool:
    return isinstance(entry, torch.Tensor) and entry.is_floating_point()


def _moved(cache: list[Any], device: torch.device | None) -> list[Any]:
    if device is None:
        return list(cache)
    return [entry.to(device) if isinstance(entry, torch.Tensor) else entry for entry in cache]


class _FrameByFrameDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: _Plan, cache: list[Any], z: torch.Tensor) -> torch.Tensor:
        starts: dict[int, list[Any]] = {}
        outputs, lengths = [], []
        for index in range(z.shape[2]):
            if index % plan.interval == 0:
                starts[index] = _moved(cache, plan.host)
            out, cache = plan.step(z[:, :, index : index + 1], index, cache)
            outputs.append(out)
            lengths.append(out.shape[2])
        ctx.plan, ctx.starts, ctx.lengths = plan, starts, lengths
        ctx.save_for_backward(z)
        return torch.cat(outputs, 2)

    @staticmethod
    def backward(ctx: Any, grad_video: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        (z,) = ctx.saved_tensors
        plan: _Plan = ctx.plan
        starts: dict[int, list[Any]] = ctx.starts
        grad_z = torch.zeros_like(z)
        ends = list(itertools.accumulate(ctx.lengths))
        grad_after: dict[int, torch.Tensor] = {}  # cache slot -> gradient of the cache after this frame
        for index in reversed(range(z.shape[2])):
            if index not in starts:
                _regenerate_starts(plan, z, starts, index)
            start = starts.pop(index)
            frame = z[:, :, index : index + 1].detach().requires_grad_()
            frame_grad = grad_video[:, :, ends[index] - ctx.lengths[index] : ends[index]]
            backward_frame = _tiled_frame if plan.split is not None else _whole_frame
            found, grad_after = backward_frame(plan, index, frame, start, frame_grad, grad_after)
            if found is not None:
                grad_z[:, :, index : index + 1] = found
        return None, None, grad_z


def _regenerate_starts(plan: _Plan, z: torch.Tensor, starts: dict[int, list[Any]], index: int) -> None:
    """The starting caches of the latent frames after the last kept one up to `index`, decoded again
    (without gradient) from that kept cache: the same values the forward had."""
    first = index - index % plan.interval
    cache = _moved(starts[first], z.device)
    with torch.no_grad():
        for frame in range(first, index):
            _, cache = plan.step(z[:, :, frame : frame + 1], frame, cache)
            starts[frame + 1] = _moved(cache, plan.host)


def _leaves(cache: list[Any], slots: range, device: torch.device) -> dict[int, torch.Tensor]:
    return {s: cache[s].to(device).detach().requires_grad_() for s in slots if _is_float(cache[s])}


def _with(cache: list[Any], leaves: dict[int, torch.Tensor], slots: range) -> list[Any]:
    """`cache` with `leaves` in their slots and None in every slot outside `slots` (unused there)."""
    return [leaves.get(s, entry) if s in slots else None for s, entry in enumerate(cache)]


def _cache_outputs(cache_after: list[Any], grad_after: dict[int, torch.Tensor], slots: range, crop: Any = None):
    """(outputs, grads) for the cache entries after this frame that the frame after it sent gradient to."""
    outputs, grads = [], []
    for slot in slots:
        entry, grad = cache_after[slot], grad_after.get(slot)
        if grad is None or not isinstance(entry, torch.Tensor) or not entry.requires_grad:
            continue
        if crop is not None:
            entry, grad = crop(entry, grad)
        outputs.append(entry)
        grads.append(grad.to(entry.device))
    return outputs, grads


def _whole_frame(plan, index, frame, start, frame_grad, grad_after):
    slots = range(len(start))
    leaves = _leaves(start, slots, frame.device)
    cache = _with(start, leaves, slots)
    with torch.enable_grad():
        out, cache_after = plan.step(frame, index, cache)
    outputs, grads = _cache_outputs(cache_after, grad_after, slots)
    found = torch.autograd.grad([out, *outputs], [frame, *leaves.values()], [frame_grad, *grads], allow_unused=True)
    grads_before = {slot: grad for slot, grad in zip(leaves, found[1:], strict=True) if grad is not None}
    return found[0], {slot: _to_host(grad, plan.host) for slot, grad in grads_before.items()}


def _to_host(tensor: torch.Tensor, host: torch.device | None) -> torch.Tensor:
    return tensor if host is None else tensor.to(host)


def _tiled_frame(plan, index, frame, start, frame_grad, grad_after):
    split: DecoderSplit = plan.split
    device = frame.device
    trunk_slots, tail_slots = range(split.trunk_slots), range(split.trunk_slots, len(start))
    trunk_leaves = _leaves(start, trunk_slots, device)
    trunk_cache = _with(start, trunk_leaves, trunk_slots)
    with torch.enable_grad():
        h = split.trunk(frame, index, trunk_cache)
    grad_h = torch.zeros_like(h)
    # The gradient of the tail's starting cache, gathered tile by tile where the caches are kept.
    tail_grads = {s: torch.zeros_like(start[s]) for s in tail_slots if _is_float(start[s])}
    height, width = h.shape[-2:]
    for top, bottom in _bands(height, plan.tiles):
        for left, right in _bands(width, plan.tiles):
            core = (top, bottom, left, right)
            crop = (max(0, top - split.halo), min(height, bottom + split.halo))
            crop += (max(0, left - split.halo), min(width, right + split.halo))
            h_tile = h.detach()[..., crop[0] : crop[1], crop[2] : crop[3]].clone().requires_grad_()
            cropped = [_crop(entry, crop, width) if s in tail_slots else None for s, entry in enumerate(start)]
            leaves = _leaves(cropped, tail_slots, device)
            cache = _with(cropped, leaves, tail_slots)

            def core_of(entry: torch.Tensor, grad: torch.Tensor, crop=crop, core=core) -> tuple:
                factor = entry.shape[-1] // (crop[3] - crop[2])
                return _core(entry, core, crop, factor), _region(grad, core, factor)

            with torch.enable_grad():  # the core slices too: a view made without grad has no graph
                out = split.tail(h_tile, index, cache)
                scale = out.shape[-1] // h_tile.shape[-1]
                outputs = [_core(out, core, crop, scale)]
                grads = [frame_grad[..., top * scale : bottom * scale, left * scale : right * scale]]
                more, more_grads = _cache_outputs(cache, grad_after, tail_slots, core_of)
                found = torch.autograd.grad(
                    [*outputs, *more], [h_tile, *leaves.values()], [*grads, *more_grads], allow_unused=True
                )
            if found[0] is not None:
                grad_h[..., crop[0] : crop[1], crop[2] : crop[3]] += found[0]
            for slot, grad in zip(leaves, found[1:], strict=True):
                if grad is not None:
                    factor = grad.shape[-1] // (crop[3] - crop[2])
                    _region(tail_grads[slot], crop, factor).add_(grad.to(tail_grads[slot].device))
            del out, outputs, more, found, cache, leaves
    outputs, grads = _cache_outputs(trunk_cache, grad_after, trunk_slots)
    found = torch.autograd.grad([h, *outputs], [frame, *trunk_leaves.values()], [grad_h, *grads], allow_unused=True)
    grads_before = {s: _to_host(g, plan.host) for s, g in zip(trunk_leaves, found[1:], strict=True) if g is not None}
    return found[0], {**grads_before, **tail_grads}


def _bands(size: int, count: int) -> list[tuple[int, int]]:
    """`count` near-equal [start, end) bands covering 0..size (fewer when size is smaller)."""
    count = max(1, min(count, size))
    edges = [round(i * size / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def _region(tensor: torch.Tensor, box: tuple[int, int, int, int], factor: int) -> torch.Tensor:
    top, bottom, left, right = box
    return tensor[..., top * factor : bottom * factor, left * factor : right * factor]


def _core(tensor: torch.Tensor, core: tuple[int, int, int, int], crop: tuple[int, int, int, int], factor: int):
    """The part of a crop's `tensor` (at `factor` x the tail input's resolution) that is the tile's core."""
    top, bottom, left, right = core
    return _region(tensor, (top - crop[0], bottom - crop[0], left - crop[2], right - crop[2]), factor)


def _crop(entry: Any, crop: tuple[int, int, int, int], width: int) -> Any:
    """A kept cache entry's part under `crop` (its resolution told by its width vs the tail input's)."""
    if not isinstance(entry, torch.Tensor):
        return entry
    return _region(entry, crop, entry.shape[-1] // width)


# ----------------------------------------------------------------------------------------------
# Splits of the Wan decoders: the Wan 2.1 VAE in diffusers' and ComfyUI's layouts, the Wan 2.2 VAE in ComfyUI's
# ----------------------------------------------------------------------------------------------


def _cached_conv(conv: torch.nn.Module, x: torch.Tensor, cache: list[Any], slot: list[int]) -> torch.Tensor:
    """A causal convolution called as the decoders' forward calls their first and last one."""
    index = slot[0]
    cache_x = x[:, :, -CACHE_FRAMES:].clone()
    if cache_x.shape[2] < CACHE_FRAMES and cache[index] is not None:
        cache_x = torch.cat([cache[index][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    x = conv(x, cache[index])
    cache[index] = cache_x
    slot[0] += 1
    return x


def _tail_halo(modules: list[torch.nn.Module]) -> int:
    """Spatial receptive radius of `modules`, counting every convolution's radius at the coarsest
    resolution (an upper bound: those after a 2x upsampling reach half as far in the input)."""
    radius = 0
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Conv3d)):
                radius += (layer.kernel_size[-1] - 1) // 2
    return radius


def _slots(modules: list[torch.nn.Module]) -> int:
    return sum(
        1
        for module in modules
        for layer in module.modules()
        if isinstance(layer, torch.nn.Conv3d) and layer.kernel_size[0] > 1
    )


@DECODER_SPLITS.register("diffusers.models.autoencoders.autoencoder_kl_wan.WanDecoder3d")
def _diffusers_wan_split(decoder: torch.nn.Module) -> DecoderSplit | None:
    blocks = list(decoder.up_blocks)
    if any(type(block).__name__ != "WanUpBlock" for block in blocks):
        return None  # Wan 2.2's residual up blocks: not this layout
    temporal = [i for i, b in enumerate(blocks) if b.upsamplers is not None and b.upsamplers[0].mode == "upsample3d"]
    cut = temporal[-1] + 1 if temporal else 0

    def trunk(x: torch.Tensor, index: int, cache: list[Any]) -> torch.Tensor:
        slot = [0]
        x = _cached_conv(decoder.conv_in, x, cache, slot)
        x = decoder.mid_block(x, feat_cache=cache, feat_idx=slot)
        for block in blocks[:cut]:
            x = block(x, feat_cache=cache, feat_idx=slot, first_chunk=index == 0)
        return x

    def tail(h: torch.Tensor, index: int, cache: list[Any]) -> torch.Tensor:
        slot = [trunk_slots]
        for block in blocks[cut:]:
            h = block(h, feat_cache=cache, feat_idx=slot, first_chunk=index == 0)
        h = decoder.nonlinearity(decoder.norm_out(h))
        return _cached_conv(decoder.conv_out, h, cache, slot)

    trunk_slots = _slots([decoder.conv_in, decoder.mid_block, *blocks[:cut]])
    return DecoderSplit(trunk, tail, trunk_slots, _tail_halo([*blocks[cut:], decoder.conv_out]))


def _comfy_split(decoder: torch.nn.Module, first_chunk: bool) -> DecoderSplit:
    """ComfyUI's Wan decoders: `conv1`, `middle`, `upsamples`, `head`, cut after the last upsample layer
    that upsamples in time. `first_chunk`: the upsample layers take it (true for latent frame 0)."""
    layers = list(decoder.upsamples)
    modes = [{getattr(m, "mode", None) for m in layer.modules()} for layer in layers]
    in_time = [i for i, found in enumerate(modes) if "upsample3d" in found]
    cut = in_time[-1] + 1 if in_time else 0

    def upsample(layer: torch.nn.Module, x: torch.Tensor, index: int, cache: list[Any], slot: list[int]):
        return layer(x, cache, slot, index == 0) if first_chunk else layer(x, cache, slot)

    def trunk(x: torch.Tensor, index: int, cache: list[Any]) -> torch.Tensor:
        slot = [0]
        x = _cached_conv(decoder.conv1, x, cache, slot)
        for layer in decoder.middle:
            x = layer(x, cache, slot) if _slots([layer]) else layer(x)
        for layer in layers[:cut]:
            x = upsample(layer, x, index, cache, slot)
        return x

    def tail(h: torch.Tensor, index: int, cache: list[Any]) -> torch.Tensor:
        slot = [trunk_slots]
        for layer in layers[cut:]:
            h = upsample(layer, h, index, cache, slot)
        for layer in decoder.head:
            h = _cached_conv(layer, h, cache, slot) if isinstance(layer, torch.nn.Conv3d) else layer(h)
        return h

    trunk_slots = _slots([decoder.conv1, *decoder.middle, *layers[:cut]])
    return DecoderSplit(trunk, tail, trunk_slots, _tail_halo([*layers[cut:], *decoder.head]))


@DECODER_SPLITS.register("comfy.ldm.wan.vae.Decoder3d")
def _comfy_wan21_split(decoder: torch.nn.Module) -> DecoderSplit | None:
    """The Wan 2.1 VAE's decoder: residual blocks, attention and `Resample` layers in `upsamples`."""
    return _comfy_split(decoder, first_chunk=False)


@DECODER_SPLITS.register("comfy.ldm.wan.vae2_2.Decoder3d")
def _comfy_wan22_split(decoder: torch.nn.Module) -> DecoderSplit | None:
    """The Wan 2.2 VAE's decoder: residual up blocks (`Up_ResidualBlock`, whose shortcut `DupUp3D` only
    repeats pixels) that take `first_chunk` for latent frame 0."""
    return _comfy_split(decoder, first_chunk=True)

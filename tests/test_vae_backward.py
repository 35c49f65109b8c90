"""The VAE decode's frame-by-frame backward, whole and in spatial tiles (drf_core/models/vae_backward.py),
on the tiny diffusers Wan VAE (ComfyUI's decoder: tests/test_comfyui_native.py)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from drf_core.config import VideoSpec
from drf_core.models import load_video_backend, vae_backward
from drf_core.models.base import DecodeOptions
from drf_core.models.vae_backward import decode_frame_by_frame, split_decoder

SIZE = 64  # pixels: the tail's input is 32 x 32, so 2 and 3 tiles per side leave cores narrower than the halo


@pytest.fixture(scope="module")
def backend(tiny_models):
    return load_video_backend(tiny_models.wan, "fp32", "cpu")


@pytest.fixture(scope="module")
def latents(backend):
    return backend.init_noise(VideoSpec(SIZE, SIZE, 9), 1, torch.Generator().manual_seed(3))  # 3 latent frames


def _decode_with_grad(backend, latents, **options):
    x = latents.clone().requires_grad_()
    frames = backend.decode(x, [0, 4, 8], DecodeOptions(**options))
    weights = torch.linspace(-1, 1, frames.numel()).view_as(frames)
    (frames * weights).sum().backward()
    return frames.detach(), x.grad


def test_trunk_then_tail_is_the_decoder(backend, latents):
    decoder = backend.vae.decoder
    split = split_decoder(decoder)
    assert split is not None and split.halo > 0 and split.trunk_slots > 0
    x = backend.vae.post_quant_conv(latents)
    backend.vae.clear_cache()
    slots = len(backend.vae._feat_map)
    whole_cache, parts_cache = [None] * slots, [None] * slots
    with torch.no_grad():
        for index in range(x.shape[2]):
            frame = x[:, :, index : index + 1]
            whole = decoder(frame, feat_cache=whole_cache, feat_idx=[0], first_chunk=index == 0)
            parts = split.tail(split.trunk(frame, index, parts_cache), index, parts_cache)
            assert torch.equal(parts, whole), index
            assert all(map(_same_entry, parts_cache, whole_cache)), index


def _same_entry(mine, theirs) -> bool:
    """Cache entries: tensors, None, or the decoder's "Rep" marker."""
    if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
        return torch.equal(mine, theirs)
    return type(mine) is type(theirs) and mine == theirs


@pytest.mark.parametrize("interval", [1, 2, 3])
def test_frame_by_frame_backward_equals_autograd(backend, latents, interval):
    """Whatever share of the starting caches the forward keeps (3 latent frames: all, 2, the first)."""
    plain_frames, plain_grad = _decode_with_grad(backend, latents)
    frames, grad = _decode_with_grad(
        backend, latents, frame_by_frame_backward=True, cache_host=torch.device("cpu"), cache_interval=interval
    )
    assert torch.equal(frames, plain_frames)
    assert torch.allclose(grad, plain_grad, rtol=1e-5, atol=1e-6 * float(plain_grad.abs().max()))
    assert plain_grad[:, :, 0].abs().sum() > 0  # through the causal caches to the first latent frame


@pytest.mark.parametrize("tiles, interval", [(2, 1), (3, 1), (2, 2)])
def test_tiled_backward_equals_the_whole_frames(backend, latents, tiles, interval):
    """Also with only every other latent frame's cache kept (the one in between decoded again)."""
    plain_frames, plain_grad = _decode_with_grad(backend, latents)
    frames, grad = _decode_with_grad(
        backend, latents, frame_by_frame_backward=True, backward_tiles=tiles, cache_interval=interval
    )
    assert torch.equal(frames, plain_frames)  # the forward is never tiled
    assert torch.allclose(grad, plain_grad, rtol=1e-5, atol=1e-6 * float(plain_grad.abs().max()))


def test_the_halo_is_what_makes_tiles_exact(backend, latents, monkeypatch):
    """Without the halo, each tile's border pixels see zeros instead of their neighbours: wrong gradient.
    (So the test above would notice a halo smaller than the tail's receptive radius.)"""
    _plain_frames, plain_grad = _decode_with_grad(backend, latents)
    real = vae_backward.split_decoder

    def no_halo(decoder):
        return dataclasses.replace(real(decoder), halo=0)

    monkeypatch.setattr("drf_core.models.wan.split_decoder", no_halo)
    _, grad = _decode_with_grad(backend, latents, frame_by_frame_backward=True, backward_tiles=2)
    assert not torch.allclose(grad, plain_grad, rtol=1e-3, atol=1e-4 * float(plain_grad.abs().max()))


def test_a_decoder_without_a_known_split_runs_its_backward_whole(caplog):
    """Any causal step function works; tiles need a split, and without one the backward is untiled."""
    conv = torch.nn.Conv3d(2, 2, 1)

    def step(frame, index, cache):
        previous = cache[0] if cache[0] is not None else torch.zeros_like(frame)
        out = conv(frame) + 0.5 * previous
        return out, [out]

    z = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    plain = []
    cache = [None]
    for index in range(3):
        out, cache = step(z[:, :, index : index + 1], index, cache)
        plain.append(out)
    (plain_grad,) = torch.autograd.grad(torch.cat(plain, 2).sum(), z)
    with caplog.at_level(logging.INFO, logger="drf_core.models.vae_backward"):
        video = decode_frame_by_frame(step, z, [None], tiles=2)
    (grad,) = torch.autograd.grad(video.sum(), z)
    assert torch.equal(video, torch.cat(plain, 2))
    assert torch.allclose(grad, plain_grad)
    assert "runs untiled" in caplog.text
    assert split_decoder(conv) is None
    with pytest.raises(ValueError, match="cache_interval must be at least 1"):
        decode_frame_by_frame(step, z, [None], cache_interval=0)

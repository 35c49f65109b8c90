"""Frames in and out: tensors <-> PIL images, animated previews, reading videos and frame folders.

Frames are float tensors `[F, 3, H, W]` in 0..1 everywhere in the engine. This module converts
them to and from files: animated GIF / WebP (Pillow), folders of images, and video files
(PyAV, when installed — ComfyUI ships it). Knows nothing about models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageSequence

from .errors import DRFInputError
from .io import atomic_write

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ANIMATION_SUFFIXES = (".gif", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def check_frames(frames: torch.Tensor, what: str = "frames") -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise DRFInputError(f"{what} must be a tensor [F, 3, H, W] in 0..1; got {shape}")
    if frames.shape[0] == 0:
        raise DRFInputError(f"{what} has zero frames; give at least one frame")
    return frames


def to_pil(frames: torch.Tensor) -> list[Image.Image]:
    """`[F, 3, H, W]` in 0..1 -> RGB images (rounded, clamped)."""
    frames = check_frames(frames).detach().float().clamp(0, 1).cpu()
    array = (frames.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> `[F, 3, H, W]` float32 in 0..1."""
    if not images:
        raise DRFInputError("no images to read; give at least one frame")
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise DRFInputError(f"frames have different sizes {sorted(sizes)}; resize them to one size first")
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


SIDE_BY_SIDE_GAP = 4


def side_by_side(*videos: torch.Tensor, gap: int = SIDE_BY_SIDE_GAP) -> torch.Tensor:
    """Videos of equal frame count and height next to each other, left to right (white gaps)."""
    if not videos:
        raise DRFInputError("no videos to put side by side; give at least one")
    first = check_frames(videos[0], "video 1")
    for number, video in enumerate(videos[1:], start=2):
        check_frames(video, f"video {number}")
        if video.shape[0] != first.shape[0] or video.shape[2] != first.shape[2]:
            raise DRFInputError(
                f"videos must share frame count and height to sit side by side; got {tuple(first.shape)} "
                f"and {tuple(video.shape)}"
            )
    spacer = torch.ones(first.shape[0], 3, first.shape[2], gap, dtype=first.dtype, device=first.device)
    parts = [first]
    for video in videos[1:]:
        parts += [spacer, video.to(first)]
    return torch.cat(parts, dim=3)


def label_positions(
    videos: Sequence[torch.Tensor], names: Sequence[str], gap: int = SIDE_BY_SIDE_GAP
) -> list[tuple[int, str]]:
    """`(x, name)` of each video's left edge in `side_by_side(*videos)`; empty names are left out."""
    positions, x = [], 0
    for video, name in zip(videos, names, strict=True):
        if name:
            positions.append((x, name))
        x += video.shape[3] + gap
    return positions


def labelled_side_by_side(videos: Sequence[torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """`side_by_side` with each video's name drawn at its top left (frames pass through 8-bit once)."""
    both = side_by_side(*videos)
    labels = label_positions(videos, names)
    return from_pil(label_images(to_pil(both), labels)) if labels else both


def label_images(images: list[Image.Image], labels: Sequence[tuple[int, str]]) -> list[Image.Image]:
    """Draw each `(x, text)` label at the top of every image (for before/after previews)."""
    out = []
    for image in images:
        image = image.copy()
        draw = ImageDraw.Draw(image)
        for x, text in labels:
            draw.rectangle((x, 0, x + 7 * len(text) + 4, 12), fill=(0, 0, 0))
            draw.text((x + 2, 0), text, fill=(255, 255, 255))
        out.append(image)
    return out


def save_animation(
    frames: torch.Tensor | list[Image.Image], path: str | Path, fps: float = 8.0, labels: Sequence[tuple[int, str]] = ()
) -> Path:
    """Animated GIF or WebP (by suffix), written atomically; loops forever."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        raise DRFInputError(f"{path.name}: previews are written as .gif or .webp")
    images = to_pil(frames) if isinstance(frames, torch.Tensor) else list(frames)
    if labels:
        images = label_images(images, labels)
    duration = max(1, round(1000 / fps))
    extra = {"lossless": True} if path.suffix.lower() == ".webp" else {}
    with atomic_write(path, suffix=path.suffix) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=duration, loop=0, **extra)
    return path


def load_frames(path: str | Path, max_frames: int = 0) -> torch.Tensor:
    """A folder of images (sorted by name), an animated GIF/WebP, a still image or a video file."""
    path = Path(path)
    if not path.exists():
        raise DRFInputError(f"{path} does not exist; give a video file, an animated GIF/WebP or a folder of frames")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DRFInputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images = [Image.open(p).convert("RGB") for p in files]
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        images = _read_video(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES + ANIMATION_SUFFIXES:
        with Image.open(path) as handle:
            images = [frame.convert("RGB") for frame in ImageSequence.Iterator(handle)]
    else:
        raise DRFInputError(f"{path.name}: unknown kind of file; use {VIDEO_SUFFIXES + ANIMATION_SUFFIXES} or a folder")
    if max_frames > 0 and len(images) > max_frames:
        step = len(images) / max_frames
        images = [images[int(i * step)] for i in range(max_frames)]
    return from_pil(images)


def _read_video(path: Path) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        raise DRFInputError(
            f"reading {path.suffix} files needs PyAV (`pip install av`); or pass a folder of frames / a GIF"
        ) from None
    with av.open(str(path)) as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]

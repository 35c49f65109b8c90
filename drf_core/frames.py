"""Frame selection: which frames of a video get decoded with gradient and scored.

Each entry of `FRAME_SELECTIONS` maps `(num_frames, count)` to sorted, unique frame indices.
Knows nothing about models; `models/` decodes the chosen frames, the critic scores them.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import DRFInputError
from .registry import Registry

FrameSelection = Callable[[int, int], list[int]]
FRAME_SELECTIONS: Registry[FrameSelection] = Registry("frame selection")


@FRAME_SELECTIONS.register("all")
def all_frames(num_frames: int, count: int) -> list[int]:
    """Every frame (`count` is ignored)."""
    return list(range(num_frames))


@FRAME_SELECTIONS.register("every_nth")
def every_nth_frame(num_frames: int, count: int) -> list[int]:
    """Frames 0, n, 2n, ... with n = `count`."""
    return list(range(0, num_frames, count))


@FRAME_SELECTIONS.register("first_middle_last")
def first_middle_last(num_frames: int, count: int) -> list[int]:
    """The first, middle and last frame (`count` is ignored)."""
    return sorted({0, (num_frames - 1) // 2, num_frames - 1})


@FRAME_SELECTIONS.register("prefix")
def prefix(num_frames: int, count: int) -> list[int]:
    """The first `count` frames: the cheapest to decode, since the Wan VAE is causal in time."""
    return list(range(min(count, num_frames)))


def select_frames(selection: str, num_frames: int, count: int) -> list[int]:
    """Indices for the named selection, checked: never empty, all inside the video."""
    if num_frames < 1:
        raise DRFInputError(f"the video has {num_frames} frames; it needs at least one frame to score")
    if count < 1:
        raise DRFInputError(f"frame selection count must be at least 1, got {count}")
    indices = FRAME_SELECTIONS.get(selection)(num_frames, count)
    if not indices:
        raise DRFInputError(f"frame selection {selection!r} chose no frames of a {num_frames}-frame video")
    return indices

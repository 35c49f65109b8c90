"""Frame selection: which frames of a video get decoded with gradient and scored.

Each entry of `FRAME_SELECTIONS` maps `(num_frames, count)` to sorted, unique frame indices, and
raises `DRFInputError` when `count` does not fit the video. `select_frames` checks every result
(never empty, increasing, inside the video), so a selection added later cannot hand the decoder an
index outside the video. `CriticInputConfig.for_frames` turns the chosen indices into the frame
rate the critic is told (their true spacing in seconds).

Knows nothing about models; `models/` decodes the chosen frames, the critic scores them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from .errors import DRFInputError
from .registry import Registry

FrameSelection = Callable[[int, int], list[int]]
FRAME_SELECTIONS: Registry[FrameSelection] = Registry("frame selection")


def _fits(num_frames: int, count: int, selection: str) -> None:
    if count > num_frames:
        raise DRFInputError(
            f"frame selection {selection!r} asks for {count} frames of a {num_frames}-frame video; lower the frame "
            f"count (decode.frame_selection_count / frame_count) to at most {num_frames}, or use 'all'"
        )


@FRAME_SELECTIONS.register("uniform")
def uniform(num_frames: int, count: int) -> list[int]:
    """`count` frames evenly spaced over the whole clip, first and last frame included (one frame:
    the middle one): frame i is `round(i * (num_frames - 1) / (count - 1))`, as qwen-vl-utils samples
    a video. Spacings differ by at most one frame; the critic is told their mean."""
    _fits(num_frames, count, "uniform")
    if count == 1:
        return [(num_frames - 1) // 2]
    span, gaps = num_frames - 1, count - 1
    return [(2 * i * span + gaps) // (2 * gaps) for i in range(count)]  # round half up, in integers


@FRAME_SELECTIONS.register("all")
def all_frames(num_frames: int, count: int) -> list[int]:
    """Every frame (`count` is ignored)."""
    return list(range(num_frames))


@FRAME_SELECTIONS.register("every_nth")
def every_nth_frame(num_frames: int, count: int) -> list[int]:
    """Frames 0, n, 2n, ... with n = `count` (n must leave at least two frames)."""
    if num_frames > 1 and count >= num_frames:
        raise DRFInputError(
            f"frame selection 'every_nth' with n={count} keeps only frame 0 of a {num_frames}-frame video; use "
            f"n < {num_frames}, or 'uniform' to spread a number of frames over the clip"
        )
    return list(range(0, num_frames, count))


@FRAME_SELECTIONS.register("first_middle_last")
def first_middle_last(num_frames: int, count: int) -> list[int]:
    """The first, middle and last frame (`count` is ignored)."""
    return sorted({0, (num_frames - 1) // 2, num_frames - 1})


@FRAME_SELECTIONS.register("prefix")
def prefix(num_frames: int, count: int) -> list[int]:
    """The first `count` frames: the cheapest to decode (the Wan VAE is causal in time), but they
    span only `count / fps` seconds, so they show little motion."""
    _fits(num_frames, count, "prefix")
    return list(range(count))


def select_frames(selection: str, num_frames: int, count: int) -> list[int]:
    """Indices for the named selection, checked: never empty, increasing, all inside the video."""
    if num_frames < 1:
        raise DRFInputError(f"the video has {num_frames} frames; it needs at least one frame to score")
    if count < 1:
        raise DRFInputError(f"frame selection count must be at least 1, got {count}")
    indices = list(FRAME_SELECTIONS.get(selection)(num_frames, count))
    if not indices:
        raise DRFInputError(f"frame selection {selection!r} chose no frames of a {num_frames}-frame video")
    check_frame_indices(indices, num_frames, f"frame selection {selection!r}")
    return indices


def check_frame_indices(indices: list[int], num_frames: int, source: str = "frame indices") -> None:
    """Refuse indices outside `0..num_frames-1`, repeated or out of order, naming them."""
    outside = [i for i in indices if not 0 <= i < num_frames]
    if outside:
        raise DRFInputError(
            f"{source} gave frame indices {outside} outside the {num_frames}-frame video; use 0..{num_frames - 1}"
        )
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise DRFInputError(f"{source} gave frame indices {indices}; they must increase (no repeats)")

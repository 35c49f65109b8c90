"""Differentiable Qwen-VL visual preprocessing, written in torch (no PIL, no numpy, no torchvision).

Qwen2-VL and Qwen2.5-VL take pixels as flat patches: frames are resized to multiples of
`patch_size * merge_size` (28), normalized with the folder's mean/std, and cut into
`temporal_patch_size x patch_size x patch_size` patches in the order the vision tower expects.
This module does exactly what transformers' `Qwen2VLImageProcessor` (image mode) and
`Qwen2VLVideoProcessor` (video mode) do for float tensors, with operations autograd can follow:

- the size is transformers' own `smart_resize` (the official rule, aspect ratio kept) when the
  requested size is 0 x 0 (the default), else the requested multiples of 28;
- resizing is `torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`,
  which is what torchvision's tensor resize runs for float inputs;
- normalization is `(x - mean) / std` (fused with the 0..255 rescale the way transformers fuses
  it, when `value_range` is 255);
- image mode: every frame is its own image, repeated `temporal_patch_size` times in time;
  video mode: frames are grouped `temporal_patch_size` at a time, the last frame repeated to pad.

`read_vision_settings(folder)` reads the settings from the folder's processor JSON files the way
transformers resolves them, with the Qwen class defaults for missing keys.

Knows nothing about the language model, tokens or prompts: frames in, patches and grids out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DRFInputError, ModelFolderError

# Defaults of transformers' Qwen2VLImageProcessor / Qwen2VLVideoProcessor (OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 28 * 28 * 768
MAX_ASPECT_RATIO = 200
# Where transformers keeps `smart_resize` (the PIL-backend module first: it needs no torchvision).
OFFICIAL_SMART_RESIZE_MODULES = (
    "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
    "transformers.models.qwen2_vl.image_processing_qwen2_vl",
    "transformers.models.qwen2_vl.video_processing_qwen2_vl",
)

# The files transformers reads processor settings from, in its order of priority.
PROCESSOR_CONFIG = "processor_config.json"  # nested {"image_processor": {...}, "video_processor": {...}}
VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class QwenVisionSettings:
    """The preprocessing settings of one modality (images or videos)."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    min_pixels: int = IMAGE_MIN_PIXELS
    max_pixels: int = IMAGE_MAX_PIXELS
    # Video only: bound each frame by a share of a whole-video pixel budget (qwen-vl-utils' rule).
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (28 for Qwen-VL)."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class QwenVisionConfig:
    image: QwenVisionSettings
    video: QwenVisionSettings


@dataclass
class VisualInputs:
    """Patches and grids for the vision tower, as the official processor returns them.

    `pixel_values` is `pixel_values` (image mode) or `pixel_values_videos` (video mode);
    `grid_thw` is `image_grid_thw` (one row per frame) or `video_grid_thw` (one row).
    """

    modality: str  # "image" or "video"
    pixel_values: torch.Tensor  # [patches, channels * temporal_patch_size * patch_size**2]
    grid_thw: torch.Tensor  # [items, 3] long
    merge_size: int
    second_per_grid_ts: float | None = None  # video only: temporal_patch_size / fps

    @property
    def tokens_per_item(self) -> list[int]:
        """How many placeholder tokens each image / the video becomes in the prompt."""
        return [int(t * h * w) // self.merge_size**2 for t, h, w in self.grid_thw.tolist()]


def _official_smart_resize() -> Callable[..., tuple[int, int]]:
    """transformers' own `smart_resize` (the size rule of its Qwen2-VL / Qwen2.5-VL processors)."""
    import importlib

    for module in OFFICIAL_SMART_RESIZE_MODULES:
        try:
            return importlib.import_module(module).smart_resize
        except (ImportError, AttributeError):
            continue
    raise ModelFolderError(
        "this transformers has no Qwen2-VL `smart_resize` (looked in "
        f"{', '.join(OFFICIAL_SMART_RESIZE_MODULES)}); install the transformers version in requirements.txt"
    )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The official Qwen-VL size rule (transformers' function): multiples of `factor`, pixel count
    within the limits, aspect ratio kept as closely as the rounding allows."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise DRFInputError(
            f"frames of {height}x{width} have an aspect ratio above {MAX_ASPECT_RATIO}, which Qwen-VL cannot take; "
            "crop the frames or give critic_input.height/width explicitly"
        )
    h_bar, w_bar = _official_smart_resize()(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h_bar), int(w_bar)


def _nearest_multiples(value: int, factor: int) -> str:
    lower = max(factor, value // factor * factor)
    upper = max(factor, -(-value // factor) * factor)
    return f"{lower}" if lower == upper else f"{lower} or {upper}"


def target_size(
    frame_height: int,
    frame_width: int,
    requested_height: int,
    requested_width: int,
    settings: QwenVisionSettings,
    num_frames: int = 1,
    video: bool = False,
) -> tuple[int, int]:
    """The size frames are resized to: the requested one (checked), or the official rule for 0 x 0."""
    factor = settings.factor
    if requested_height == 0 and requested_width == 0:
        max_pixels = settings.max_pixels
        if video and settings.cap_pixels_per_frame:
            # Qwen2VLVideoProcessor.resize: an even share of the whole-video budget, floored.
            total_pixels = int(settings.max_video_tokens * factor * factor * 0.9)
            max_pixels = max(
                min(max_pixels, total_pixels * settings.temporal_patch_size // num_frames),
                int(settings.min_pixels * 1.05),
            )
        return smart_resize(frame_height, frame_width, factor, settings.min_pixels, max_pixels)
    if min(requested_height, requested_width) < factor:
        raise DRFInputError(
            f"critic_input.height/width is {requested_height}x{requested_width}; set both to 0 (the official size "
            f"rule, aspect ratio kept) or both to multiples of {factor} of at least {factor} (one patch of "
            f"patch_size*merge_size)"
        )
    problems = [
        f"{name} {value} is not a multiple of {factor} (use {_nearest_multiples(value, factor)})"
        for name, value in (("height", requested_height), ("width", requested_width))
        if value % factor
    ]
    if problems:
        raise DRFInputError(
            "critic_input: " + "; ".join(problems) + f"; this critic needs sides that are multiples of "
            f"patch_size*merge_size = {factor}, or 0 x 0 for the official automatic size"
        )
    return requested_height, requested_width


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of `[F, C, H, W]` float frames, as torchvision does for float tensors."""
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


def normalize_frames(frames: torch.Tensor, settings: QwenVisionSettings, value_range: float = 1.0) -> torch.Tensor:
    """`(x - mean) / std` per channel. With `value_range` != 1 (e.g. 255 for uint8-valued frames) the
    rescale is fused into mean and std exactly as transformers' fused rescale-and-normalize does it."""
    rescale_factor = 1.0 / value_range
    mean = torch.as_tensor(settings.image_mean, dtype=frames.dtype, device=frames.device) * (1.0 / rescale_factor)
    std = torch.as_tensor(settings.image_std, dtype=frames.dtype, device=frames.device) * (1.0 / rescale_factor)
    return (frames - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def patchify_images(frames: torch.Tensor, settings: QwenVisionSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame an image: `[F, C, H, W]` -> patches `[F*gh*gw, C*T*p*p]`, grid rows `[1, gh, gw]`."""
    num_frames, channels, height, width = frames.shape
    p, m, t = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    patches = frames.reshape(num_frames, channels, grid_h // m, m, p, grid_w // m, m, p)
    # [frames, gh/m, gw/m, m, m, channels, p, p], then the frame copied t times along time.
    patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
    patches = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
    pixel_values = patches.reshape(num_frames * grid_h * grid_w, channels * t * p * p)
    grid = torch.tensor([[1, grid_h, grid_w]] * num_frames, dtype=torch.long)
    return pixel_values, grid


def patchify_video(frames: torch.Tensor, settings: QwenVisionSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """One video: `[F, C, H, W]` -> patches `[gt*gh*gw, C*T*p*p]` (last frame repeated to a multiple of T)."""
    p, m, t = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    if pad := -frames.shape[0] % t:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
    num_frames, channels, height, width = frames.shape
    grid_t, grid_h, grid_w = num_frames // t, height // p, width // p
    patches = frames.reshape(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
    # [gt, gh/m, gw/m, m, m, channels, t, p, p]
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = patches.reshape(grid_t * grid_h * grid_w, channels * t * p * p)
    grid = torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.long)
    return pixel_values, grid


def check_frames(frames: torch.Tensor) -> None:
    """Frames must be a float `[F, 3, H, W]` tensor with at least one frame."""
    if not isinstance(frames, torch.Tensor):
        raise DRFInputError(f"frames must be a torch tensor [F, 3, H, W] in 0..1, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise DRFInputError(
            f"frames must have shape [F, 3, H, W] (frames, RGB channels, height, width), got {tuple(frames.shape)}; "
            "permute channels-last images with .permute(0, 3, 1, 2)"
        )
    if frames.shape[0] == 0:
        raise DRFInputError("frames holds 0 frames; the critic needs at least one frame to look at")
    if frames.shape[2] == 0 or frames.shape[3] == 0:
        raise DRFInputError(f"frames have an empty size {tuple(frames.shape[2:])}; give frames with pixels")
    if not frames.is_floating_point():
        raise DRFInputError(f"frames must be floating point in 0..1, got {frames.dtype}; convert with .float() / 255")


def preprocess_frames(
    frames: torch.Tensor,
    mode: str,
    height: int,
    width: int,
    fps: float,
    config: QwenVisionConfig,
    compute_dtype: torch.dtype = torch.float32,
    value_range: float = 1.0,
) -> VisualInputs:
    """Frames `[F, 3, H, W]` (0..1, or 0..`value_range`) -> patches and grids for `mode` "video" or "images".

    Differentiable with respect to `frames`; runs on the frames' device in `compute_dtype`.
    `height`/`width` 0 x 0 applies the official `smart_resize` to the frame size.
    """
    check_frames(frames)
    if mode not in ("video", "images"):
        raise DRFInputError(f"critic_input.mode must be 'video' or 'images', got {mode!r}")
    video = mode == "video"
    settings = config.video if video else config.image
    frames = frames.to(compute_dtype)
    size = target_size(frames.shape[2], frames.shape[3], height, width, settings, frames.shape[0], video=video)
    frames = normalize_frames(resize_frames(frames, *size), settings, value_range)
    if video:
        if fps <= 0:
            raise DRFInputError(f"critic_input.fps must be positive, got {fps}")
        pixel_values, grid = patchify_video(frames, settings)
        return VisualInputs("video", pixel_values, grid, settings.merge_size, settings.temporal_patch_size / fps)
    pixel_values, grid = patchify_images(frames, settings)
    return VisualInputs("image", pixel_values, grid, settings.merge_size)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFolderError(
            f"{path} cannot be read as JSON ({error}); restore the file from the model's release"
        ) from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} does not hold a JSON object; restore the file from the model's release")
    return data


def _settings_from(data: dict[str, Any], defaults: QwenVisionSettings) -> QwenVisionSettings:
    size = data.get("size") or {}
    min_pixels = data.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", defaults.min_pixels)))
    max_pixels = data.get("max_pixels", size.get("longest_edge", size.get("max_pixels", defaults.max_pixels)))
    mean = data.get("image_mean", defaults.image_mean)
    std = data.get("image_std", defaults.image_std)
    mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
    std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3))
    return replace(
        defaults,
        patch_size=int(data.get("patch_size", defaults.patch_size)),
        merge_size=int(data.get("merge_size", defaults.merge_size)),
        temporal_patch_size=int(data.get("temporal_patch_size", defaults.temporal_patch_size)),
        image_mean=mean,
        image_std=std,
        min_pixels=int(min_pixels),
        max_pixels=int(max_pixels),
        cap_pixels_per_frame=bool(data.get("cap_pixels_per_frame") or False),
        max_video_tokens=int(data.get("max_video_tokens", defaults.max_video_tokens)),
    )


def read_vision_settings(folder: str | Path) -> QwenVisionConfig:
    """Image and video settings of a model folder, resolved the way transformers resolves them:
    `processor_config.json` (nested) first, then `video_preprocessor_config.json` (video only), then
    `preprocessor_config.json`; missing keys take the Qwen processor classes' defaults."""
    folder = Path(folder)
    nested: dict[str, Any] = {}
    if (folder / PROCESSOR_CONFIG).is_file():
        nested = _read_json(folder / PROCESSOR_CONFIG)
    plain = _read_json(folder / PREPROCESSOR_CONFIG) if (folder / PREPROCESSOR_CONFIG).is_file() else None
    video_file = (
        _read_json(folder / VIDEO_PREPROCESSOR_CONFIG) if (folder / VIDEO_PREPROCESSOR_CONFIG).is_file() else None
    )

    image_data = nested.get("image_processor") if isinstance(nested.get("image_processor"), dict) else plain
    video_data = nested.get("video_processor") if isinstance(nested.get("video_processor"), dict) else None
    video_data = video_data or video_file or plain
    if image_data is None and video_data is None:
        raise ModelFolderError(
            f"{folder} has no {PREPROCESSOR_CONFIG} (nor {VIDEO_PREPROCESSOR_CONFIG} / {PROCESSOR_CONFIG}); copy the "
            "processor files that come with the model's release into the folder"
        )
    image_defaults = QwenVisionSettings()
    video_defaults = QwenVisionSettings(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    image = _settings_from(image_data or {}, image_defaults)
    video = _settings_from(video_data or {}, video_defaults)
    return QwenVisionConfig(image=image, video=video)

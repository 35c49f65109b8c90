"""Memory presets: one name for the settings that make a training run fit a GPU, checked before step 1.

`MEMORY_PRESETS` maps a GPU size ("48GB+", "24GB", "16GB") to a bundle of existing settings:
training ones (`train`: dotted `TrainConfig` paths such as `"decode.checkpoint_residual_blocks"`)
and loading ones (`models`: `ModelsConfig` fields, applied where models are loaded). `TrainConfig.memory`
names one, or "auto" (the largest preset whose traced estimate fits the device's free memory; on
a machine without CUDA: "48GB+", which changes nothing) or "custom" (the default: the settings as
given, so existing runs are unchanged).

The estimate is not a formula: `memory_estimates.json` holds peaks traced by `bench/memory.py`
(`--write-estimates`) for every preset with each video model and critic it knows, keyed by the
memory-relevant settings (`memory_key`). A run whose settings match a row gets that row's figure for a
card (`1.07 x peak + 0.8 GiB`); on CUDA, a figure above the free memory is an error before step 1
that names the preset to use. Settings that match no row are not estimated (the log says so).

Knows configs, devices and the stored table; nothing about training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .errors import DRFInputError
from .registry import Registry

logger = logging.getLogger(__name__)

GIB = 2**30
ESTIMATES_FILE = Path(__file__).with_name("memory_estimates.json")
CUSTOM, AUTO = "custom", "auto"


@dataclass(frozen=True)
class MemoryPreset:
    """A bundle of settings for one GPU size."""

    description: str
    gpu_gib: float  # the card it is for ("auto" picks the largest that fits)
    train: dict[str, Any] = field(default_factory=dict)  # dotted TrainConfig path -> value
    models: dict[str, Any] = field(default_factory=dict)  # ModelsConfig field -> value


MEMORY_PRESETS: Registry[MemoryPreset] = Registry("memory preset")
MEMORY_PRESETS.add("48GB+", MemoryPreset("the defaults, unchanged", 48.0))
_FIT_24 = {
    "offload": "phase",
    "release_text_encoder": True,
    "decode.checkpoint_residual_blocks": True,
    "decode.frame_by_frame_backward": True,
    "decode.caches_on_host": True,
    "decode.cache_interval": 3,
    "critic_input.max_questions_per_batch": 1,
}
MEMORY_PRESETS.add(
    "24GB",
    MemoryPreset(
        "phase offload, text encoder released after encoding, the VAE decode recomputed in backward one "
        "latent frame at a time from causal caches kept in host RAM (every third one kept, the others "
        "decoded again), its residual blocks, norms and upsamplers checkpointed, one question per critic call",
        24.0,
        dict(_FIT_24),
    ),
)
MEMORY_PRESETS.add(
    "16GB",
    MemoryPreset(
        "the 24GB settings + the decode's backward in 2x2 spatial tiles + the critic sees frames at 336x336 "
        "(fewer vision tokens)",
        16.0,
        {**_FIT_24, "decode.backward_tiles": 2, "critic_input.height": 336, "critic_input.width": 336},
    ),
)
MEMORY_CHOICES = [CUSTOM, AUTO, *MEMORY_PRESETS.names()]


# --- applying ----------------------------------------------------------------------------------------


def _replace_path(config: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _replace_path(getattr(config, head), rest, value)})


def _check_name(name: str) -> None:
    if name not in (CUSTOM, AUTO) and name not in MEMORY_PRESETS:
        raise DRFInputError(f"unknown memory preset {name!r}; choose one of: {', '.join(MEMORY_CHOICES)}")


def apply_train_preset(config: TrainConfig, name: str) -> TrainConfig:
    """`config` with preset `name`'s training settings (and `memory` set to it); "custom": unchanged."""
    _check_name(name)
    if name == CUSTOM:
        return config
    if name == AUTO:
        raise DRFInputError("memory 'auto' must be resolved to a preset first (resolve_memory_preset)")
    for path, value in MEMORY_PRESETS.get(name).train.items():
        config = _replace_path(config, path, value)
    return dataclasses.replace(config, memory=name)


def apply_models_preset(models: Any, name: str) -> Any:
    """A `ModelsConfig` with preset `name`'s loading settings (those this version knows)."""
    _check_name(name)
    if name in (CUSTOM, AUTO):
        return models
    known = {f.name for f in dataclasses.fields(models)}
    return dataclasses.replace(models, **{k: v for k, v in MEMORY_PRESETS.get(name).models.items() if k in known})


def free_memory_gib(device: torch.device) -> float | None:
    """What a run on `device` can use: free CUDA memory + what this process already holds; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_reserved(device)) / GIB


def resolve_memory_preset(name: str, device: torch.device, video: str | None, critic: str | None) -> str:
    """A preset's name for `name`: "auto" becomes the largest preset that fits `device`'s free memory."""
    _check_name(name)
    if name != AUTO:
        return name
    free = free_memory_gib(device)
    if free is None:
        logger.info("memory 'auto': %s is not a CUDA device, so nothing to fit; using '48GB+' (no change)", device)
        return "48GB+"
    for preset in MEMORY_PRESETS:
        estimate = estimate_card_gib(preset, video, critic)
        fits = estimate <= free if estimate is not None else MEMORY_PRESETS.get(preset).gpu_gib <= free + 1.0
        if fits:
            logger.info("memory 'auto': %.1f GiB free on %s -> preset %s", free, device, preset)
            return preset
    smallest = MEMORY_PRESETS.names()[-1]
    logger.warning("memory 'auto': %.1f GiB free on %s; even preset %s may not fit", free, device, smallest)
    return smallest


# --- the traced estimates -----------------------------------------------------------------------------


def memory_key(config: TrainConfig, models: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a traced peak depends on (what `memory_estimates.json` rows are keyed by)."""
    c = config
    return {
        "video": [c.video.height, c.video.width, c.video.num_frames],
        "videos_per_step": c.videos_per_step,
        "num_inference_steps": c.sampler.num_inference_steps,
        "truncated_backprop_steps": c.sampler.truncated_backprop_steps,
        "guidance_scale": c.sampler.guidance_scale,
        "checkpointing": c.sampler.checkpointing,
        "truncated_backprop_range": list(c.sampler.truncated_backprop_range or []),
        "frame_selection": c.decode.frame_selection,
        "frame_selection_count": c.decode.frame_selection_count,
        "checkpoint_per_latent_frame": c.decode.checkpoint_per_latent_frame,
        "checkpoint_residual_blocks": c.decode.checkpoint_residual_blocks,
        "checkpoint_decode": c.decode.checkpoint_decode,
        "segment_latent_frames": c.decode.segment_latent_frames,
        "frame_by_frame_backward": c.decode.frame_by_frame_backward,
        "caches_on_host": c.decode.caches_on_host,
        "backward_tiles": c.decode.backward_tiles,
        "cache_interval": c.decode.cache_interval,
        "critic_input": [c.critic_input.mode, c.critic_input.height, c.critic_input.width],
        "max_questions_per_batch": c.critic_input.max_questions_per_batch,
        "lora": [c.lora.rank, c.lora.target_preset],
        "critic_gradient_checkpointing": c.critic_gradient_checkpointing,
        "release_text_encoder": c.release_text_encoder,
        "offload": c.offload,
        "models": dict(sorted((models or {}).items())),
    }


_NO_ESTIMATES = {"card_factor": 1.07, "card_overhead_gib": 0.8, "models": {"video": {}, "critic": {}}, "rows": []}


@lru_cache(maxsize=1)
def load_estimates() -> dict[str, Any]:
    """The stored traces (`bench/memory.py` writes them); without the file, none (nothing is estimated)."""
    if not ESTIMATES_FILE.is_file():
        logger.warning("%s is missing; memory estimates are off (python bench/memory.py writes it)", ESTIMATES_FILE)
        return _NO_ESTIMATES
    return json.loads(ESTIMATES_FILE.read_text(encoding="utf-8"))


def _card_gib(peak_gib: float) -> float:
    table = load_estimates()
    return table["card_factor"] * peak_gib + table["card_overhead_gib"]


def estimate_card_gib(preset: str, video: str | None, critic: str | None) -> float | None:
    """A card's need for `preset` with these models (names as in the table), from the stored traces."""
    for row in load_estimates()["rows"]:
        if row["preset"] == preset and row["video_model"] == video and row["critic"] == critic:
            return _card_gib(row["peak_gib"])
    return None


def estimate_for(config: TrainConfig, video: str | None, critic: str | None, models: dict[str, Any] | None = None):
    """The stored row whose settings are `config`'s (None: these settings were never traced)."""
    key = json.loads(json.dumps(memory_key(config, models)))
    for row in load_estimates()["rows"]:
        if row["video_model"] == video and row["critic"] == critic and row["key"] == key:
            return row
    return None


def identify_models(backend: Any, reward: Any) -> tuple[str | None, str | None]:
    """The table's names for the loaded video model and critic (by their architecture), or None."""
    models = load_estimates()["models"]
    video = critic = None
    denoiser = getattr(backend, "denoiser", None)
    if denoiser is not None:
        count = sum(p.numel() for n, p in denoiser.named_parameters() if "lora_" not in n)
        video = next((name for name, info in models["video"].items() if info["denoiser_parameters"] == count), None)
    config = getattr(getattr(reward.chat_model, "model", None), "config", None)
    text = getattr(config, "text_config", config)
    if text is not None:
        shape = [getattr(text, "hidden_size", None), getattr(text, "num_hidden_layers", None)]
        critic = next((name for name, info in models["critic"].items() if info["text_shape"] == shape), None)
    return video, critic


def check_memory(config: TrainConfig, device: torch.device, video: str | None, critic: str | None) -> float | None:
    """Refuse, before step 1, settings whose traced estimate exceeds `device`'s free memory.

    Returns the estimate for a card in GiB (None: not traced, or not a CUDA device).
    """
    row = estimate_for(config, video, critic)
    if row is None:
        logger.info(
            "no traced memory estimate for these settings (%s, %s critic); `python bench/memory.py` traces them",
            video or "unknown video model",
            critic or "unknown",
        )
        return None
    need = _card_gib(row["peak_gib"])
    free = free_memory_gib(device)
    if free is None:
        return need
    if need > free:
        fitting = [p for p in MEMORY_PRESETS if (estimate_card_gib(p, video, critic) or float("inf")) <= free]
        advice = (
            f"set memory to {fitting[0]!r} (about {estimate_card_gib(fitting[0], video, critic):.1f} GiB)"
            if fitting
            else f"no preset fits: the smallest, {MEMORY_PRESETS.names()[-1]!r}, needs about "
            f"{estimate_card_gib(MEMORY_PRESETS.names()[-1], video, critic) or float('nan'):.1f} GiB; free memory "
            "on the device (close other programs) or use a smaller critic"
        )
        raise DRFInputError(
            f"this run needs about {need:.1f} GiB on {device} (traced peak {row['peak_gib']:.1f} GiB with "
            f"{video} and the {critic} critic), but only {free:.1f} GiB is free; {advice}"
        )
    logger.info("memory: about %.1f GiB needed on %s, %.1f GiB free", need, device, free)
    return need


def apply_run_preset(run: Any) -> Any:
    """A `RunConfig` with its `train.memory` preset applied to the training and loading settings.

    "auto" is resolved from the video model's device before anything is loaded (models not known
    yet: a preset fits when its card size does); `train_lora` checks the loaded models' estimate.
    """
    from .config import resolve_device

    name = run.train.memory
    if name == CUSTOM:
        return run
    name = resolve_memory_preset(name, resolve_device(run.models.video_device), None, None)
    return dataclasses.replace(
        run, models=apply_models_preset(run.models, name), train=apply_train_preset(run.train, name)
    )

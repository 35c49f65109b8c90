"""Typed settings shared by the command line, the trainer and the ComfyUI nodes.

One dataclass per stage (LoRA, sampler, decode, critic input, reward, training); `TrainConfig`
holds them all, and `RunConfig` adds the model folders for `python -m drf_core train --config`.
Every class round-trips through plain dicts / JSON (`to_dict`, `from_dict`) and checks its own
values in `validate()`, raising `DRFInputError` with the field's dotted name and the fix.

Names of implementations (schedulers, frame selections, reward kinds, LoRA presets) are plain
strings here; the registries that own them check them when they are used, so this module
imports nothing heavy and knows no model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite

from .errors import DRFInputError

C = TypeVar("C")


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise DRFInputError(f"{name}: {message}")


class _Serializable:
    """`to_dict` / `from_dict` / `to_json` / `from_json` for the dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
        if not isinstance(data, dict):
            raise DRFInputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        try:
            obj = dacite.from_dict(cls, data, config=dacite.Config(strict=True, cast=[tuple]))
        except dacite.UnexpectedDataError as error:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            raise DRFInputError(
                f"{where}: unknown field(s) {sorted(error.keys)}; known top-level fields: {allowed}"
            ) from None
        except dacite.DaciteError as error:
            raise DRFInputError(f"{where}: {error}") from None
        obj.validate()  # type: ignore[attr-defined]
        return obj

    @classmethod
    def from_json(cls: type[C], text: str, where: str = "config") -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DRFInputError(f"{where}: not valid JSON ({error})") from None
        return cls.from_dict(data, where)  # type: ignore[attr-defined]

    def validate(self) -> None:  # overridden where there is something to check
        return None


@dataclass
class LoRAConfig(_Serializable):
    """The LoRA adapter put on the video model's denoiser."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    # A key of the backend's LoRA target presets: "attention" or "attention_ffn" for Wan.
    target_preset: str = "attention"

    def validate(self, where: str = "lora") -> None:
        _check(self.rank >= 1, f"{where}.rank", f"must be at least 1, got {self.rank}")
        _check(self.alpha > 0, f"{where}.alpha", f"must be positive, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class VideoSpec(_Serializable):
    """The size of the videos the model samples during training and preview."""

    height: int = 480
    width: int = 832
    num_frames: int = 33

    def validate(self, where: str = "video") -> None:
        _check(self.num_frames >= 1, f"{where}.num_frames", f"must be at least 1, got {self.num_frames}")
        _check(self.height >= 16 and self.width >= 16, f"{where}.height/width", "must be at least 16 pixels")


@dataclass
class SamplerConfig(_Serializable):
    """The differentiable sampler: T steps, the last K of them with gradient."""

    num_inference_steps: int = 20
    # K: how many of the last steps run with gradient (DRaFT-K). 1 is the robust default.
    truncated_backprop_steps: int = 1
    # When set, K is drawn uniformly from [min, max] at every training step instead.
    truncated_backprop_range: tuple[int, int] | None = None
    guidance_scale: float = 5.0
    # "default" keeps the model folder's own scheduler; otherwise a key of `sampler.SCHEDULERS`.
    scheduler: str = "default"
    # Flow shift for a replaced scheduler (None: keep the folder's value).
    flow_shift: float | None = None
    # A key of `sampler.CHECKPOINTING`: "none", "step" (each denoiser call), "block" (each
    # transformer block; memory still grows with K) or "step_block" (each call, recomputed block by
    # block: the least memory and flat in K, one extra forward per gradient step). bench/ measures them.
    checkpointing: str = "step_block"

    def validate(self, where: str = "sampler") -> None:
        steps = self.num_inference_steps
        _check(steps >= 1, f"{where}.num_inference_steps", f"must be at least 1, got {steps}")
        k = self.truncated_backprop_steps
        _check(k >= 0, f"{where}.truncated_backprop_steps", f"must be 0 or more, got {k}")
        _check(
            k <= steps,
            f"{where}.truncated_backprop_steps",
            f"K={k} is larger than the number of denoising steps T={steps}; use K <= T",
        )
        if self.truncated_backprop_range is not None:
            low, high = self.truncated_backprop_range
            _check(
                1 <= low <= high <= steps,
                f"{where}.truncated_backprop_range",
                f"needs 1 <= min <= max <= T={steps}, got ({low}, {high})",
            )
        _check(self.guidance_scale >= 0, f"{where}.guidance_scale", "must not be negative")


@dataclass
class DecodeConfig(_Serializable):
    """Which frames the VAE decodes with gradient (and the critic then scores)."""

    # A key of `frames.FRAME_SELECTIONS`: "all", "every_nth", "first_middle_last", "prefix".
    frame_selection: str = "prefix"
    # every_nth: n; prefix: how many frames. Ignored by "all" and "first_middle_last".
    frame_selection_count: int = 5
    # Checkpoint the VAE decoder per latent frame (recompute in backward; much less memory).
    checkpoint_per_latent_frame: bool = True

    def validate(self, where: str = "decode") -> None:
        _check(
            self.frame_selection_count >= 1,
            f"{where}.frame_selection_count",
            f"must be at least 1, got {self.frame_selection_count}",
        )


@dataclass
class CriticInputConfig(_Serializable):
    """How frames are handed to the VLM."""

    # "video": one video of the frames; "images": each frame as its own image.
    mode: str = "video"
    # Size the frames are resized to before patching (multiples of 28 for Qwen-VL); 0 keeps the
    # frame size, rounded the way the official processor rounds it.
    height: int = 448
    width: int = 448
    # Frames per second the video is said to have (Qwen2.5-VL's temporal position spacing).
    fps: float = 2.0
    # Questions scored in one VLM forward; 0 = all questions of a video at once.
    max_questions_per_batch: int = 0

    def validate(self, where: str = "critic_input") -> None:
        _check(self.mode in ("video", "images"), f"{where}.mode", f"must be 'video' or 'images', got {self.mode!r}")
        _check(self.height >= 0 and self.width >= 0, f"{where}.height/width", "must be 0 or positive")
        _check(self.fps > 0, f"{where}.fps", f"must be positive, got {self.fps}")
        _check(self.max_questions_per_batch >= 0, f"{where}.max_questions_per_batch", "must be 0 or positive")


@dataclass
class RewardConfig(_Serializable):
    """How the critic's logits become one differentiable number."""

    # A key of `reward.YES_NO_REWARDS`: "log_prob", "probability", "logit_margin".
    yes_no: str = "log_prob"
    # A key of `reward.EXPLANATION_REWARDS`: "token_weighted_log_likelihood", "none".
    explanation: str = "token_weighted_log_likelihood"
    # Weight of the explanation term against the yes/no term inside each aspect.
    explanation_weight: float = 0.5
    # Weight of function words ("the", "of", ...) in the token-weighted likelihood; content 1.0.
    function_word_weight: float = 0.2
    # Overrides of the question set's aspect weights, by aspect name.
    aspect_weights: dict[str, float] = field(default_factory=dict)

    def validate(self, where: str = "reward") -> None:
        _check(self.explanation_weight >= 0, f"{where}.explanation_weight", "must not be negative")
        _check(
            0 <= self.function_word_weight <= 1,
            f"{where}.function_word_weight",
            f"must be in [0, 1], got {self.function_word_weight}",
        )
        for name, weight in self.aspect_weights.items():
            _check(weight >= 0, f"{where}.aspect_weights.{name}", f"must not be negative, got {weight}")


@dataclass
class OptimizerConfig(_Serializable):
    """AdamW with linear warmup, then constant."""

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping

    def validate(self, where: str = "optimizer") -> None:
        _check(self.learning_rate > 0, f"{where}.learning_rate", f"must be positive, got {self.learning_rate}")
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", "must be 0 or more")
        _check(self.max_grad_norm >= 0, f"{where}.max_grad_norm", "must be 0 (off) or positive")


@dataclass
class TrainConfig(_Serializable):
    """Everything one training run needs besides the loaded models."""

    # One prompt = single-prompt fine-tuning; several = cycled in order.
    prompts: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    steps: int = 100
    videos_per_step: int = 1
    gradient_accumulation: int = 1
    seed: int = 0
    # "auto" (bf16 autocast on CUDA, fp32 on the CPU), "bf16" or "fp32".
    mixed_precision: str = "auto"
    video: VideoSpec = field(default_factory=VideoSpec)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    critic_input: CriticInputConfig = field(default_factory=CriticInputConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # Save a resumable checkpoint every N optimizer steps (0: only at the end / on interrupt).
    checkpoint_interval: int = 50
    # How many of the newest checkpoints to keep on disk (older ones are deleted).
    keep_last_checkpoints: int = 3
    # Stop with an error after this many non-finite steps in a row.
    max_consecutive_nonfinite: int = 3
    # Memory: recompute the critic's layer activations in backward (much less memory, ~30% slower).
    critic_gradient_checkpointing: bool = True
    # Memory: free the text encoder once the prompts are encoded (UMT5-XXL is ~10.6 GiB in bf16);
    # a loaded model then cannot encode new prompts until it is loaded again.
    release_text_encoder: bool = False

    def validate(self, where: str = "train") -> None:
        _check(len(self.prompts) > 0, f"{where}.prompts", "give at least one prompt")
        for i, prompt in enumerate(self.prompts):
            _check(bool(prompt.strip()), f"{where}.prompts[{i}]", "is empty; write what the video should show")
        _check(self.steps >= 1, f"{where}.steps", f"must be at least 1, got {self.steps}")
        _check(self.videos_per_step >= 1, f"{where}.videos_per_step", "must be at least 1")
        _check(self.gradient_accumulation >= 1, f"{where}.gradient_accumulation", "must be at least 1")
        _check(
            self.mixed_precision in ("auto", "bf16", "fp32"),
            f"{where}.mixed_precision",
            f"must be 'auto', 'bf16' or 'fp32', got {self.mixed_precision!r}",
        )
        _check(self.checkpoint_interval >= 0, f"{where}.checkpoint_interval", "must be 0 or more")
        _check(self.keep_last_checkpoints >= 1, f"{where}.keep_last_checkpoints", "must be at least 1")
        _check(self.max_consecutive_nonfinite >= 1, f"{where}.max_consecutive_nonfinite", "must be at least 1")
        self.video.validate(f"{where}.video")
        self.sampler.validate(f"{where}.sampler")
        self.decode.validate(f"{where}.decode")
        self.critic_input.validate(f"{where}.critic_input")
        self.reward.validate(f"{where}.reward")
        self.lora.validate(f"{where}.lora")
        self.optimizer.validate(f"{where}.optimizer")


@dataclass
class ModelsConfig(_Serializable):
    """Local model folders for the command line (the nodes pass loaded models instead)."""

    video_model: str = ""
    critic_model: str = ""
    # "auto" (bf16 on CUDA, fp32 on the CPU), "bf16", "fp16" or "fp32".
    video_dtype: str = "auto"
    critic_dtype: str = "auto"
    # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    video_device: str = "auto"
    critic_device: str = "auto"

    def validate(self, where: str = "models") -> None:
        _check(bool(self.video_model), f"{where}.video_model", "give the folder of a diffusers Wan text-to-video model")
        _check(bool(self.critic_model), f"{where}.critic_model", "give the folder of a Qwen2.5-VL model")
        for name in ("video_dtype", "critic_dtype"):
            value = getattr(self, name)
            _check(
                value in ("auto", "bf16", "fp16", "fp32"),
                f"{where}.{name}",
                f"must be 'auto', 'bf16', 'fp16' or 'fp32', got {value!r}",
            )


@dataclass
class RunConfig(_Serializable):
    """The file `python -m drf_core train --config FILE` reads."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "drf_output"
    # A QuestionSet JSON file per prompt is optional; by default prompts are decomposed.
    questions_file: str = ""
    # A key of `decompose.DECOMPOSERS` used when no questions file is given.
    decomposer: str = "rules"
    resume: bool = True

    def validate(self, where: str = "run") -> None:
        self.models.validate(f"{where}.models")
        self.train.validate(f"{where}.train")

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise DRFInputError(f"config file {path} does not exist; write one (see README, 'train')")
        return cls.from_json(path.read_text(encoding="utf-8"), where=str(path))


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_dtype(name: str, device: Any) -> Any:
    """`"auto"` -> bf16 on CUDA, fp32 elsewhere (the CPU, Apple's MPS); otherwise the named torch dtype."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise DRFInputError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def resolve_device(name: str) -> Any:
    """`"auto"` -> the first CUDA GPU, else Apple's MPS, else the CPU; otherwise the named device, checked."""
    import torch

    from .devices import auto_device, mps_available

    if name == "auto":
        return auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DRFInputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DRFInputError(f"device {name!r} asked for, but this machine has no CUDA GPU; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DRFInputError(
            f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type == "mps" and not mps_available():
        raise DRFInputError(f"device {name!r} asked for, but torch has no usable MPS (Apple GPU) here; use auto or cpu")
    return device

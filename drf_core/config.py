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
from collections.abc import Sequence
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
        # K = 0 would run every step without gradient: the reward then has no path to the LoRA.
        _check(
            k >= 1,
            f"{where}.truncated_backprop_steps",
            f"K must be at least 1 (the last K denoising steps carry the gradient to the LoRA), got {k}",
        )
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

    # A key of `frames.FRAME_SELECTIONS`: "uniform" (evenly spaced over the whole clip, so motion
    # is visible), "all", "every_nth", "first_middle_last", "prefix" (the first N: cheapest, since
    # the Wan VAE is causal, but five consecutive frames show almost no motion).
    frame_selection: str = "uniform"
    # uniform / prefix: how many frames; every_nth: n. Ignored by "all" and "first_middle_last".
    frame_selection_count: int = 8
    # Checkpoint the VAE decoder per latent frame (recompute in backward; much less memory).
    checkpoint_per_latent_frame: bool = True
    # Also checkpoint each residual block inside that recomputation, so backward keeps one block's
    # activations at a time instead of a whole latent frame's (those blocks run a third time).
    checkpoint_residual_blocks: bool = False
    # Keep nothing of the decode for backward but its input: backward decodes again. Its saved
    # state (the causal caches of every latent frame) then never meets the critic's memory.
    checkpoint_decode: bool = False
    # > 0: decode in segments of this many latent frames, each keeping only its input for backward,
    # which then holds one segment's causal caches at a time (each segment is decoded once more).
    segment_latent_frames: int = 0
    # Backward decodes one latent frame at a time, from the last, each from the causal cache it
    # started from (kept by the forward, which keeps nothing else): the least memory an exact
    # backward through the decode can take. Replaces checkpoint_decode and segments (the decode
    # then runs once without gradient, and once more, frame by frame, in backward).
    frame_by_frame_backward: bool = False
    # With frame_by_frame_backward: keep those caches in host RAM (Wan 2.1 at 480x832x33: 14.9 GiB,
    # traced by bench/memory.py) instead of on the GPU.
    caches_on_host: bool = False
    # With frame_by_frame_backward: > 1 recomputes each latent frame's high-resolution layers in
    # N x N spatial tiles (with enough overlap that each tile's pixels are exact), so backward
    # holds one tile's activations and caches instead of the whole frame's.
    backward_tiles: int = 1
    # With frame_by_frame_backward: > 1 keeps only every n-th latent frame's starting cache; backward
    # decodes the frames in between once more (without gradient) to get theirs back. About 1/n of
    # the caches' memory (plus n - 1 regenerated at a time) for one more decode of the clip.
    cache_interval: int = 1

    def validate(self, where: str = "decode") -> None:
        _check(
            self.frame_selection_count >= 1,
            f"{where}.frame_selection_count",
            f"must be at least 1, got {self.frame_selection_count}",
        )
        _check(self.segment_latent_frames >= 0, f"{where}.segment_latent_frames", "must be 0 (off) or more")
        _check(
            self.backward_tiles >= 1,
            f"{where}.backward_tiles",
            f"must be 1 (whole frames) or more, got {self.backward_tiles}",
        )
        _check(
            self.cache_interval >= 1,
            f"{where}.cache_interval",
            f"must be 1 (every latent frame) or more, got {self.cache_interval}",
        )


# The smallest side a Qwen-VL critic can take: one merged patch (patch_size 14 x merge_size 2).
MIN_CRITIC_SIDE = 28


@dataclass
class CriticInputConfig(_Serializable):
    """How frames are handed to the VLM."""

    # "video": one video of the frames; "images": each frame as its own image.
    mode: str = "video"
    # Size the frames are resized to before patching. 0 x 0 (the default) keeps the aspect ratio:
    # the official Qwen-VL rule (`smart_resize`: sides rounded to multiples of 28, pixel count
    # within the model folder's min/max pixels). A fixed size (multiples of 28) squashes frames of
    # another aspect ratio; it stays for users who want a fixed cost.
    height: int = 0
    width: int = 0
    # Frame rate of the video the frames come from (Wan 2.1 and 2.2 A14B: 16; Wan 2.2 TI2V-5B: 24).
    video_fps: float = 16.0
    # Frame rate the critic is told (Qwen2.5-VL spaces video positions in time by it). 0 (the
    # default): the true rate of the scored frames, `video_fps` over their mean spacing in frames.
    fps: float = 0.0
    # Questions scored in one VLM forward; 0 = all questions of a video at once.
    max_questions_per_batch: int = 0

    def validate(self, where: str = "critic_input") -> None:
        _check(self.mode in ("video", "images"), f"{where}.mode", f"must be 'video' or 'images', got {self.mode!r}")
        size = (self.height, self.width)
        _check(
            size == (0, 0) or min(size) >= MIN_CRITIC_SIDE,
            f"{where}.height/width",
            f"{self.height}x{self.width}: set both to 0 (the official size rule, aspect ratio kept) or both to at "
            f"least one patch ({MIN_CRITIC_SIDE} px, multiples of {MIN_CRITIC_SIDE})",
        )
        _check(self.video_fps > 0, f"{where}.video_fps", f"must be positive, got {self.video_fps}")
        _check(self.fps >= 0, f"{where}.fps", f"must be 0 (the true rate of the frames) or positive, got {self.fps}")
        _check(self.max_questions_per_batch >= 0, f"{where}.max_questions_per_batch", "must be 0 or positive")

    def clip_fps(self, frame_indices: Sequence[int] | None = None) -> float:
        """The frame rate the critic is told for frames taken at `frame_indices` of the video
        (None: consecutive frames): `fps` when set, else `video_fps` / the frames' mean spacing."""
        if self.fps > 0:
            return self.fps
        if frame_indices is None or len(frame_indices) < 2:
            return self.video_fps
        indices = list(frame_indices)
        span = indices[-1] - indices[0]
        _check(span > 0, "frame_indices", f"must increase, got {indices}")
        return self.video_fps * (len(indices) - 1) / span

    def for_frames(self, frame_indices: Sequence[int]) -> CriticInputConfig:
        """A copy whose `fps` is the true rate of frames taken at `frame_indices` (see `clip_fps`)."""
        return dataclasses.replace(self, fps=self.clip_fps(frame_indices))

    def for_still_image(self) -> CriticInputConfig:
        """A copy for one still image: mode "images", so the critic's processor takes the image path (as
        qwen-vl-utils does for a picture) instead of a one-frame video padded to two frames."""
        return dataclasses.replace(self, mode="images")

    def for_sample(self, frame_indices: Sequence[int], still_image: bool) -> CriticInputConfig:
        """How the critic sees the frames scored of one sample: a still image as an image
        (`for_still_image`), frames of a video at their true rate (`for_frames`)."""
        return self.for_still_image() if still_image else self.for_frames(frame_indices)


@dataclass
class RewardConfig(_Serializable):
    """How the critic's logits become one differentiable number."""

    # A key of `reward.YES_NO_REWARDS`: "log_prob", "probability", "logit_margin".
    yes_no: str = "log_prob"
    # A key of `reward.EXPLANATION_REWARDS`: "token_weighted_log_likelihood", "none".
    explanation: str = "token_weighted_log_likelihood"
    # Weight of the explanation term against the yes/no term inside each aspect.
    explanation_weight: float = 0.5
    # Weight of light words (articles, auxiliaries, pronouns: `reward.LIGHT_WORDS`) in the
    # token-weighted likelihood; every other word (negations and spatial words included) weighs 1.
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
        _check(self.weight_decay >= 0, f"{where}.weight_decay", f"must not be negative, got {self.weight_decay}")


@dataclass
class MonitorConfig(_Serializable):
    """Guards against reward hacking: held-out scoring during training, early stop, question movers.

    Every `interval` steps (and once before the first step) the current LoRA samples the training
    prompts (and `prompts`, held-out prompts) from the fixed `seeds`, without gradient, and the
    critic scores them with the training questions and with held-out questions (never used for
    gradients). `monitor.py` does the work; the numbers go into `metrics.jsonl`.
    """

    # Evaluate every N optimizer steps; 0 turns monitoring (and early stop) off.
    interval: int = 0
    # Seeds of the held-out videos (never drawn by training, which uses its own generator).
    seeds: list[int] = field(default_factory=lambda: [1000, 1001])
    # Prompts never trained on, scored with their own questions (decomposed by the rules unless given).
    prompts: list[str] = field(default_factory=list)
    # A key of `monitor.HELD_OUT_QUESTIONS`: "paraphrase" (reworded training questions), "llm" (the
    # critic's language model rewords them; falls back to "paraphrase"), or "none".
    held_out_questions: str = "paraphrase"
    # Early stop: after this many evaluations without a new best held-out score (0: never).
    early_stop_patience: int = 0
    # A new best must beat the old one by more than this.
    early_stop_min_delta: float = 0.0
    # Early stop as soon as the held-out score falls this far below its best (0: off).
    early_stop_drop: float = 0.0
    # Return (and export) the LoRA of the best held-out evaluation instead of the last step's.
    keep_best: bool = True
    # How many questions to list whose answers moved most since the start (0: none).
    movers: int = 5

    def validate(self, where: str = "monitor") -> None:
        _check(self.interval >= 0, f"{where}.interval", f"must be 0 (off) or more, got {self.interval}")
        if self.interval:
            _check(bool(self.seeds), f"{where}.seeds", "give at least one held-out seed, or set interval to 0")
        _check(
            len(set(self.seeds)) == len(self.seeds),
            f"{where}.seeds",
            f"lists a seed twice ({self.seeds}); list each once",
        )
        for i, prompt in enumerate(self.prompts):
            _check(bool(prompt.strip()), f"{where}.prompts[{i}]", "is empty; write a held-out prompt or remove it")
        choices = ("paraphrase", "llm", "none")
        _check(
            self.held_out_questions in choices,
            f"{where}.held_out_questions",
            f"must be one of {', '.join(choices)}, got {self.held_out_questions!r}",
        )
        _check(self.early_stop_patience >= 0, f"{where}.early_stop_patience", "must be 0 (off) or more")
        _check(self.early_stop_min_delta >= 0, f"{where}.early_stop_min_delta", "must not be negative")
        _check(self.early_stop_drop >= 0, f"{where}.early_stop_drop", "must be 0 (off) or positive")
        _check(self.movers >= 0, f"{where}.movers", "must be 0 or more")
        if self.interval == 0:
            _check(
                self.early_stop_patience == 0 and self.early_stop_drop == 0,
                f"{where}.early_stop_patience",
                "early stop needs held-out monitoring; set monitor.interval (e.g. 10) or turn early stop off",
            )


@dataclass
class RegularizationConfig(_Serializable):
    """Loss terms that keep the LoRA model close to the base model (`regularize.py`)."""

    # Weight of the drift penalty: mean squared difference between the LoRA model's and the base
    # model's predictions at the gradient steps (0: off; each gradient step then costs one more
    # forward pass without gradient).
    drift_weight: float = 0.0

    def validate(self, where: str = "regularization") -> None:
        _check(
            self.drift_weight >= 0 and self.drift_weight != float("inf"),
            f"{where}.drift_weight",
            f"must be 0 (off) or a positive number, got {self.drift_weight}",
        )


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
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
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
    # Memory: "phase" keeps only the model the current phase needs on the device (text encoder,
    # video model, VAE, critic), the others in host RAM (`offload.py`); "none" keeps all there.
    offload: str = "none"
    # A key of `memory_presets.MEMORY_PRESETS` ("48GB+", "24GB", "16GB", "auto") that sets the
    # memory settings above for a GPU size, or "custom": these settings as given.
    memory: str = "custom"

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
        _check(
            self.offload in ("none", "phase"),
            f"{where}.offload",
            f"must be 'none' or 'phase', got {self.offload!r}",
        )
        _check(self.keep_last_checkpoints >= 1, f"{where}.keep_last_checkpoints", "must be at least 1")
        _check(self.max_consecutive_nonfinite >= 1, f"{where}.max_consecutive_nonfinite", "must be at least 1")
        self.video.validate(f"{where}.video")
        self.sampler.validate(f"{where}.sampler")
        self.decode.validate(f"{where}.decode")
        self.critic_input.validate(f"{where}.critic_input")
        self.reward.validate(f"{where}.reward")
        self.lora.validate(f"{where}.lora")
        self.optimizer.validate(f"{where}.optimizer")
        self.monitor.validate(f"{where}.monitor")
        self.regularization.validate(f"{where}.regularization")
        overlap = sorted(set(self.prompts) & set(self.monitor.prompts))
        _check(
            not overlap,
            f"{where}.monitor.prompts",
            f"{overlap[:2]} are also training prompts; held-out prompts must be ones the LoRA never trains on",
        )


@dataclass
class EvaluateConfig(_Serializable):
    """Base model against a LoRA on prompts x seeds (`evaluate.py`, the Evaluate LoRA node, `evaluate`)."""

    # Every prompt is sampled from every seed, once without and once with the LoRA (same noise).
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    negative_prompt: str = ""
    # The LoRA's strength (0 gives the base model: every pair ties).
    strength: float = 1.0
    video: VideoSpec = field(default_factory=VideoSpec)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    critic_input: CriticInputConfig = field(default_factory=CriticInputConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # A key of `evaluate.INTERVALS`: "t" (Student t over the prompt x seed pairs) or "bootstrap"
    # (percentile bootstrap over the pairs, `bootstrap_samples` resamples, seeded).
    interval: str = "t"
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    # How many most-improved and most-regressed questions the report lists.
    top_questions: int = 5

    def validate(self, where: str = "evaluate") -> None:
        _check(bool(self.seeds), f"{where}.seeds", "give at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), f"{where}.seeds", f"lists a seed twice ({self.seeds})")
        _check(
            self.interval in ("t", "bootstrap"),
            f"{where}.interval",
            f"must be 't' or 'bootstrap', got {self.interval!r}",
        )
        _check(0 < self.confidence < 1, f"{where}.confidence", f"must be between 0 and 1, got {self.confidence}")
        _check(self.bootstrap_samples >= 100, f"{where}.bootstrap_samples", "must be at least 100")
        _check(self.top_questions >= 0, f"{where}.top_questions", "must be 0 or more")
        self.video.validate(f"{where}.video")
        self.sampler.validate(f"{where}.sampler")
        self.decode.validate(f"{where}.decode")
        self.critic_input.validate(f"{where}.critic_input")
        self.reward.validate(f"{where}.reward")


# The names `quantization.CRITIC_QUANTIZERS` and `models.VIDEO_WEIGHT_STORAGES` register (a test keeps them equal).
CRITIC_QUANTIZATION_MODES = ("none", "int8", "int4")
VIDEO_WEIGHT_STORAGES = ("auto", "fp8_e4m3fn", "fp8_e5m2")


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
    # How the frozen critic's linear weights are stored: "none" (as loaded), "int8" (about half of bf16) or
    # "int4" (NF4, about a quarter); a key of `quantization.CRITIC_QUANTIZERS` (bitsandbytes).
    critic_quantization: str = "none"
    # How the video model's frozen base weights are stored: "auto" (the load dtype), "fp8_e4m3fn" or
    # "fp8_e5m2" (half of bf16; each layer is cast to the compute dtype when it runs; LoRA stays in full precision).
    video_weight_storage: str = "auto"

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
        _check(
            self.critic_quantization in CRITIC_QUANTIZATION_MODES,
            f"{where}.critic_quantization",
            f"must be one of {', '.join(map(repr, CRITIC_QUANTIZATION_MODES))}, got {self.critic_quantization!r}",
        )
        _check(
            self.video_weight_storage in VIDEO_WEIGHT_STORAGES,
            f"{where}.video_weight_storage",
            f"must be one of {', '.join(map(repr, VIDEO_WEIGHT_STORAGES))}, got {self.video_weight_storage!r}",
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

"""The Diffusion-DRF training loop: sample -> decode -> critique -> backward into the LoRA.

One optimizer step: for each of `gradient_accumulation` micro-batches, draw noise and K, run the
sampler (T-K steps without gradient, K with), decode the selected frames with gradient, score
each video against its prompt's `QuestionSet`, and backpropagate `-reward`. Then clip, step
AdamW and the warmup schedule, and append a row to `metrics.jsonl`.

Guards against reward hacking come in through small hooks: `monitor.Monitor` scores held-out
seeds / questions / prompts every `monitor.interval` steps, keeps the best LoRA and decides early
stop; `regularize.DriftPenalty` adds the drift-from-base penalty to the loss; every row records
the yes/no answers of the step and the questions that moved most (`monitor.training_movers`).

It also owns the run's safety: resumable checkpoints every `checkpoint_interval` steps, on
interrupt (Ctrl-C or `should_stop()`), and on failure; a guard that skips non-finite steps and
stops after `max_consecutive_nonfinite` in a row; exact resume (same RNG, optimizer and LR state).

Data-parallel runs (several processes) come in through `distributed`'s hooks on `self.parallel`:
which global micro-batches this process computes, the gradient sum, gathering the step's results, rank
0 alone writing files; a single process gets hooks that do nothing.

Knows the `VideoBackend` and `RewardFunction` interfaces, never a model family, a LoRA
implementation or a critic; never ComfyUI
(progress and interrupts come in through callbacks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from . import __version__
from . import offload as offloading
from .checkpoint import (
    METRICS_FILE,
    capture_rng_state,
    checkpoint_path,
    find_checkpoint,
    holds_run,
    load_checkpoint,
    next_free_run_dir,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig
from .devices import device_memory_mb, host_memory_mb, reset_peak_memory
from .distributed import SingleProcess
from .errors import DRFInputError, TrainingDivergedError
from .io import write_text_atomic
from .lora import LoRAWeights
from .models.base import DecodeOptions, VideoBackend
from .monitor import Monitor, training_movers, yes_no_answers
from .offload import VAE, VIDEO_MODEL, PhaseOffload, active_offload, phase_offload
from .questions import QuestionSet
from .regularize import DriftPenalty
from .reward import RewardFunction
from .sampler import SamplingInterrupted, draw_truncation_steps, sample_latents
from .scoring import ScoredFrames

logger = logging.getLogger(__name__)

ADAPTER_NAME = "drf"


@dataclass
class ProgressEvent:
    """Sent after every optimizer step (and once when training ends)."""

    step: int
    total_steps: int
    metrics: dict[str, Any]
    # The frames just scored, detached on the CPU, `[F, 3, H, W]` in 0..1 (first video of the step).
    preview: torch.Tensor | None = None


@dataclass
class TrainResult:
    output_dir: Path
    final_step: int
    interrupted: bool
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    last_preview: torch.Tensor | None = None
    lora_files: dict[str, Path] = field(default_factory=dict)
    # Held-out monitoring: why the run stopped early (None: it did not), and the best evaluation.
    stop_reason: str | None = None
    best_step: int | None = None
    best_score: float | None = None


def _is_finite(value: torch.Tensor | float) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


@dataclass
class _MicroInputs:
    """What one micro-batch draws from the run's generator (every process draws every micro-batch's)."""

    index: int  # in the step's global micro-batch order
    prompts: list[str]
    noise: torch.Tensor
    grad_steps: int


@dataclass
class _MicroOutcome:
    """What a computed micro-batch reports to the step's metrics (gathered from every process)."""

    index: int
    rewards: list[float]
    per_aspect: list[dict[str, float]]
    drift: float | None
    answers: dict[str, float]


class Trainer:
    """Trains a LoRA on the backend's denoiser to raise `reward` for `question_sets`.

    `question_sets` holds one `QuestionSet` per prompt of `config.prompts` (matched by prompt
    text); `held_out_question_sets` may hold the sets of `config.monitor.prompts` (the rules write
    missing ones). `progress(event)` is called after each step; `should_stop()` is polled between steps
    and between denoising steps, and a True answer saves a checkpoint and returns. `parallel` is this
    process's `distributed` group (default: a single process).
    """

    def __init__(
        self,
        backend: VideoBackend,
        reward: RewardFunction,
        question_sets: Sequence[QuestionSet],
        config: TrainConfig,
        output_dir: str | Path,
        progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_lora: LoRAWeights | None = None,
        held_out_question_sets: Sequence[QuestionSet] = (),
        parallel: SingleProcess | None = None,
    ) -> None:
        config.validate()
        self.parallel = parallel or SingleProcess()
        # One optimizer step's micro-batches over all processes (one process: gradient_accumulation).
        self.micro_batches = config.gradient_accumulation * self.parallel.world_size
        self.backend = backend
        self.config = config
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        # One frame (an image family such as Flux): the critic sees a picture, and questions about motion go;
        # a video's scored frames are the frame selection's, at their true rate (`scoring.ScoredFrames`).
        scored = ScoredFrames.of(backend.num_frames_out(config.video), config.decode)
        self.still_image = scored.still_image
        question_sets = [scored.questions(qs) for qs in question_sets]  # the monitor adapts its held-out sets
        self.questions = self._match_questions(config.prompts, question_sets)
        presets = backend.lora_target_presets
        if config.lora.target_preset not in presets:
            raise DRFInputError(
                f"train.lora.target_preset {config.lora.target_preset!r} is not known for {backend.family}; "
                f"choose one of {sorted(presets)}"
            )
        self.frame_indices = list(scored.frame_indices)
        self.reward = scored.reward(reward)
        self.monitor = (
            Monitor(backend, self.reward, config, self.questions, held_out_question_sets, scored)
            if config.monitor.interval
            else None
        )
        self._drift: torch.Tensor | None = None
        self.offload: PhaseOffload | None = None
        # With phase offload, for `_backward`: (decoded frames, the detached copy the critic scored) and
        # (sampled latents, the detached copy the VAE decoded).
        self._scored_frames: tuple[torch.Tensor, torch.Tensor] | None = None
        self._decoded_latents: tuple[torch.Tensor, torch.Tensor] | None = None
        self.device = backend.device
        self.generator = torch.Generator(device="cpu")
        self.step = 0
        self.consecutive_nonfinite = 0
        self.metrics: list[dict[str, Any]] = []
        self.last_preview: torch.Tensor | None = None
        self._last_saved_step = -1
        self._drift: torch.Tensor | None = None
        self._answers: dict[str, float] = {}

        torch.manual_seed(config.seed)
        self.generator.manual_seed(config.seed)
        if initial_lora is None:
            self.named_parameters = backend.add_lora(config.lora, ADAPTER_NAME)
        else:  # continue from a LoRA file: its layers, ranks and weights (config.lora's rank is unused)
            self.named_parameters = backend.apply_lora(
                initial_lora, ADAPTER_NAME, trainable=True, dropout=config.lora.dropout
            )
        self.parameters = list(self.named_parameters.values())
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=config.optimizer.learning_rate,
            betas=config.optimizer.betas,
            weight_decay=config.optimizer.weight_decay,
            eps=config.optimizer.eps,
        )
        warmup = config.optimizer.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        )

    # --- setup ---------------------------------------------------------------------------------

    @staticmethod
    def _match_questions(prompts: Sequence[str], question_sets: Sequence[QuestionSet]) -> dict[str, QuestionSet]:
        by_prompt = {qs.prompt: qs for qs in question_sets}
        missing = [p for p in prompts if p not in by_prompt]
        if missing:
            raise DRFInputError(
                f"no questions for prompt(s) {missing}; decompose each training prompt into a QuestionSet first"
            )
        return {p: by_prompt[p] for p in prompts}

    def _autocast(self) -> contextlib.AbstractContextManager:
        mode = self.config.mixed_precision
        use_bf16 = mode == "bf16" or (mode == "auto" and self.device.type == "cuda")
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _cache_host(self) -> torch.device | None:
        """Where a frame-by-frame decode keeps its causal caches (None: on the device)."""
        if not self.config.decode.caches_on_host:
            return None
        return self.offload.host if self.offload is not None else offloading.HOST

    def _prompts_for(self, step: int, micro: int) -> list[str]:
        """Prompts cycle in order, so a run (and its resume) sees them deterministically."""
        per_micro = self.config.videos_per_step
        start = (step * self.micro_batches + micro) * per_micro
        prompts = self.config.prompts
        return [prompts[(start + i) % len(prompts)] for i in range(per_micro)]

    # --- resume --------------------------------------------------------------------------------

    def _resume_fields(self) -> dict[str, Any]:
        """Settings a resumed run must share with the run that wrote the checkpoint."""
        c = self.config
        return {
            "prompts": c.prompts,
            "seed": c.seed,
            "lora": c.lora.to_dict(),
            "videos_per_step": c.videos_per_step,
            "gradient_accumulation": c.gradient_accumulation,
        }

    def resume(self, path: str | Path) -> bool:
        """Continue from the checkpoint at `path` (a checkpoint or a run folder). False if none."""
        found = find_checkpoint(path)
        if found is None:
            return False
        checkpoint = load_checkpoint(found)
        saved_world_size, world_size = int(checkpoint.state.get("world_size", 1)), self.parallel.world_size
        if saved_world_size != world_size:
            raise DRFInputError(
                f"cannot resume from {found}: it was saved by a run with world size {saved_world_size} "
                f"({saved_world_size} process(es)) and this run has world size {world_size}; the global batch and "
                "which prompts and seeds each process trains depend on it. Launch with "
                f"{saved_world_size} process(es) again (1: plain `python -m drf_core train`), or start a new run "
                "in another output folder (--fresh)"
            )
        saved = checkpoint.state.get("resume_fields", {})
        for key, value in self._resume_fields().items():
            if key in saved and json.loads(json.dumps(saved[key])) != json.loads(json.dumps(value)):
                raise DRFInputError(
                    f"cannot resume from {found}: train.{key} was {saved[key]!r} there and is {value!r} now; "
                    "use the same setting, or start a new run in another output folder"
                )
        unknown = sorted(set(checkpoint.parameters) ^ set(self.named_parameters))
        if unknown:
            raise DRFInputError(
                f"cannot resume from {found}: its LoRA parameters do not match this model's ({unknown[:3]}...); "
                "resume with the same video model and LoRA settings"
            )
        with torch.no_grad():
            for name, param in self.named_parameters.items():
                param.copy_(checkpoint.parameters[name])
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.lr_schedule.load_state_dict(checkpoint.scheduler_state)
        restore_rng_state(self.generator, checkpoint.rng_state)
        self.step = checkpoint.step
        self._last_saved_step = checkpoint.step
        self.consecutive_nonfinite = int(checkpoint.state.get("consecutive_nonfinite", 0))
        self.metrics = [row for row in self._read_metrics() if row["step"] <= self.step]
        self._rewrite_metrics()
        if self.monitor is not None:
            self.monitor.restore(self.metrics, checkpoint.extra_tensors.get("best_lora"))
        logger.info("resumed from %s at step %d", found, self.step)
        return True

    # --- files ---------------------------------------------------------------------------------

    def _read_metrics(self) -> list[dict[str, Any]]:
        path = self.output_dir / METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _rewrite_metrics(self) -> None:
        if self.parallel.is_main:
            write_text_atomic(self.output_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.metrics))

    def _append_metrics(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        if not self.parallel.is_main:
            return
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def save_checkpoint(self) -> Path:
        if not self.parallel.is_main:  # rank 0 writes the run's one checkpoint
            self._last_saved_step = self.step
            return checkpoint_path(self.output_dir, self.step)
        path = save_checkpoint(
            self.output_dir,
            self.step,
            self.named_parameters,
            self.optimizer.state_dict(),
            self.lr_schedule.state_dict(),
            capture_rng_state(self.generator),
            {
                "resume_fields": self._resume_fields(),
                "consecutive_nonfinite": self.consecutive_nonfinite,
                "world_size": self.parallel.world_size,
                "config": self.config.to_dict(),
                "questions": {p: qs.to_dict() for p, qs in self.questions.items()},
                "backend": self.backend.describe(),
                "drf_version": __version__,
            },
            keep_last=self.config.keep_last_checkpoints,
            extra_tensors=self._best_tensors(),
        )
        self._last_saved_step = self.step
        return path

    def _best_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        best = self.monitor.best_parameters if self.monitor is not None else None
        return {"best_lora": best} if best is not None else {}

    def select_best(self) -> int | None:
        """Load the best held-out evaluation's LoRA into the model (when `monitor.keep_best`); its step."""
        monitor = self.monitor
        if monitor is None or not self.config.monitor.keep_best or monitor.best_parameters is None:
            return None
        with torch.no_grad():
            for name, param in self.named_parameters.items():
                param.copy_(monitor.best_parameters[name])
        if monitor.best_step != self.step:
            logger.info(
                "returning the LoRA of step %d (best held-out score %+.4f), not the last step's (%d)",
                monitor.best_step,
                monitor.best_score,
                self.step,
            )
        return monitor.best_step

    def _checkpoint_if_unsaved(self) -> Path | None:
        if self.step == self._last_saved_step:
            found = find_checkpoint(self.output_dir)
            return found
        return self.save_checkpoint()

    def _encode_all_prompts(self) -> None:
        """Encode every training prompt once; then the text encoder may be freed."""
        c = self.config
        self.backend.encode_prompts(c.prompts + c.monitor.prompts, c.negative_prompt, c.sampler.guidance_scale)
        if c.release_text_encoder:
            self.backend.release_text_encoder()

    # --- the step ------------------------------------------------------------------------------

    def _draw_inputs(self, micro: int) -> _MicroInputs:
        """Prompts, noise and K of global micro-batch `micro` of this step, from the run's generator."""
        c = self.config
        prompts = self._prompts_for(self.step, micro)
        noise = self.backend.init_noise(c.video, len(prompts), self.generator)
        grad_steps = draw_truncation_steps(c.sampler, self.generator)
        return _MicroInputs(micro, prompts, noise, grad_steps)

    def _micro_batch(self, inputs: _MicroInputs) -> tuple[torch.Tensor, list[dict[str, float]], torch.Tensor]:
        """Sample, decode and score one micro-batch: its rewards, per-aspect rewards and a preview."""
        c = self.config
        prompts = inputs.prompts
        embeddings = self.backend.encode_prompts(prompts, c.negative_prompt, c.sampler.guidance_scale)
        drift = DriftPenalty(self.backend) if c.regularization.drift_weight > 0 else None
        with self._autocast():
            latents = sample_latents(
                self.backend, embeddings, inputs.noise, c.sampler, inputs.grad_steps, should_stop=self.should_stop,
                grad_step_hook=drift,
            )  # fmt: skip
            decoded = latents
            if self.offload is not None and latents.requires_grad:  # backward in stages (`_backward`)
                decoded = latents.detach().requires_grad_()
                self._decoded_latents = (latents, decoded)
            decode_args = (decoded, self.frame_indices, DecodeOptions.from_config(c.decode, self._cache_host()))
            if c.decode.checkpoint_decode and not c.decode.frame_by_frame_backward and latents.requires_grad:
                # reentrant: the forward keeps nothing
                frames = checkpoint(self.backend.decode, *decode_args, use_reentrant=True)
            else:
                frames = self.backend.decode(*decode_args)
            scored = frames
            if self.offload is not None and frames.requires_grad:  # backward in stages (`_backward`)
                scored = frames.detach().requires_grad_()
                self._scored_frames = (frames, scored)
            results = [self.reward(scored[i], self.questions[p]) for i, p in enumerate(prompts)]
        totals = torch.stack([r.total.float() for r in results])
        # Side results of this micro-batch, read by `_train_step` (the return value stays the reward's).
        self._drift = drift.value() if drift is not None else None
        self._answers = {}
        several = len(c.prompts) > 1
        for p, r in zip(prompts, results, strict=True):
            self._answers.update(yes_no_answers(r, c.prompts.index(p) if several else None))
        return totals, [r.per_aspect for r in results], frames[0].detach().float().cpu()

    def _train_step(self) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        reset_peak_memory(self.device)
        self.parallel.seed_step(c.seed, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        # Every process draws every micro-batch's noise in order (same generator everywhere), computes its own.
        inputs = [self._draw_inputs(micro) for micro in range(self.micro_batches)]
        outcomes: list[_MicroOutcome] = []
        finite = True
        for micro in inputs:
            if not self.parallel.owns(micro.index):
                continue
            self._drift = None
            self._scored_frames = self._decoded_latents = None
            totals, per_aspect, preview = self._micro_batch(micro)
            loss = -totals.mean()
            drift_term = None
            if self._drift is not None:
                drift_term = c.regularization.drift_weight * self._drift
                loss = loss + drift_term
            loss = loss / self.micro_batches
            if not _is_finite(loss):
                finite = False
                break
            if not loss.requires_grad:
                raise DRFInputError(
                    f"the reward does not depend on any LoRA weight: none of the last "
                    f"{c.sampler.truncated_backprop_steps} denoising steps (truncated_backprop_steps) runs the model "
                    "the LoRA is on. For Wan 2.2 A14B's high-noise expert, raise truncated_backprop_steps past the "
                    "low-noise expert's steps, or train the low-noise expert"
                )
            self._backward(loss, drift_term)
            drift = float(self._drift.detach()) if self._drift is not None else None
            outcomes.append(_MicroOutcome(micro.index, totals.detach().tolist(), per_aspect, drift, self._answers))
            self.last_preview = preview
        self._scored_frames = self._decoded_latents = None
        if self.offload is not None:  # the LoRA's parameters live in the video model
            self.offload.use(VIDEO_MODEL)
        finite = self.parallel.all_finite(finite)
        if finite:
            self.parallel.sum_gradients(self.parameters)
        gathered = sorted((o for rank in self.parallel.gather(outcomes) for o in rank), key=lambda o: o.index)
        rewards = [value for o in gathered for value in o.rewards]
        aspects: dict[str, list[float]] = {}
        for row in (row for o in gathered for row in o.per_aspect):
            for name, value in row.items():
                aspects.setdefault(name, []).append(value)
        drifts = [o.drift for o in gathered if o.drift is not None]
        step_answers: dict[str, float] = {}
        for o in gathered:
            step_answers.update(o.answers)
        max_norm = c.optimizer.max_grad_norm if c.optimizer.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)) if finite else float("nan")
        lr = self.lr_schedule.get_last_lr()[0]
        skipped = not (finite and _is_finite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_nonfinite += 1
            logger.warning(
                "step %d: non-finite loss or gradient; skipped (%d in a row)", self.step + 1, self.consecutive_nonfinite
            )
        else:
            self.optimizer.step()
            self.lr_schedule.step()
            self.consecutive_nonfinite = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        reward = sum(rewards) / len(rewards) if rewards else float("nan")
        drift = sum(drifts) / len(drifts) if drifts else None
        row = {
            "step": self.step,
            "reward": reward,
            "loss": -reward + (c.regularization.drift_weight * drift if drift is not None else 0.0),
            "reward_per_aspect": {name: sum(v) / len(v) for name, v in aspects.items()},
            "grad_norm": grad_norm,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "peak_memory_mb": device_memory_mb(self.device),
            "host_memory_mb": host_memory_mb(),
            "skipped": skipped,
            "answers": step_answers,
        }
        if drift is not None:
            row["drift"] = drift
        if c.monitor.movers:
            row["movers"] = training_movers([*self.metrics, row], c.monitor.movers)
        return row

    def _backward(self, loss: torch.Tensor, drift_term: torch.Tensor | None) -> None:
        """`loss.backward()`; with phase offload, in three stages so each finds its weights on the device.

        Stage 1 runs through the critic alone (it scored a detached copy of the frames) and gives
        d loss / d frames; then the critic may leave. Stage 2 sends that gradient through the VAE
        decode (it decoded a detached copy of the latents) with the VAE alone on the device, giving
        d loss / d latents. Stage 3 sends that (and the drift term's gradient) through the denoiser
        steps with the video model alone on the device. The gradients are the same numbers as one
        backward: the same ops, split at the frames and at the latents.
        """
        if self._scored_frames is None or self._decoded_latents is None or self.offload is None:
            loss.backward()
            return
        (frames, scored), (latents, decoded) = self._scored_frames, self._decoded_latents
        self._scored_frames = self._decoded_latents = None
        (frame_grad,) = torch.autograd.grad(loss, scored)
        del scored
        with self.offload.hold(VAE):
            (latent_grad,) = torch.autograd.grad(frames, decoded, frame_grad)
        del frames, decoded, frame_grad
        outputs, grads = [latents], [latent_grad]
        if drift_term is not None:  # d loss / d drift_term = 1 / micro_batches
            outputs.append(drift_term)
            grads.append(torch.full_like(drift_term, 1.0 / self.micro_batches))
        with self.offload.hold(VIDEO_MODEL):
            torch.autograd.backward(outputs, grads)

    def _start_offload(self) -> PhaseOffload | None:
        """Phase offload for `offload="phase"`; kept on for models an earlier run offloaded."""
        if self.config.offload == "phase":
            modules, device = self.reward.offload_modules()
            if not self.backend.offload_groups():
                logger.info("phase offload: the video model's memory is managed by its host; only the critic moves")
            return phase_offload(self.backend, modules, device or self.device)
        earlier = active_offload(self.backend)
        if earlier is not None:
            logger.info(
                "phase offload stays on: these models were offloaded by an earlier run (load them again to stop)"
            )
        return earlier

    def _evaluate_held_out(self) -> dict[str, Any]:
        assert self.monitor is not None
        monitor = self.monitor
        evaluation = self.parallel.from_main(lambda: monitor.evaluate(self.step, self._autocast))
        self.monitor.record(self.step, evaluation, self.named_parameters)
        return evaluation

    # --- the loop ------------------------------------------------------------------------------

    def train(self, resume_from: str | Path | None = None) -> TrainResult:
        """Run until `config.steps`; returns early (with a checkpoint) when interrupted."""
        if self.parallel.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and not self.resume(resume_from):
            logger.info("no checkpoint under %s; starting a new run", resume_from)
        if self.step == 0 and holds_run(self.output_dir):
            raise DRFInputError(
                f"{self.output_dir} already holds a training run (checkpoints or metrics) that a new run would "
                "overwrite; resume it, or start the new run in another folder such as "
                f"{next_free_run_dir(self.output_dir)}"
            )
        sampling = self.config.sampler
        fewest, most = sampling.truncated_backprop_range or (sampling.truncated_backprop_steps,) * 2
        self.backend.check_backprop_steps(sampling.num_inference_steps, fewest, most)
        if self.step == 0:
            self.metrics = []
            self._rewrite_metrics()
        self.parallel.broadcast_parameters(self.parameters)
        self.offload = self._start_offload()
        self._encode_all_prompts()
        if self.monitor is not None:
            self.monitor.should_stop = self.should_stop
        self.backend.set_training(True)
        self.reward.set_gradient_checkpointing(self.config.critic_gradient_checkpointing)
        interrupted = False
        try:
            if self.monitor is not None and self.step == 0:  # the reference every later evaluation is compared to
                self._append_metrics({"step": 0, "held_out": self._evaluate_held_out()})
            while self.step < self.config.steps:
                if self.should_stop():
                    interrupted = True
                    break
                if self.monitor is not None and self.monitor.stop_reason:
                    break
                row = self._train_step()
                if self.monitor is not None and self.monitor.due(self.step):
                    try:
                        row["held_out"] = self._evaluate_held_out()
                    except SamplingInterrupted:  # the step itself is done: keep it, skip its evaluation
                        interrupted = True
                        logger.warning("interrupted during the held-out evaluation of step %d; skipped", self.step)
                self._append_metrics(row)
                if self.progress is not None:
                    self.progress(ProgressEvent(self.step, self.config.steps, row, self.last_preview))
                if self.consecutive_nonfinite >= self.config.max_consecutive_nonfinite:
                    path = self._checkpoint_if_unsaved()
                    raise TrainingDivergedError(
                        f"{self.consecutive_nonfinite} steps in a row gave non-finite losses or gradients; "
                        f"lower the learning rate or max_grad_norm, then resume from {path}"
                    )
                interval = self.config.checkpoint_interval
                if interval and self.step % interval == 0:
                    self.save_checkpoint()
                if interrupted:
                    break
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted during step %d; the unfinished step is discarded", self.step + 1)
        except TrainingDivergedError:
            raise
        except BaseException:
            if self.step > 0:
                saved = self._checkpoint_if_unsaved()
                logger.error("training failed at step %d; resumable checkpoint: %s", self.step + 1, saved)
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.backend.set_training(False)
            self.reward.set_gradient_checkpointing(False)
        checkpoint = self._checkpoint_if_unsaved() if self.step > 0 else None
        if interrupted:
            logger.warning(
                "training stopped at step %d of %d; resume from %s", self.step, self.config.steps, checkpoint
            )
        monitor = self.monitor
        return TrainResult(
            output_dir=self.output_dir,
            final_step=self.step,
            interrupted=interrupted,
            metrics=list(self.metrics),
            checkpoint=checkpoint,
            last_preview=self.last_preview,
            stop_reason=monitor.stop_reason if monitor is not None else None,
            best_step=monitor.best_step if monitor is not None else None,
            best_score=monitor.best_score if monitor is not None and monitor.best_step is not None else None,
        )

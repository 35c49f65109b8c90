"""The training loop on tiny models: reward goes up, resume is exact, failures keep the work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from drf_core.checkpoint import holds_run, list_checkpoints, next_free_run_dir
from drf_core.config import (
    CriticInputConfig,
    DecodeConfig,
    LoRAConfig,
    OptimizerConfig,
    RewardConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from drf_core.errors import DRFInputError, TrainingDivergedError
from drf_core.lora import remove_lora
from drf_core.reward import DRFReward, RewardFunction, RewardResult
from drf_core.sampler import sample_video
from drf_core.trainer import METRICS_FILE, Trainer
from tests.conftest import TRAIN_PROMPT
from tests.conftest import small_train_config as small_config

PROMPT = TRAIN_PROMPT


def trainer_for(backend, critic, question_sets, config: TrainConfig, output_dir, **options) -> Trainer:
    """A trainer with the critic-based reward the config describes."""
    reward = DRFReward(critic, config.reward, config.critic_input)
    return Trainer(backend, reward, question_sets, config, output_dir, **options)


def on_micro_batch(trainer: Trainer, hook) -> None:
    """Route the trainer's micro-batches through `hook(call_number, run)`; `run()` does the real one."""
    original = trainer._micro_batch
    calls = []

    def wrapped(micro):
        calls.append(micro)
        return hook(len(calls), lambda: original(micro))

    trainer._micro_batch = wrapped


def lora_state(backend) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backend.denoiser.named_parameters() if "lora_" in n}


def test_training_raises_reward_on_held_out_seeds(fresh, questions, tmp_path):
    backend, critic = fresh
    config = small_config(
        steps=10,
        video=VideoSpec(64, 64, 9),
        critic_input=CriticInputConfig(height=56, width=56),
        sampler=SamplerConfig(num_inference_steps=8, truncated_backprop_steps=2, guidance_scale=3.0),
        optimizer=OptimizerConfig(learning_rate=3e-2),
        checkpoint_interval=0,
    )
    reward = DRFReward(critic, config.reward, config.critic_input)

    def held_out_reward() -> float:
        videos = [
            sample_video(backend, [PROMPT], "", config.video, config.sampler, torch.Generator().manual_seed(100 + s))
            for s in range(3)
        ]
        with torch.no_grad():
            return sum(float(reward(v[0], questions).total) for v in videos) / len(videos)

    before = held_out_reward()
    result = trainer_for(backend, critic, [questions], config, tmp_path).train()
    after = held_out_reward()
    assert result.final_step == 10 and not result.interrupted
    assert after > before + 0.005, (before, after)
    rewards = [row["reward"] for row in result.metrics]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_only_lora_parameters_receive_gradients(fresh, questions, tmp_path):
    backend, critic = fresh
    trainer = trainer_for(backend, critic, [questions], small_config(steps=1), tmp_path)
    # Gradients are zeroed after the optimizer step, so look just before it.
    step = trainer.optimizer.step
    holders: list[str] = []

    def checked_step(*args, **kwargs):
        for module in (backend.denoiser, backend.vae, critic.model):
            for name, p in module.named_parameters():
                if p.grad is not None:
                    holders.append(name)
        return step(*args, **kwargs)

    trainer.optimizer.step = checked_step
    trainer.train()
    assert holders, "no parameter received a gradient"
    assert all("lora_" in name for name in holders), [n for n in holders if "lora_" not in n]
    lora_names = {n for n, p in backend.denoiser.named_parameters() if p.requires_grad}
    assert set(holders) == lora_names


def test_resume_is_bit_exact(models, questions, tmp_path):
    backend, critic = models
    remove_lora(backend.denoiser)
    straight = trainer_for(backend, critic, [questions], small_config(steps=4), tmp_path / "straight").train()
    straight_state = lora_state(backend)
    remove_lora(backend.denoiser)

    first = trainer_for(backend, critic, [questions], small_config(steps=2), tmp_path / "split").train()
    assert first.final_step == 2
    remove_lora(backend.denoiser)  # a new process would start from scratch
    second = trainer_for(backend, critic, [questions], small_config(steps=4), tmp_path / "split")
    result = second.train(resume_from=tmp_path / "split")
    resumed_state = lora_state(backend)
    remove_lora(backend.denoiser)

    assert result.final_step == 4
    assert straight_state.keys() == resumed_state.keys()
    for name in straight_state:
        assert torch.equal(straight_state[name], resumed_state[name]), name
    assert [r["reward"] for r in straight.metrics] == [r["reward"] for r in result.metrics]
    lines = (tmp_path / "split" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_resume_refuses_changed_lora_settings(fresh, questions, tmp_path):
    backend, critic = fresh
    trainer_for(backend, critic, [questions], small_config(steps=2), tmp_path).train()
    remove_lora(backend.denoiser)
    changed = small_config(steps=4, lora=LoRAConfig(rank=8, alpha=8.0, target_preset="attention_ffn"))
    with pytest.raises(DRFInputError, match=r"train\.lora"):
        trainer_for(backend, critic, [questions], changed, tmp_path).train(resume_from=tmp_path)


def test_a_new_run_never_overwrites_an_earlier_one(fresh, questions, tmp_path):
    backend, critic = fresh
    run = tmp_path / "run"
    assert next_free_run_dir(run) == run and not holds_run(run)
    trainer_for(backend, critic, [questions], small_config(steps=2), run).train()
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert holds_run(run) and next_free_run_dir(run) == tmp_path / "run_2"
    remove_lora(backend.denoiser)
    with pytest.raises(DRFInputError, match=r"already holds a training run.*run_2"):
        trainer_for(backend, critic, [questions], small_config(steps=2, seed=1), run).train()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept
    (tmp_path / "run_2").mkdir()  # an empty folder holds no run: it is free
    (tmp_path / "run_2" / METRICS_FILE).write_text("")
    assert next_free_run_dir(run) == tmp_path / "run_2"


def test_stop_callback_saves_a_resumable_checkpoint(fresh, questions, tmp_path):
    backend, critic = fresh
    events = []
    trainer = trainer_for(
        backend,
        critic,
        [questions],
        small_config(steps=4, checkpoint_interval=0),
        tmp_path,
        progress=events.append,
        should_stop=lambda: len(events) >= 1,
    )
    result = trainer.train()
    assert result.interrupted and result.final_step == 1
    assert result.checkpoint is not None and result.checkpoint.name == "step_000001"
    assert events[0].preview is not None and events[0].preview.shape[1] == 3
    assert float(events[0].preview.min()) >= 0.0 and float(events[0].preview.max()) <= 1.0
    assert set(events[0].metrics) >= {"reward", "reward_per_aspect", "loss", "grad_norm", "lr", "seconds"}


def test_keyboard_interrupt_mid_step_keeps_last_finished_step(fresh, questions, tmp_path):
    backend, critic = fresh
    trainer = trainer_for(backend, critic, [questions], small_config(steps=4, checkpoint_interval=0), tmp_path)

    def interrupting(call, run):
        if call == 3:
            raise KeyboardInterrupt
        return run()

    on_micro_batch(trainer, interrupting)
    result = trainer.train()
    assert result.interrupted and result.final_step == 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002"]


def test_failure_leaves_checkpoint_and_reraises(fresh, questions, tmp_path):
    backend, critic = fresh
    trainer = trainer_for(backend, critic, [questions], small_config(steps=4, checkpoint_interval=0), tmp_path)

    def failing(call, run):
        if call == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return run()

    on_micro_batch(trainer, failing)
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001"]


def test_nonfinite_steps_are_skipped_then_stop(fresh, questions, tmp_path):
    backend, critic = fresh
    trainer = trainer_for(backend, critic, [questions], small_config(steps=6, max_consecutive_nonfinite=2), tmp_path)

    def poisoned(call, run):
        totals, aspects, preview = run()
        if call >= 2:
            totals = totals * float("nan")
        return totals, aspects, preview

    on_micro_batch(trainer, poisoned)
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        trainer.train()
    before = lora_state(backend)
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, True]
    checkpoint = list_checkpoints(tmp_path)[-1]
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["optimizer"]["state"], "optimizer state of the good step is kept"
    # skipped steps did not change the weights: they equal the checkpoint of step 1's update
    stored = load_file(str(checkpoint / "lora.safetensors"))
    for name, value in before.items():
        assert torch.equal(stored[name], value)


def test_bad_inputs_raise_clear_errors(fresh, questions, tmp_path):
    backend, critic = fresh
    with pytest.raises(DRFInputError, match="no questions for prompt"):
        trainer_for(backend, critic, [questions], small_config(prompts=["a cat"]), tmp_path)
    with pytest.raises(DRFInputError, match="K=5 is larger"):
        small_config(sampler=SamplerConfig(num_inference_steps=4, truncated_backprop_steps=5)).validate()
    with pytest.raises(DRFInputError, match=r"prompts\[0\]"):
        small_config(prompts=["  "]).validate()
    with pytest.raises(DRFInputError, match="target_preset"):
        trainer_for(backend, critic, [questions], small_config(lora=LoRAConfig(target_preset="everything")), tmp_path)
    with pytest.raises(DRFInputError, match="frame_selection_count"):
        small_config(decode=DecodeConfig("prefix", 0)).validate()
    with pytest.raises(DRFInputError, match=r"reward\.aspect_weights"):
        trainer_for(
            backend, critic, [questions], small_config(reward=RewardConfig(aspect_weights={"STYLE": 1.0})), tmp_path
        ).train()


class MeanBrightness(RewardFunction):
    """An injected reward that needs no critic: the frames' mean brightness."""

    def __call__(self, frames, questions):
        return RewardResult(total=frames.mean(), per_aspect={"brightness": float(frames.mean().detach())})


def test_trainer_takes_any_reward_function(fresh, questions, tmp_path):
    backend, _ = fresh
    events = []
    config = small_config(steps=2, checkpoint_interval=0)
    result = Trainer(backend, MeanBrightness(), [questions], config, tmp_path, progress=events.append).train()
    assert result.final_step == 2
    for event in events:  # the reward the trainer logged is the injected function's value on the frames it scored
        assert event.metrics["reward"] == pytest.approx(float(event.preview.mean()), abs=1e-6)
        assert set(event.metrics["reward_per_aspect"]) == {"brightness"}
    assert result.metrics[-1]["grad_norm"] > 0

"""Guards against reward hacking on tiny models: held-out monitoring, early stop with the best LoRA,
held-out questions, the drift penalty, and exact resume with all of it on."""

from __future__ import annotations

import json

import pytest
import torch

from drf_core.api import train_lora
from drf_core.config import (
    LoRAConfig,
    MonitorConfig,
    OptimizerConfig,
    RegularizationConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from drf_core.errors import DRFInputError
from drf_core.heldout import held_out_questions, paraphrase_question
from drf_core.lora import adapters_disabled, add_lora, remove_lora
from drf_core.monitor import question_movers, training_movers
from drf_core.regularize import DriftPenalty
from drf_core.reward import DRFReward
from drf_core.sampler import sample_latents, sample_video
from drf_core.trainer import METRICS_FILE, Trainer
from tests.conftest import TRAIN_PROMPT
from tests.conftest import small_train_config as config

PROMPT = TRAIN_PROMPT
HELD_OUT_PROMPT = "a blue ball rolls across green grass"


def lora_state(backend) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backend.denoiser.named_parameters() if "lora_" in n}


def drf_reward(critic, run_config: TrainConfig) -> DRFReward:
    """The critic-based reward `run_config` describes (what `api` and the CLI build)."""
    return DRFReward(critic, run_config.reward, run_config.critic_input)


# --- held-out monitoring -----------------------------------------------------------------------


def test_monitoring_scores_held_out_seeds_questions_and_prompts(fresh, questions, tmp_path):
    backend, critic = fresh
    monitor = MonitorConfig(interval=2, seeds=[7, 8], prompts=[HELD_OUT_PROMPT], movers=3)
    run_config = config(steps=2, monitor=monitor, checkpoint_interval=0)
    trainer = Trainer(backend, drf_reward(critic, run_config), [questions], run_config, tmp_path)
    # the step-0 evaluation is the base model (B = 0): recompute it by hand, same seeds, same frames
    reward = DRFReward(critic, run_config.reward, run_config.critic_input)
    paraphrased = held_out_questions(questions, "paraphrase")
    by_hand, by_hand_questions = [], []
    for seed in (7, 8):
        video = sample_video(backend, [PROMPT], "", run_config.video, run_config.sampler,
                             torch.Generator().manual_seed(seed), frame_indices=trainer.frame_indices)[0]  # fmt: skip
        with torch.no_grad():
            by_hand.append(float(reward(video, questions).total))
            by_hand_questions.append(float(reward(video, paraphrased).total))
    result = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    start, end = rows[0]["held_out"], rows[2]["held_out"]
    assert "held_out" not in rows[1]
    assert start["reward"] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert start["questions_reward"] == pytest.approx(sum(by_hand_questions) / 2, abs=1e-6)
    assert start["question_gap"] == pytest.approx(start["reward"] - start["questions_reward"])
    # the selection score uses only questions never trained on: held-out questions and held-out prompts
    assert start["score"] == pytest.approx((sum(by_hand_questions) + 2 * start["prompts_reward"]) / 4, abs=1e-6)
    assert end["gap_growth"] == pytest.approx(end["question_gap"] - start["question_gap"])
    assert len(end["movers"]) == 3 and all(set(m) == {"question", "start", "now", "change"} for m in end["movers"])
    assert end["reward"] != start["reward"]  # the LoRA changed the held-out videos
    assert {"answers", "movers"} <= set(rows[2]) and rows[2]["answers"]
    assert result.best_step in (0, 2) and result.stop_reason is None


def test_movers_rank_by_absolute_change():
    start = {"a": 0.5, "b": 0.5, "c": 0.5}
    now = {"a": 0.52, "b": 0.2, "c": 0.6, "new": 0.9}
    movers = question_movers(start, now, 2)
    assert [m["question"] for m in movers] == ["b", "c"]
    assert movers[0]["change"] == pytest.approx(-0.3)
    rows = [{"answers": {"q": 0.1 * i}} for i in range(10)]
    (only,) = training_movers(rows, 5, window=2)
    assert only["start"] == pytest.approx(0.05) and only["now"] == pytest.approx(0.85)


def test_early_stop_returns_the_best_lora_and_says_why(fresh, questions, tmp_path):
    backend, critic = fresh
    # no evaluation can beat the start by 10: the best stays step 0 (the fresh LoRA, B = 0)
    monitor = MonitorConfig(interval=1, seeds=[7], held_out_questions="none", early_stop_patience=2,
                            early_stop_min_delta=10.0)  # fmt: skip
    run_config = config(steps=6, monitor=monitor, checkpoint_interval=0)
    trained = train_lora(backend, drf_reward(critic, run_config), [questions], run_config, tmp_path, resume=False)
    assert trained.run.final_step == 2 and not trained.run.interrupted
    assert "has not beaten its best" in trained.run.stop_reason and "at step 0" in trained.run.stop_reason
    assert trained.selected_step == 0 and trained.run.best_step == 0
    assert all(float(w.up.abs().max()) == 0.0 for w in trained.lora.modules.values())
    assert "selected_by" in trained.lora.metadata
    # queued again: the run stays stopped, and says why
    again = train_lora(backend, drf_reward(critic, run_config), [questions], run_config, tmp_path, resume=True)
    assert again.run.final_step == 2 and again.run.stop_reason == trained.run.stop_reason
    assert again.selected_step == 0


def test_resume_is_exact_with_monitoring_and_drift(models, questions, tmp_path):
    backend, critic = models
    monitor = MonitorConfig(interval=1, seeds=[7], early_stop_patience=100)
    settings = dict(monitor=monitor, regularization=RegularizationConfig(drift_weight=10.0))
    remove_lora(backend.denoiser)
    straight_trainer = Trainer(
        backend,
        drf_reward(critic, config(steps=4, **settings)),
        [questions],
        config(steps=4, **settings),
        tmp_path / "straight",
    )
    straight = straight_trainer.train()
    straight_state = lora_state(backend)
    remove_lora(backend.denoiser)
    Trainer(
        backend,
        drf_reward(critic, config(steps=2, **settings)),
        [questions],
        config(steps=2, **settings),
        tmp_path / "split",
    ).train()
    remove_lora(backend.denoiser)
    second = Trainer(
        backend,
        drf_reward(critic, config(steps=4, **settings)),
        [questions],
        config(steps=4, **settings),
        tmp_path / "split",
    )
    resumed = second.train(resume_from=tmp_path / "split")
    resumed_state = lora_state(backend)
    remove_lora(backend.denoiser)
    for name in straight_state:
        assert torch.equal(straight_state[name], resumed_state[name]), name
    timing = ("seconds", "peak_memory_mb", "host_memory_mb")

    def untimed(rows):
        return [{k: v for k, v in row.items() if k not in timing} for row in rows]

    assert untimed(straight.metrics) == untimed(resumed.metrics)  # rewards, drift, held-out, best bookkeeping
    assert all(row["drift"] > 0 for row in straight.metrics[2:]), "the drift penalty is computed at each step"
    assert (resumed.best_step, resumed.best_score) == (straight.best_step, straight.best_score)
    best, best_resumed = straight_trainer.monitor.best_parameters, second.monitor.best_parameters
    assert best.keys() == best_resumed.keys() and all(torch.equal(best[n], best_resumed[n]) for n in best)


def test_monitor_settings_are_checked():
    with pytest.raises(DRFInputError, match=r"monitor\.early_stop_patience.*needs held-out monitoring"):
        config(monitor=MonitorConfig(interval=0, early_stop_patience=3)).validate()
    with pytest.raises(DRFInputError, match=r"monitor\.seeds"):
        config(monitor=MonitorConfig(interval=5, seeds=[])).validate()
    with pytest.raises(DRFInputError, match=r"monitor\.prompts.*also training prompts"):
        config(monitor=MonitorConfig(interval=5, prompts=[PROMPT])).validate()
    with pytest.raises(DRFInputError, match=r"monitor\.held_out_questions"):
        config(monitor=MonitorConfig(held_out_questions="synonyms")).validate()
    with pytest.raises(DRFInputError, match=r"regularization\.drift_weight"):
        config(regularization=RegularizationConfig(drift_weight=-1.0)).validate()
    with pytest.raises(DRFInputError, match=r"optimizer\.weight_decay"):
        config(optimizer=OptimizerConfig(weight_decay=-0.1)).validate()


# --- held-out questions ------------------------------------------------------------------------


def test_paraphrases_keep_meaning_fields_and_change_words(questions):
    held_out = held_out_questions(questions, "paraphrase")
    pairs = list(zip(questions.iter_yes_no(), held_out.iter_yes_no(), strict=True))
    for (aspect, original), (held_aspect, reworded) in pairs:
        assert aspect.name == held_aspect.name and original.expected == reworded.expected
        assert reworded.question != original.question and reworded.question.endswith("?")
    for (_, original), (_, reworded) in zip(questions.iter_explanations(), held_out.iter_explanations(), strict=True):
        assert reworded.target == original.target and reworded.question != original.question
    assert paraphrase_question("Is there a hat?") == "Can you see a hat in the video?"
    assert held_out_questions(questions, "none") is None


def test_language_model_paraphrases_are_checked_line_by_line(questions):
    originals = list(dict.fromkeys(q.question for _, q in questions.iter_yes_no()))

    def chat(text: str) -> str:  # rewords the first question, repeats the second, drops the rest
        return f"1. Would you say the video shows apples?\n2. {originals[1]}\n"

    held_out = held_out_questions(questions, "llm", chat=chat)
    reworded = [q.question for _, q in held_out.iter_yes_no()]
    assert reworded[0] == "Would you say the video shows apples?"
    assert reworded[1] == paraphrase_question(originals[1])  # unchanged reply -> the pattern paraphrase
    assert reworded[2] == paraphrase_question(originals[2])  # missing line -> the pattern paraphrase


# --- the drift penalty -------------------------------------------------------------------------


def _drift_run(backend, grad_steps: int = 2, record=None):
    sampler = SamplerConfig(num_inference_steps=4, truncated_backprop_steps=grad_steps, guidance_scale=3.0)
    embeddings = backend.encode_prompts([PROMPT], "", sampler.guidance_scale)
    noise = backend.init_noise(VideoSpec(32, 32, 5), 1, torch.Generator().manual_seed(3))
    drift = DriftPenalty(backend)

    def hook(latents, timestep, embeds, guidance, prediction):
        drift(latents, timestep, embeds, guidance, prediction)
        if record is not None:
            record.append((latents.detach().clone(), timestep, embeds, guidance, prediction.detach().clone()))

    sample_latents(backend, embeddings, noise, sampler, grad_steps, grad_step_hook=hook)
    return drift.value()


def _set_lora_b(backend, scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in backend.denoiser.named_parameters():
            if "lora_B" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))


def test_drift_is_zero_for_a_fresh_lora_and_grows_with_drift(fresh):
    backend, _ = fresh
    add_lora(backend.denoiser, LoRAConfig(rank=4, alpha=4.0), backend.lora_target_presets["attention_ffn"])
    assert float(_drift_run(backend).detach()) == 0.0
    values = []
    for scale in (0.01, 0.03, 0.1):
        _set_lora_b(backend, scale)
        values.append(float(_drift_run(backend).detach()))
    assert 0 < values[0] < values[1] < values[2], values


def test_drift_gradient_reaches_only_the_lora(fresh):
    backend, _ = fresh
    add_lora(backend.denoiser, LoRAConfig(rank=4, alpha=4.0), backend.lora_target_presets["attention_ffn"])
    _set_lora_b(backend, 0.05)
    _drift_run(backend).backward()
    with_grad = [
        n for module in (backend.denoiser, backend.vae) for n, p in module.named_parameters() if p.grad is not None
    ]
    assert with_grad and all("lora_" in n for n in with_grad), with_grad
    assert any(float(p.grad.abs().sum()) > 0 for n, p in backend.denoiser.named_parameters() if "lora_A" in n)
    backend.denoiser.zero_grad(set_to_none=True)


def test_drift_equals_a_hand_computed_value(fresh):
    backend, _ = fresh
    add_lora(backend.denoiser, LoRAConfig(rank=4, alpha=4.0), backend.lora_target_presets["attention_ffn"])
    _set_lora_b(backend, 0.05)
    record: list = []
    value = float(_drift_run(backend, grad_steps=2, record=record).detach())
    assert len(record) == 2
    remove_lora(backend.denoiser)  # the base model itself, not the adapter switched off
    with torch.no_grad():
        terms = [((p - backend.predict(x, t, e, g)) ** 2).mean() for x, t, e, g, p in record]
    assert value == pytest.approx(float(sum(terms) / 2), rel=1e-5)


def test_adapters_disabled_restores_the_adapters(fresh):
    backend, _ = fresh
    add_lora(backend.denoiser, LoRAConfig(rank=4, alpha=4.0), backend.lora_target_presets["attention"])
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in backend.denoiser.modules() if isinstance(m, BaseTunerLayer)]
    with adapters_disabled(backend.denoiser):
        assert all(layer.disable_adapters for layer in layers)
    assert not any(layer.disable_adapters for layer in layers)

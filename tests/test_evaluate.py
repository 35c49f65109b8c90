"""Evaluate LoRA on tiny models: same noise for base and LoRA, interval math, win rate, report contents."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from drf_core import cli
from drf_core.api import PREVIEW_ADAPTER, save_trained_lora
from drf_core.config import CriticInputConfig, DecodeConfig, EvaluateConfig, SamplerConfig, VideoSpec
from drf_core.critics import load_critic
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.evaluate import (
    PairScores,
    bootstrap_interval,
    evaluate_lora,
    student_t_quantile,
    summarize,
    t_interval,
)
from drf_core.lora import LoRAModuleWeights, LoRAWeights, has_lora, remove_lora
from drf_core.models import load_video_backend
from drf_core.reward import QuestionScore, RewardResult

PROMPTS = ("two red apples on a wooden table", "a blue ball rolls across green grass")


@pytest.fixture(scope="module")
def models(tiny_models):
    backend = load_video_backend(tiny_models.wan, "fp32", "cpu")
    remove_lora(backend.denoiser)
    return backend, load_critic(tiny_models.qwen, "fp32", "cpu")


def random_lora(backend, scale: float = 0.3) -> LoRAWeights:
    """A rank-2 LoRA on every attention projection, with nonzero up weights (it changes the videos)."""
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for name, module in backend.denoiser.named_modules():
        linear = getattr(module, "base_layer", module)  # a layer a LoRA was on before is wrapped by peft
        if name.endswith(("attn1.to_q", "attn1.to_v")) and isinstance(linear, torch.nn.Linear):
            down = torch.randn(2, linear.in_features, generator=generator) * scale
            up = torch.randn(linear.out_features, 2, generator=generator) * scale
            modules[name] = LoRAModuleWeights(down, up, 2.0)
    assert modules
    return LoRAWeights(path=None, key_layout="peft", modules=modules, metadata={})


def small(**overrides) -> EvaluateConfig:
    values = dict(
        seeds=[3, 4],
        video=VideoSpec(32, 32, 5),
        sampler=SamplerConfig(num_inference_steps=3, guidance_scale=3.0),
        decode=DecodeConfig("all", 1),
        critic_input=CriticInputConfig(height=28, width=28),
        top_questions=3,
    )
    values.update(overrides)
    return EvaluateConfig(**values)


def test_strength_zero_ties_every_pair(models):
    backend, critic = models
    sets = [decompose(p) for p in PROMPTS]
    evaluation = evaluate_lora(backend, critic, sets, random_lora(backend), small(strength=0.0))
    assert len(evaluation.pairs) == 4
    for pair in evaluation.pairs:  # same noise, LoRA switched off: identical videos, identical scores
        assert float(pair.base.total) == float(pair.lora.total)
        assert [q.value for q in pair.base.per_question] == [q.value for q in pair.lora.per_question]
    assert evaluation.ties == 4 and evaluation.win_rate == 0.5
    assert evaluation.improved() == [] and evaluation.regressed() == []
    assert "win rate 0.50 (0 wins, 4 ties, 0 losses)" in evaluation.report()
    assert not has_lora(backend.denoiser, PREVIEW_ADAPTER)  # the model is left as it was found


def test_lora_changes_scores_and_the_report_lists_them(models):
    backend, critic = models
    sets = [decompose(PROMPTS[0])]
    evaluation = evaluate_lora(backend, critic, sets, random_lora(backend), small(seeds=[3, 4, 5]))
    base_again = evaluate_lora(backend, critic, sets, random_lora(backend), small(seeds=[3, 4, 5], strength=0.0))
    # the base videos are the same in both runs (same seeds, same noise); the LoRA ones differ
    assert [float(p.base.total) for p in evaluation.pairs] == [float(p.base.total) for p in base_again.pairs]
    assert any(p.change != 0 for p in evaluation.pairs)
    assert evaluation.wins + evaluation.ties + evaluation.losses == 3
    report = evaluation.report()
    names = [a.name for a in evaluation.aspects]
    assert names == ["total", "TA", "PHY", "VQ"]
    for aspect in evaluation.aspects:
        assert f"| {aspect.name} | {aspect.base.text()} | {aspect.lora.text()} | {aspect.change.text()}" in report
        assert aspect.change.low <= aspect.change.mean <= aspect.change.high
    assert "Student t interval over the prompt x seed pairs" in report and "95% " in report
    moved = evaluation.improved() + evaluation.regressed()
    assert moved and all(f"[{q.aspect}] {q.question}" in report for q in moved)
    assert all(q.change > 0 for q in evaluation.improved()) and all(q.change < 0 for q in evaluation.regressed())
    yes_no = sorted((q for q in evaluation.questions if q.kind == "yes_no"), key=lambda q: -q.change)
    if evaluation.improved():
        assert evaluation.improved()[0] is yes_no[0]
    image = evaluation.chart()
    assert image.size[0] > 500 and image.size[1] > 200
    data = evaluation.to_dict()
    assert data["wins"] == evaluation.wins and len(data["pairs"]) == 3


def test_t_interval_matches_a_hand_computation():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), t(0.975, 3) = 3.182446305284263
    low, high = t_interval([1.0, 2.0, 3.0, 4.0], EvaluateConfig())
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert low == pytest.approx(2.5 - half, abs=1e-9) and high == pytest.approx(2.5 + half, abs=1e-9)
    # published quantiles of Student's t
    assert student_t_quantile(0.975, 1) == pytest.approx(12.706204736174707, rel=1e-9)
    assert student_t_quantile(0.975, 9) == pytest.approx(2.2621571627982053, rel=1e-9)
    assert student_t_quantile(0.95, 5) == pytest.approx(2.015048372669157, rel=1e-9)
    assert student_t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-6)  # the CDF is flat to rounding near 0
    assert all(math.isnan(v) for v in t_interval([1.0], EvaluateConfig()))


def test_bootstrap_interval_is_the_seeded_percentile_bootstrap():
    values = [0.1, -0.3, 0.7, 0.2, 0.0]
    config = EvaluateConfig(interval="bootstrap", bootstrap_samples=500, confidence=0.9)
    rows = np.random.default_rng(0).integers(0, 5, size=(500, 5))
    means = np.asarray(values)[rows].mean(axis=1)
    assert bootstrap_interval(values, config) == (float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95)))
    assert bootstrap_interval([0.5] * 4, config) == (0.5, 0.5)


def _result(total: float, p: float) -> RewardResult:
    question = QuestionScore("TA", "yes_no", "Is it red?", math.log(p), 1.0, expected="yes", probability=p)
    return RewardResult(torch.tensor(total), {"TA": total}, [question])


def test_win_rate_counts_ties_as_half_and_questions_by_probability():
    pairs = [
        PairScores("a", 0, _result(-1.0, 0.5), _result(-0.5, 0.7)),
        PairScores("a", 1, _result(-1.0, 0.5), _result(-1.0, 0.5)),
        PairScores("a", 2, _result(-1.0, 0.5), _result(-2.0, 0.3)),
        PairScores("a", 3, _result(-1.0, 0.5), _result(-0.9, 0.6)),
    ]
    evaluation = summarize(pairs, EvaluateConfig())
    assert (evaluation.wins, evaluation.ties, evaluation.losses) == (2, 1, 1)
    assert evaluation.win_rate == pytest.approx(2.5 / 4)
    (question,) = evaluation.questions
    assert question.base == pytest.approx(0.5) and question.lora == pytest.approx(0.525)
    total = evaluation.aspects[0]
    assert total.change.mean == pytest.approx((0.5 + 0 - 1.0 + 0.1) / 4)


def test_bad_settings_are_refused(models):
    backend, critic = models
    with pytest.raises(DRFInputError, match=r"evaluate\.seeds"):
        small(seeds=[]).validate()
    with pytest.raises(DRFInputError, match=r"evaluate\.interval"):
        small(interval="wilson").validate()
    with pytest.raises(DRFInputError, match=r"evaluate\.confidence"):
        small(confidence=1.0).validate()
    with pytest.raises(DRFInputError, match="no prompts to evaluate"):
        evaluate_lora(backend, critic, [], random_lora(backend), small())


def test_evaluate_command_writes_report_chart_and_json(models, tiny_models, tmp_path, caplog):
    backend, _ = models
    lora_file = save_trained_lora(random_lora(backend), tmp_path / "lora.safetensors", "wan", "comfyui")
    out = tmp_path / "eval"
    with caplog.at_level(logging.INFO):
        code = cli.main([
            "evaluate", "--video-model", str(tiny_models.wan), "--critic", str(tiny_models.qwen),
            "--lora", str(lora_file), "--prompt", PROMPTS[1], "--seeds", "3,4", "--width", "32", "--height", "32",
            "--frames", "5",
            "--frames-scored", "2", "--steps", "3", "--guidance", "3", "--critic-size", "28", "--interval", "bootstrap",
            "--dtype", "fp32", "--device", "cpu", "--out", str(out),
        ])  # fmt: skip
    assert code == 0
    data = json.loads((out / "evaluation.json").read_text())
    assert data["wins"] + data["ties"] + data["losses"] == 2 and data["config"]["interval"] == "bootstrap"
    report = (out / "evaluation.md").read_text()
    assert "percentile bootstrap over the prompt x seed pairs" in report and PROMPTS[1] in report
    assert (out / "evaluation.png").stat().st_size > 1000
    assert "win rate" in caplog.text
    with caplog.at_level(logging.ERROR):
        bad = cli.main(["evaluate", "--video-model", "x", "--critic", "y", "--lora", "z", "--prompt", "a cat",
                        "--seeds", "1,two"])  # fmt: skip
    assert bad == 2 and "--seeds" in caplog.text

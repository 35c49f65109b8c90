"""The user-facing layer: api functions and `python -m drf_core` commands on tiny models."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from drf_core import cli
from drf_core.api import critique, export_lora, load_lora, sample_videos, save_trained_lora, train_lora
from drf_core.config import (
    CriticInputConfig,
    DecodeConfig,
    LoRAConfig,
    ModelsConfig,
    OptimizerConfig,
    RewardConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from drf_core.critics import load_critic
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.lora import has_lora
from drf_core.media import load_frames, save_animation
from drf_core.models import load_video_backend
from drf_core.questions import QuestionSet
from drf_core.reward import DRFReward

PROMPT = "a red ball on a table"
SPEC = VideoSpec(32, 32, 5)
SAMPLER = SamplerConfig(num_inference_steps=3, truncated_backprop_steps=1, guidance_scale=2.0)


def tiny_train_config(steps: int = 2) -> TrainConfig:
    return TrainConfig(
        prompts=[PROMPT],
        steps=steps,
        video=SPEC,
        sampler=SAMPLER,
        decode=DecodeConfig("all", 1),
        critic_input=CriticInputConfig(height=28, width=28),
        lora=LoRAConfig(rank=2, alpha=2.0),
        optimizer=OptimizerConfig(learning_rate=5e-2),
        checkpoint_interval=1,
    )


@pytest.fixture(scope="module")
def models(tiny_models):
    return load_video_backend(tiny_models.wan, "fp32", "cpu"), load_critic(tiny_models.qwen, "fp32", "cpu")


@pytest.fixture(scope="module")
def trained(models, tmp_path_factory):
    backend, critic = models
    config = tiny_train_config()
    reward = DRFReward(critic, config.reward, config.critic_input)
    return train_lora(backend, reward, [decompose(PROMPT)], config, tmp_path_factory.mktemp("run"), resume=False)


def test_train_lora_returns_a_snapshot_and_leaves_the_model_clean(models, trained):
    backend, _ = models
    assert not has_lora(backend.denoiser, "drf")
    assert trained.run.final_step == 2 and trained.family == "wan"
    assert any(float(w.up.abs().max()) > 0 for w in trained.lora.modules.values()), "LoRA did not train"
    assert json.loads(trained.lora.metadata["prompts"]) == [PROMPT]
    assert isinstance(trained.reward_curve(), Image.Image)


def test_sample_with_lora_is_reproducible_and_strength_zero_is_base(models, trained):
    backend, _ = models
    base = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=7)
    again = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=7)
    zero = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=7, lora=trained.lora, strength=0.0)
    full = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=7, lora=trained.lora)
    assert torch.equal(base, again) and torch.equal(base, zero)
    assert not torch.equal(base, full)
    assert not has_lora(backend.denoiser, "drf_preview")
    assert base.shape == (1, 5, 3, 32, 32)


def test_saved_formats_reproduce_the_in_memory_lora(models, trained, tmp_path):
    backend, _ = models
    reference = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=3, lora=trained.lora)
    for fmt in ("comfyui", "diffusers"):
        path = save_trained_lora(trained.lora, tmp_path / f"{fmt}.safetensors", "wan", fmt)
        loaded = load_lora(path, "wan")
        assert loaded.key_layout == fmt
        video = sample_videos(backend, [PROMPT], SPEC, SAMPLER, seed=3, lora=loaded)
        assert torch.equal(video, reference), fmt


def test_export_converts_between_formats_losslessly(trained, tmp_path):
    comfy = save_trained_lora(trained.lora, tmp_path / "a.safetensors", "wan", "comfyui")
    diffusers = export_lora(comfy, tmp_path / "b.safetensors", "diffusers")
    back = export_lora(diffusers, tmp_path / "c.safetensors", "comfyui")
    first, last = load_file(str(comfy)), load_file(str(back))
    assert first.keys() == last.keys()
    assert all(torch.equal(first[k], last[k]) for k in first)
    assert all(k.startswith("transformer.") for k in load_file(str(diffusers)))


def test_critique_reports_every_question_and_heatmaps(models):
    _, critic = models
    questions = decompose(PROMPT)
    frames = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    visual = CriticInputConfig(height=28, width=28)
    reward = DRFReward(critic, RewardConfig(), visual)
    verdict = critique(reward, frames, questions, explain_with=critic, critic_input=visual, heatmaps=True)
    assert set(verdict.heatmaps) == {"TA", "PHY", "VQ"}
    for heat in verdict.heatmaps.values():
        assert heat.shape == frames.shape and float(heat.min()) >= 0 and float(heat.max()) <= 1
    report = verdict.report()
    for _, question in questions.iter_yes_no():
        assert question.question in report
    assert len(verdict.explanations) == questions.num_explanations()
    assert isinstance(verdict.chart(), Image.Image)
    with pytest.raises(DRFInputError, match="zero frames"):
        critique(reward, torch.zeros(0, 3, 28, 28), questions)


# --- command line --------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_make_tiny_models_writes_loadable_folders(tmp_path, capsys):
    code, _ = run_cli(capsys, "make-tiny-models", str(tmp_path))
    assert code == 0
    backend = load_video_backend(tmp_path / "wan", "fp32", "cpu")
    critic = load_critic(tmp_path / "qwen2_5_vl", "fp32", "cpu")
    assert backend.family == "wan" and critic.family == "qwen2_5_vl"


def test_decompose_prints_question_set_json(capsys, tmp_path):
    code, out = run_cli(capsys, "decompose", "--prompt", PROMPT, "--out", str(tmp_path / "q.json"))
    assert code == 0
    assert QuestionSet.from_json(out) == QuestionSet.load(tmp_path / "q.json") == decompose(PROMPT)


def test_critique_command_on_a_gif(tiny_models, tmp_path, capsys):
    frames = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    gif = save_animation(frames, tmp_path / "clip.gif")
    assert load_frames(gif).shape == (4, 3, 28, 28)
    code, out = run_cli(
        capsys, "critique", "--critic", str(tiny_models.qwen), "--video", str(gif), "--prompt", PROMPT,
        "--size", "28", "--json", "--no-explain", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert set(data["per_aspect"]) == {"TA", "PHY", "VQ"}
    assert (tmp_path / "out" / "scores.png").is_file() and (tmp_path / "out" / "heatmap_TA.gif").is_file()


def test_train_command_trains_then_resumes(tiny_models, tmp_path, capsys):
    config = RunConfig(
        models=ModelsConfig(str(tiny_models.wan), str(tiny_models.qwen), "fp32", "fp32", "cpu", "cpu"),
        train=tiny_train_config(steps=2),
        output_dir=str(tmp_path / "run"),
    )
    path = tmp_path / "run.json"
    path.write_text(config.to_json())
    assert run_cli(capsys, "train", "--config", str(path))[0] == 0
    assert (tmp_path / "run" / "drf_lora.safetensors").is_file()
    assert (tmp_path / "run" / "reward_curve.png").is_file()
    config.train.steps = 3
    path.write_text(config.to_json())
    assert run_cli(capsys, "train", "--config", str(path))[0] == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_cli_bad_input_exits_2_with_the_reason(tmp_path, capsys, caplog):
    with caplog.at_level(logging.ERROR):
        code, _ = run_cli(capsys, "train", "--config", str(tmp_path / "missing.json"))
    assert code == 2
    assert "does not exist" in caplog.text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"video_model": "x", "critic_model": "y"}, "train": {"stepz": 3}}))
    with caplog.at_level(logging.ERROR):
        assert run_cli(capsys, "train", "--config", str(bad))[0] == 2
    assert "stepz" in caplog.text


@pytest.mark.slow
def test_demo_writes_every_artifact(tmp_path, capsys):
    code, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), "--steps", "3")
    assert code == 0
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    for name in ("drf_lora.safetensors", "drf_lora_diffusers.safetensors", "reward_curve.png", "report.md"):
        assert (out / name).is_file(), name
    with Image.open(out / "preview_before_after.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (64 * 2 + 4, 64)
    assert load_lora(out / "drf_lora.safetensors", "wan").key_layout == "comfyui"

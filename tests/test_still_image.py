"""One-frame runs (an image family such as Flux): the critic sees a picture, not a one-frame video,
and questions about motion or time are left out, in training, held-out monitoring, Critique Video
and Evaluate LoRA alike (`drf_core.scoring`). Tiny models, CPU."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from drf_core import cli
from drf_core.api import critique_sample, sample_videos
from drf_core.config import (
    CriticInputConfig,
    DecodeConfig,
    EvaluateConfig,
    MonitorConfig,
    RewardConfig,
    SamplerConfig,
    VideoSpec,
)
from drf_core.critics.qwen_vision import preprocess_frames, read_vision_settings
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.evaluate import evaluate_lora
from drf_core.media import to_pil
from drf_core.questions import TEMPORAL_TAGS, Aspect, QuestionSet, YesNoQuestion, for_still_image
from drf_core.reward import DRFReward
from drf_core.scoring import ScoredFrames
from drf_core.trainer import Trainer
from tests.conftest import PACK_NAME, TRAIN_PROMPT, small_train_config
from tests.conftest import run_node as run
from tests.test_critic_qwen import _official_yes_no
from tests.test_evaluate import random_lora

MOTION_PROMPT = "a red fox runs across a snowy field, then jumps over a log, the camera slowly pans left"


def _tags(question_set: QuestionSet) -> set[str]:
    return {q.tag for a in question_set.aspects for q in [*a.yes_no, *a.explanations]}


def _texts(question_set: QuestionSet) -> list[str]:
    return [t for a in question_set.aspects for q in a.explanations for t in (q.question, q.target)] + [
        q.question for a in question_set.aspects for q in a.yes_no
    ]


def _temporal_questions(question_set: QuestionSet) -> set[str]:
    return {q.question for a in question_set.aspects for q in [*a.yes_no, *a.explanations] if q.tag in TEMPORAL_TAGS}


def _image_trainer(backend, reward, questions, tmp_path, **overrides) -> Trainer:
    """A trainer of one-frame samples (the tiny Wan at num_frames 1: an image run, as Flux's)."""
    values = dict(video=VideoSpec(32, 32, 1), decode=DecodeConfig("uniform", 8), critic_input=reward.critic_input)
    trainer = Trainer(backend, reward, [questions], small_train_config(**{**values, **overrides}), tmp_path)
    backend.remove_lora("drf")  # the trainer put its adapter on; these tests only use its reward and questions
    return trainer


def test_still_image_questions_leave_out_motion_and_speak_of_an_image():
    video = decompose(MOTION_PROMPT)
    assert _tags(video) & TEMPORAL_TAGS >= {"motion", "camera", "flicker", "sequence"}  # the prompt has them
    image = decompose(MOTION_PROMPT, still_image=True)
    assert image == for_still_image(video)
    assert not _tags(image) & TEMPORAL_TAGS
    kept = {q.question for a in image.aspects for q in a.yes_no}
    assert "Is the image sharp and free of artifacts?" in kept  # VQ stays, about the image
    assert "Is the fox jumping over the log?" in {q.question for q in video.aspects[0].yes_no} & kept  # an action
    texts = [t for a in image.aspects for e in a.explanations for t in (e.question, e.target)] + list(kept)
    assert not any("video" in text.lower() for text in texts)
    # Nothing else is dropped: every non-temporal question of the video set is there.
    video_kept = [q for a in video.aspects for q in a.yes_no if q.tag not in TEMPORAL_TAGS]
    assert len(video_kept) == sum(len(a.yes_no) for a in image.aspects)


def test_a_set_of_motion_questions_only_is_refused_for_an_image():
    motion = QuestionSet("a ball rolls", [Aspect("PHY", yes_no=[YesNoQuestion("Does it roll?", tag="motion")])])
    with pytest.raises(DRFInputError, match="about motion or time"):
        for_still_image(motion)
    mixed = QuestionSet(
        "a ball rolls",
        [
            Aspect("PHY", yes_no=[YesNoQuestion("Does it roll?", tag="motion")]),
            Aspect("TA", yes_no=[YesNoQuestion("Is there a ball in the video?", tag="object")]),
        ],
    )
    assert [a.name for a in for_still_image(mixed).aspects] == ["TA"]  # the emptied aspect goes


def test_the_critic_sees_one_frame_as_an_image_like_the_official_processor(critic, processor, qwen_dir):
    reward = DRFReward(critic, RewardConfig(), CriticInputConfig())
    assert reward.for_frames([0]).critic_input.mode == "video"  # a one-frame clip of a video model
    image_reward = reward.for_frames([0], still_image=True)
    assert image_reward.critic_input.mode == "images"
    frame = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    questions = ["Is there a cat?", "Is the image sharp?"]
    ours = critic.score_yes_no(frame, questions, image_reward.critic_input)
    official = _official_yes_no(critic, processor, frame, questions, "images")
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)
    settings = read_vision_settings(qwen_dir)
    for visual, modality in ((image_reward.critic_input, "image"), (reward.for_frames([0]).critic_input, "video")):
        assert preprocess_frames(frame, visual.mode, 0, 0, visual.clip_fps(), settings).modality == modality


def test_a_one_frame_run_is_a_still_image_run(fresh, questions, tmp_path):
    backend, critic = fresh
    reward = DRFReward(critic, RewardConfig(), CriticInputConfig(height=28, width=28))
    config = small_train_config(video=VideoSpec(32, 32, 1), decode=DecodeConfig("uniform", 8))  # 8 of a video
    image_run = Trainer(backend, reward, [questions], config, tmp_path / "i")
    assert image_run.still_image and image_run.frame_indices == [0]
    assert image_run.reward.critic_input.mode == "images"
    assert image_run.questions[TRAIN_PROMPT] == for_still_image(questions)
    backend.remove_lora("drf")
    video_run = Trainer(backend, reward, [questions], small_train_config(), tmp_path / "v")
    assert not video_run.still_image and video_run.reward.critic_input.mode == "video"
    assert video_run.questions[TRAIN_PROMPT] == questions


def test_critique_of_one_frame_is_the_reward_the_trainer_computes_for_that_image(
    fresh, questions, tmp_path, monkeypatch
):
    backend, critic = fresh
    visual = CriticInputConfig(height=28, width=28)
    reward = DRFReward(critic, RewardConfig(), visual)
    trainer = _image_trainer(backend, reward, questions, tmp_path)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        trained = trainer.reward(image, trainer.questions[TRAIN_PROMPT])
    modes, asked, explained = [], [], []
    score, generate = critic.score, critic.generate

    def recording_score(frames, yes_no, queries, answers, critic_input):
        modes.append(critic_input.mode)
        asked.extend([*yes_no, *queries])
        return score(frames, yes_no, queries, answers, critic_input)

    def recording_generate(frames, question, critic_input, **options):
        explained.append((question, critic_input.mode))
        return generate(frames, question, critic_input, **options)

    monkeypatch.setattr(critic, "score", recording_score)
    monkeypatch.setattr(critic, "generate", recording_generate)
    # The frame selection (8 frames of a video) does not apply to an image; the questions are the video's.
    verdict = critique_sample(
        reward, image, questions, DecodeConfig("uniform", 8), visual, explain_with=critic, heatmaps=True,
        max_new_tokens=2,
    )  # fmt: skip
    assert verdict.still_image and verdict.to_dict()["still_image"]
    assert verdict.total == float(trained.total)  # exact: the same code path
    assert [(q.question, q.value) for q in verdict.result.per_question] == [
        (q.question, q.value) for q in trained.per_question
    ]
    assert set(modes) == {"images"} and {mode for _, mode in explained} == {"images"}
    temporal = _temporal_questions(questions)
    assert temporal and not temporal & set(asked)  # the prompt's camera move is not asked about an image
    assert not any("video" in text.lower() for text in asked)
    assert [q for q, _ in explained] == [q.question for _, q in for_still_image(questions).iter_explanations()]
    assert list(verdict.heatmaps) == [a.name for a in for_still_image(questions).aspects]
    assert torch.equal(verdict.frames, image) and "still image" in verdict.report()


def test_critique_of_a_video_is_unchanged_by_image_mode(fresh, questions):
    _, critic = fresh
    visual = CriticInputConfig(height=28, width=28)
    frames = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    verdict = critique_sample(
        DRFReward(critic, RewardConfig(), visual), frames, questions, DecodeConfig("all", 1), visual
    )
    scored = ScoredFrames.of(5, DecodeConfig("all", 1))
    assert not verdict.still_image and scored == ScoredFrames((0, 1, 2, 3, 4), False)
    assert _temporal_questions(questions) <= {q.question for q in verdict.result.per_question}
    with torch.no_grad():
        direct = DRFReward(critic, RewardConfig(), visual.for_frames(scored.frame_indices))(frames, questions)
    assert verdict.total == float(direct.total)


def test_evaluate_scores_an_image_models_samples_as_the_trainer_does(fresh, questions, tmp_path):
    backend, critic = fresh
    config = EvaluateConfig(
        seeds=[3],
        video=VideoSpec(32, 32, 1),
        sampler=SamplerConfig(num_inference_steps=3, guidance_scale=3.0),
        decode=DecodeConfig("uniform", 8),  # 8 frames of a video: not applied to an image
        critic_input=CriticInputConfig(height=28, width=28),
    )
    evaluation = evaluate_lora(backend, critic, [questions], random_lora(backend), config)
    assert evaluation.still_image and evaluation.to_dict()["still_image"]
    assert "one image (scored as a still image" in evaluation.report()
    image_questions = for_still_image(questions)
    assert [q.question for q in evaluation.questions] == [
        q.question for a in image_questions.aspects for q in [*a.yes_no, *a.explanations]
    ]
    trainer = _image_trainer(backend, DRFReward(critic, config.reward, config.critic_input), questions, tmp_path)
    image = sample_videos(backend, [TRAIN_PROMPT], config.video, config.sampler, 3)[0]
    with torch.no_grad():
        trained = trainer.reward(image.float(), trainer.questions[TRAIN_PROMPT])
    assert float(evaluation.pairs[0].base.total) == float(trained.total)  # exact: the same code path
    assert evaluation.pairs[0].lora.total != evaluation.pairs[0].base.total  # the LoRA's image was scored too


def test_held_out_questions_of_an_image_run_leave_out_motion_and_speak_of_an_image(fresh, questions, tmp_path):
    backend, critic = fresh
    reward = DRFReward(critic, RewardConfig(), CriticInputConfig(height=28, width=28))
    monitor = MonitorConfig(interval=1, seeds=[7], prompts=[MOTION_PROMPT])
    held_out = _image_trainer(backend, reward, questions, tmp_path, monitor=monitor).monitor
    sets = [*held_out.question_sets.values(), *held_out.prompt_sets.values()]
    assert len(sets) == 2 and all(not _tags(qs) & TEMPORAL_TAGS for qs in sets)
    assert not any("video" in text.lower() for qs in sets for text in _texts(qs))  # the paraphrases say "video"
    assert held_out.prompt_sets[MOTION_PROMPT] == decompose(MOTION_PROMPT, still_image=True)


def _pack(name: str):
    return importlib.import_module(f"{PACK_NAME}.{name}")


class _NotLoaded:
    """A critic handle that must not be loaded (the node refuses its inputs first)."""

    def get(self):
        raise AssertionError("the critic was loaded before the inputs were checked")


def test_critique_video_node_on_one_image_scores_a_picture(pack_nodes, local, ctx):
    critic = run(pack_nodes, local, ctx, "DRFLoadVLMCritic", model="Qwen2.5-VL-7B-Instruct", dtype="fp32", device="cpu")
    critic = critic.outputs[0]
    questions = run(pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=MOTION_PROMPT).outputs[0]
    (settings,) = run(pack_nodes, local, ctx, "DRFRewardSettings", critic_width=28, critic_height=28).outputs
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(8))  # IMAGE [B, H, W, C]: one frame
    result = run(
        pack_nodes, local, ctx, "DRFCritiqueVideo", critic=critic, frames=image, questions=questions, reward=settings,
        explain=False, heatmaps=False, max_new_tokens=4,
    )  # fmt: skip
    report, _, shown, total = result.outputs
    assert "still image" in report and torch.equal(shown, image)
    assert not any(question in report for question in _temporal_questions(questions[0]))
    reward = _pack("drf_core.reward").DRFReward(critic.get(), settings.reward, settings.critic_input)
    image_questions = _pack("drf_core.questions").for_still_image(questions[0])
    with torch.no_grad():
        trainers = reward.for_frames([0], still_image=True)(image.permute(0, 3, 1, 2), image_questions)
    assert total == float(trainers.total)
    q = _pack("drf_core.questions")
    motion_only = [
        q.QuestionSet("a ball rolls", [q.Aspect("PHY", yes_no=[q.YesNoQuestion("Does it roll?", tag="motion")])])
    ]
    errors = _pack("drf_core.errors")
    with pytest.raises(errors.DRFInputError, match="about motion or time"):
        run(pack_nodes, local, ctx, "DRFCritiqueVideo", critic=_NotLoaded(), frames=image, questions=motion_only)


def test_critique_command_on_a_still_image_file_scores_a_picture(tiny_models, tmp_path, capsys):
    image = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "still.png"
    to_pil(image)[0].save(path)
    assert cli.main(
        ["critique", "--critic", str(tiny_models.qwen), "--video", str(path), "--prompt", MOTION_PROMPT,
         "--size", "28", "--json", "--no-explain"]
    ) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["still_image"]
    asked = {q["question"] for q in data["per_question"]}
    assert asked and not asked & _temporal_questions(decompose(MOTION_PROMPT))

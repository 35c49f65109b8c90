"""One-frame runs (an image family such as Flux): the critic sees a picture, not a one-frame video,
and questions about motion or time are left out. Tiny models, CPU."""

from __future__ import annotations

import pytest
import torch

from drf_core.config import CriticInputConfig, DecodeConfig, RewardConfig, VideoSpec
from drf_core.critics.qwen_vision import preprocess_frames, read_vision_settings
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.questions import TEMPORAL_TAGS, Aspect, QuestionSet, YesNoQuestion, for_still_image
from drf_core.reward import DRFReward
from drf_core.trainer import Trainer
from tests.conftest import TRAIN_PROMPT, small_train_config
from tests.test_critic_qwen import _official_yes_no

MOTION_PROMPT = "a red fox runs across a snowy field, then jumps over a log, the camera slowly pans left"


def _tags(question_set: QuestionSet) -> set[str]:
    return {q.tag for a in question_set.aspects for q in [*a.yes_no, *a.explanations]}


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

"""What the critic is shown and asked: the default size keeps the aspect ratio (equal to the official
processor), frames spread over the clip with their true frame rate, one vision pass for yes/no and
explanations, the Yes/No probability mass, token weights of negations and spatial words, and the
settings that make no sense. Tiny models, CPU."""

from __future__ import annotations

import itertools

import pytest
import torch

from drf_core.api import critique
from drf_core.config import CriticInputConfig, DecodeConfig, RewardConfig, SamplerConfig, TrainConfig
from drf_core.critics import yes_no_prompt
from drf_core.critics.qwen_vision import preprocess_frames, read_vision_settings, smart_resize, target_size
from drf_core.errors import DRFInputError
from drf_core.frames import FRAME_SELECTIONS, select_frames
from drf_core.questions import Aspect, ExplanationQuery, QuestionSet, YesNoQuestion
from drf_core.reward import LIGHT_WORDS, NEGATION_WORDS, SPATIAL_WORDS, DRFReward, token_weights

WAN_FPS = 16.0


def _frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- size
def test_default_size_is_transformers_own_rule_and_keeps_the_aspect_ratio(qwen_dir):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as official

    config = CriticInputConfig()
    assert (config.height, config.width) == (0, 0)
    settings = read_vision_settings(qwen_dir).video
    # Wan's 480x832: 476x840 (aspect 1.765 for 1.733), where the old fixed default squashed it to 448x448.
    assert target_size(480, 832, 0, 0, settings) == (476, 840) == official(480, 832, 28, 3136, 12845056)
    for height, width in ((480, 832), (720, 1280), (100, 37), (1000, 8000)):
        assert smart_resize(height, width, 28, 3136, 200_000) == official(
            height, width, factor=28, min_pixels=3136, max_pixels=200_000
        )


@pytest.mark.parametrize(("height", "width"), [(56, 140), (120, 200)])
def test_default_video_preprocessing_of_non_square_frames_equals_the_official_processor(qwen_dir, height, width):
    """56x140 needs no resize (exact by construction); 120x200 is resized to 112x196 by both paths."""
    from transformers import AutoVideoProcessor

    frames = _frames(4, height, width, seed=1)
    config = CriticInputConfig()
    ours = preprocess_frames(
        frames, config.mode, config.height, config.width, config.clip_fps(), read_vision_settings(qwen_dir)
    )
    official = AutoVideoProcessor.from_pretrained(qwen_dir, local_files_only=True)(
        videos=[frames], do_rescale=False, cap_pixels_per_frame=False, return_tensors="pt"
    )
    grid = official["video_grid_thw"]
    assert torch.equal(ours.grid_thw, grid)
    _, grid_h, grid_w = grid[0].tolist()
    assert abs(grid_w / grid_h - width / height) / (width / height) < 0.1  # not squashed to a square
    if (height, width) == (56, 140):
        assert torch.equal(ours.pixel_values, official["pixel_values_videos"])
    else:  # a real resize: torchvision's bicubic kernel against ours, within the documented float tolerance
        torch.testing.assert_close(ours.pixel_values, official["pixel_values_videos"], rtol=0, atol=1 / 255)


def test_default_settings_score_like_the_official_processor_at_the_true_frame_rate(critic, processor):
    """The default `CriticInputConfig()` end to end on a non-square clip: the logits of the official path
    told the clip's real 16 fps (consecutive frames), with Qwen2.5-VL's `second_per_grid_ts` = 2/16 s."""
    from transformers.video_utils import VideoMetadata

    frames = _frames(4, 56, 112, seed=2)
    questions = ["Is there a cat?", "Does the camera pan left?"]
    ours = critic.score_yes_no(frames, questions, CriticInputConfig())
    texts = []
    for question in questions:
        content = [{"type": "video"}, {"type": "text", "text": yes_no_prompt(question)}]
        texts.append(
            processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        )
    inputs = processor(
        text=texts,
        videos=[frames] * 2,
        video_metadata=[VideoMetadata(total_num_frames=4, fps=WAN_FPS)] * 2,
        cap_pixels_per_frame=False,
        do_rescale=False,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert inputs["second_per_grid_ts"].tolist() == [2 / WAN_FPS] * 2
    yes, no = (critic.tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    with torch.no_grad():
        reference = critic.model(**inputs).logits[:, -1][:, [yes, no]]
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------- frames and time
def test_uniform_selection_spans_the_clip():
    assert DecodeConfig().frame_selection == "uniform"
    assert select_frames("uniform", 33, 8) == [0, 5, 9, 14, 18, 23, 27, 32]  # first and last frame included
    assert select_frames("uniform", 33, 9) == list(range(0, 33, 4))  # an exact stride when one exists
    assert select_frames("uniform", 33, 33) == list(range(33))
    assert select_frames("uniform", 33, 1) == [16]
    assert select_frames("uniform", 1, 1) == [0]
    for num_frames in range(1, 40):
        for count in range(1, num_frames + 1):
            indices = select_frames("uniform", num_frames, count)
            assert len(indices) == count
            if count > 1:
                assert indices[0] == 0 and indices[-1] == num_frames - 1
                gaps = [b - a for a, b in itertools.pairwise(indices)]
                assert max(gaps) - min(gaps) <= 1  # evenly spaced, up to rounding


def test_the_critic_is_told_the_true_frame_rate_of_the_scored_frames():
    config = CriticInputConfig(video_fps=WAN_FPS)
    assert config.clip_fps() == WAN_FPS  # frames given as they are: consecutive
    assert config.clip_fps(select_frames("uniform", 33, 8)) == pytest.approx(WAN_FPS * 7 / 32)  # 3.5 fps
    assert config.clip_fps(select_frames("prefix", 33, 5)) == WAN_FPS
    assert config.clip_fps(select_frames("every_nth", 33, 4)) == WAN_FPS / 4
    assert config.clip_fps(select_frames("first_middle_last", 33, 1)) == WAN_FPS / 16
    assert config.clip_fps([7]) == WAN_FPS
    assert CriticInputConfig(fps=2.0).clip_fps([0, 8, 16]) == 2.0  # an explicit rate wins
    resolved = config.for_frames([0, 5, 9, 14])
    assert resolved.fps == pytest.approx(WAN_FPS * 3 / 14) and config.fps == 0.0


def test_the_model_receives_the_true_seconds_per_temporal_patch(critic):
    seen = []

    def record(module, args, kwargs):
        if kwargs.get("second_per_grid_ts") is not None:
            seen.append(kwargs["second_per_grid_ts"].tolist())

    indices = select_frames("uniform", 33, 8)
    hook = critic.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        critic.score_yes_no(_frames(8, 56, 56), ["Is there a cat?"], CriticInputConfig().for_frames(indices))
    finally:
        hook.remove()
    # 8 frames over 32 frame intervals at 16 fps: 32/7/16 s apart; a temporal patch holds 2 of them.
    assert seen == [[pytest.approx(2 * 32 / 7 / WAN_FPS)]]


# ---------------------------------------------------------------------------- one look, many questions
QUESTIONS = QuestionSet(
    "a cat on a wooden table",
    [
        Aspect(
            "TA",
            yes_no=[YesNoQuestion("Is there a cat?"), YesNoQuestion("Is there a dog?", "no")],
            explanations=[ExplanationQuery("Describe the video.", "A cat sits on a wooden table.")],
        ),
        Aspect("PHY", weight=0.5, explanations=[ExplanationQuery("Describe the motion.", "The cat does not move.")]),
    ],
).validate()


def test_yes_no_questions_and_explanations_share_one_vision_pass(critic):
    calls = {"visual": 0, "language": 0}
    inner = critic.model.model
    hooks = [
        inner.visual.register_forward_hook(lambda *_: calls.__setitem__("visual", calls["visual"] + 1)),
        inner.language_model.register_forward_hook(lambda *_: calls.__setitem__("language", calls["language"] + 1)),
    ]
    frames = _frames(4, 56, 84, seed=3)
    try:
        result = DRFReward(critic, RewardConfig(), CriticInputConfig())(frames, QUESTIONS)
        assert calls == {"visual": 1, "language": 2}  # one pass of the vision tower; yes/no and answers batches
        calls.update(visual=0, language=0)
        scores = critic.score(frames, ["Is there a cat?"], ["Describe the video."], ["A cat."], CriticInputConfig())
        assert calls == {"visual": 1, "language": 2}
    finally:
        for hook in hooks:
            hook.remove()
    # The shared pass gives what separate calls give.
    alone = critic.score_yes_no(frames, ["Is there a cat?"], CriticInputConfig())
    torch.testing.assert_close(scores.yes_no_logits, alone, rtol=0, atol=1e-6)
    answers = critic.score_answers(frames, ["Describe the video."], ["A cat."], CriticInputConfig())
    torch.testing.assert_close(scores.answers[0].token_logprobs, answers[0].token_logprobs, rtol=0, atol=1e-6)
    assert len(result.per_question) == 4


def test_yes_no_mass_is_the_share_of_all_probability_on_yes_and_no(critic, processor):
    frames = _frames(2, 56, 56, seed=4)
    question = "Is there a cat?"
    scores = critic.score(frames, [question], [], [], CriticInputConfig(fps=2.0))
    content = [{"type": "video"}, {"type": "text", "text": yes_no_prompt(question)}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    from transformers.video_utils import VideoMetadata

    inputs = processor(
        text=[text],
        videos=[frames],
        video_metadata=[VideoMetadata(total_num_frames=2, fps=2.0)],
        do_rescale=False,
        cap_pixels_per_frame=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        probabilities = torch.softmax(critic.model(**inputs).logits[0, -1].float(), dim=-1)
    yes, no = (critic.tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    expected = float(probabilities[yes] + probabilities[no])
    assert scores.yes_no_mass.shape == (1,) and not scores.yes_no_mass.requires_grad
    assert float(scores.yes_no_mass[0]) == pytest.approx(expected, rel=1e-4)

    result = DRFReward(critic, RewardConfig(), CriticInputConfig(fps=2.0))(frames, QUESTIONS)
    cat = next(q for q in result.per_question if q.question == question)
    assert cat.answer_mass == pytest.approx(expected, rel=1e-4)
    assert all(q.answer_mass is None for q in result.per_question if q.kind == "explanation")


def test_critique_report_shows_the_yes_no_mass_and_flags_a_low_one(critic):
    verdict = critique(DRFReward(critic, RewardConfig(), CriticInputConfig()), _frames(2, 56, 56, seed=5), QUESTIONS)
    report = verdict.report()
    masses = {q.question: q.answer_mass for q in verdict.result.per_question if q.kind == "yes_no"}
    # The tiny random critic spreads its probability over 300 tokens: far from a one-word answer.
    assert all(mass < 0.5 for mass in masses.values())
    for question, mass in masses.items():
        line = next(line for line in report.splitlines() if line.startswith(f"- {question}"))
        assert f"Yes/No mass {mass:.2f} LOW" in line
    assert "wanted to say something else" in report
    assert verdict.to_dict()["per_question"][0]["answer_mass"] == masses["Is there a cat?"]


# ------------------------------------------------------------------------------------ token weights
def _word_spans(text: str) -> list[tuple[int, int]]:
    import re

    return [match.span() for match in re.finditer(r"\S+", text)]


def test_negations_and_spatial_words_weigh_fully_and_articles_stay_light():
    light = 0.2
    text = "The cat is not under the table and there is no dog behind it"
    weights = dict(zip(text.split(), token_weights(text, _word_spans(text), light).tolist(), strict=False))
    assert weights["not"] == weights["no"] == weights["under"] == weights["behind"] == 1.0
    assert weights["cat"] == weights["table"] == weights["dog"] == 1.0
    for word in ("The", "is", "and", "there", "it"):
        assert weights[word] == pytest.approx(light), word
    listed = {"no", "not", "without", "never", "neither"} | {"left", "right", "on", "under", "behind", "between"}
    listed |= {"above", "below", "inside"}
    assert listed <= NEGATION_WORDS | SPATIAL_WORDS
    assert not LIGHT_WORDS & (NEGATION_WORDS | SPATIAL_WORDS)
    for word in listed:
        assert token_weights(f"a {word}", [(0, 1), (1, 2 + len(word))], light).tolist() == pytest.approx([light, 1])


# ---------------------------------------------------------------------------- settings that make no sense
def test_k_zero_is_refused_with_the_reason():
    with pytest.raises(DRFInputError, match=r"truncated_backprop_steps: K must be at least 1.*got 0"):
        SamplerConfig(truncated_backprop_steps=0).validate()
    with pytest.raises(DRFInputError, match=r"train\.sampler\.truncated_backprop_steps"):
        TrainConfig.from_dict({"prompts": ["a cat"], "sampler": {"truncated_backprop_steps": 0}})


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (14, 14, r"14x14: set both to 0 .* at least one patch \(28 px"),
        (0, 56, r"0x56: set both to 0"),
        (-28, 56, r"-28x56"),
    ],
)
def test_a_critic_size_below_one_patch_is_refused(critic, height, width, message):
    with pytest.raises(DRFInputError, match=message):
        CriticInputConfig(height=height, width=width).validate()
    with pytest.raises(DRFInputError, match=message):
        critic.score_yes_no(_frames(1, 56, 56), ["Is there a cat?"], CriticInputConfig(height=height, width=width))


def test_frame_rates_must_be_positive():
    with pytest.raises(DRFInputError, match=r"video_fps: must be positive, got 0"):
        CriticInputConfig(video_fps=0).validate()
    with pytest.raises(DRFInputError, match=r"fps: must be 0 \(the true rate of the frames\) or positive"):
        CriticInputConfig(fps=-1).validate()


def test_frame_selections_outside_the_video_are_refused(monkeypatch):
    with pytest.raises(DRFInputError, match=r"'uniform' asks for 8 frames of a 5-frame video.*at most 5"):
        select_frames("uniform", 5, 8)
    with pytest.raises(DRFInputError, match=r"'prefix' asks for 40 frames of a 33-frame video"):
        select_frames("prefix", 33, 40)
    with pytest.raises(DRFInputError, match=r"'every_nth' with n=33 keeps only frame 0"):
        select_frames("every_nth", 33, 33)
    # A selection added later cannot hand the decoder an index outside the video, or repeat one.
    monkeypatch.setitem(FRAME_SELECTIONS._entries, "broken", lambda n, count: [0, n])
    with pytest.raises(DRFInputError, match=r"'broken' gave frame indices \[9\] outside the 9-frame video; use 0\.\.8"):
        select_frames("broken", 9, 2)
    monkeypatch.setitem(FRAME_SELECTIONS._entries, "repeats", lambda n, count: [0, 0])
    with pytest.raises(DRFInputError, match=r"must increase"):
        select_frames("repeats", 9, 2)

"""The logit-level reward: equality with a hand-built reward over the official Qwen processor, every
reward kind's formula, token weights, aspect weighting, per-question reports, input errors, the
Vanilla-DRF preset, and finite-difference checks of the gradient (pixels; LoRA weights through the
whole sampler -> VAE -> critic chain). Tiny models, CPU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from drf_core.config import CriticInputConfig, LoRAConfig, RewardConfig, SamplerConfig, VideoSpec
from drf_core.critics import AnswerLogProbs, Critic, load_critic, yes_no_prompt
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.lora import add_lora, remove_lora
from drf_core.models import load_video_backend
from drf_core.questions import Aspect, ExplanationQuery, QuestionSet, YesNoQuestion
from drf_core.reward import (
    EXPLANATION_REWARDS,
    FUNCTION_WORDS,
    YES_NO_REWARDS,
    DRFReward,
    QuestionScore,
    reward_summary,
    token_weights,
)
from drf_core.sampler import sample_latents

SIZE = 56  # a multiple of 28: the critic needs no resize, so our pixels equal the official processor's
VISUAL = CriticInputConfig(mode="video", height=SIZE, width=SIZE, fps=2.0)
FUNCTION_WORD_WEIGHT = 0.2


def _frames(count: int = 4, size: int = SIZE, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _question_set() -> QuestionSet:
    """Two aspects with unequal weights, unequal question weights, an expected-"no" question, explanations."""
    return QuestionSet(
        prompt="two red apples on a wooden table, the camera slowly pans left",
        aspects=[
            Aspect(
                "TA",
                weight=0.6,
                yes_no=[
                    YesNoQuestion("Are there two red apples on the wooden table?", "yes", weight=2.0),
                    YesNoQuestion("Is there a blue cat?", "no", weight=0.5),
                ],
                explanations=[
                    ExplanationQuery("Describe the objects.", "Two red apples on the wooden table.", weight=1.0),
                    ExplanationQuery("What does the camera do?", "The camera slowly pans left.", weight=3.0),
                ],
            ),
            Aspect(
                "PHY",
                weight=0.9,
                yes_no=[YesNoQuestion("Do the objects keep their shape across frames?", "yes", weight=1.0)],
                explanations=[ExplanationQuery("Describe the motion.", "The apples do not move.", weight=1.0)],
            ),
        ],
    ).validate()


# ------------------------------------------------------------------------------------- a scripted critic
class ScriptedCritic(Critic):
    """Answers with fixed logits / token log-probs, scaled by `2 * frames.mean()` (1.0 for frames of 0.5), so
    values are exact and the result still depends on the frames. Records every call."""

    family = "scripted"

    def __init__(
        self,
        yes_no: dict[str, tuple[float, float]],
        answers: dict[tuple[str, str], tuple[list[float], list[tuple[int, int]]]] | None = None,
    ) -> None:
        self.yes_no = yes_no
        self.answers = answers or {}
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls: list[tuple[str, list]] = []

    def score_yes_no(self, frames, questions: Sequence[str], visual) -> torch.Tensor:
        self.calls.append(("yes_no", list(questions)))
        scale = 2 * frames.mean()
        return torch.stack([torch.tensor(self.yes_no[q]) * scale for q in questions])

    def score_answers(self, frames, queries, answers, visual) -> list[AnswerLogProbs]:
        self.calls.append(("answers", list(zip(queries, answers, strict=True))))
        scale = 2 * frames.mean()
        results = []
        for query, answer in zip(queries, answers, strict=True):
            logprobs, spans = self.answers[(query, answer)]
            results.append(AnswerLogProbs(answer, torch.tensor(logprobs) * scale, spans))
        return results

    def generate(self, frames, question, visual, max_new_tokens=64) -> str:
        raise AssertionError("the reward must not generate text")

    def chat(self, prompt, system=None, max_new_tokens=512) -> str:
        raise AssertionError("the reward must not chat")

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        pass


GREY = torch.full((2, 3, 28, 28), 0.5)  # 2 * mean = 1: the scripted critic's numbers come out unchanged

# "Describe it." tokenised as ["Describe", " it", "."]: one content word, one function word, punctuation.
DESCRIBE = ("Describe the scene.", "Describe it.")
DESCRIBE_SPANS = [(0, 8), (8, 11), (11, 12)]
DESCRIBE_LOGPROBS = [-1.0, -3.0, -5.0]


def _scripted(yes_no: dict[str, tuple[float, float]] | None = None) -> ScriptedCritic:
    return ScriptedCritic(yes_no or {}, {DESCRIBE: (DESCRIBE_LOGPROBS, DESCRIBE_SPANS)})


def _one_aspect(yes_no=(), explanations=(), name="TA", weight=1.0) -> Aspect:
    return Aspect(name, weight=weight, yes_no=list(yes_no), explanations=list(explanations))


def _reward(critic, **config) -> DRFReward:
    config.setdefault("function_word_weight", FUNCTION_WORD_WEIGHT)
    return DRFReward(critic, RewardConfig(**config), CriticInputConfig(height=28, width=28))


# ------------------------------------------------------------------ 1. equality with the official processor
def _official_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _official_forward(critic, processor, frames: torch.Tensor, text: str) -> torch.Tensor:
    """Logits `[L, V]` of the model on inputs built the documented way (processor + chat template)."""
    from transformers.video_utils import VideoMetadata

    inputs = processor(
        text=[text],
        videos=[frames],
        video_metadata=[VideoMetadata(total_num_frames=len(frames), fps=VISUAL.fps)],
        cap_pixels_per_frame=False,
        do_rescale=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        return critic.model(**inputs).logits[0].float()


def _reference_reward(critic, processor, frames, questions: QuestionSet, config: RewardConfig):
    """The reward assembled by hand from METHOD.md's formulas over the official processor's forward passes."""
    yes, no = (processor.tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    per_question: list[float] = []
    per_aspect: dict[str, float] = {}
    for aspect in questions.aspects:
        yes_no_values = []
        for question in aspect.yes_no:
            prompt = _official_prompt(processor, yes_no_prompt(question.question))
            logits = _official_forward(critic, processor, frames, prompt)[-1]
            log_p = {"yes": logits[yes], "no": logits[no]}
            value = log_p[question.expected] - torch.logsumexp(torch.stack([logits[yes], logits[no]]), 0)
            yes_no_values.append(float(value))
        explanation_values = []
        for query in aspect.explanations:
            prompt = _official_prompt(processor, query.question)
            encoded = processor.tokenizer(query.target, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(encoded["input_ids"])
            logits = _official_forward(critic, processor, frames, prompt + query.target)
            log_probs = torch.log_softmax(logits, dim=-1)[-len(ids) - 1 : -1]
            token_log_probs = log_probs.gather(-1, torch.tensor(ids)[:, None])[:, 0]
            spans = [tuple(span) for span in encoded["offset_mapping"]]
            weights = token_weights(query.target, spans, config.function_word_weight)
            explanation_values.append(float((token_log_probs * weights).sum() / weights.sum()))
        per_question += yes_no_values + explanation_values
        yes_no_part = sum(v * q.weight for v, q in zip(yes_no_values, aspect.yes_no, strict=True)) / sum(
            q.weight for q in aspect.yes_no
        )
        explanation_part = sum(
            v * q.weight for v, q in zip(explanation_values, aspect.explanations, strict=True)
        ) / sum(q.weight for q in aspect.explanations)
        blend = config.explanation_weight
        per_aspect[aspect.name] = (yes_no_part + blend * explanation_part) / (1 + blend)
    total = sum(per_aspect[a.name] * a.weight for a in questions.aspects) / sum(a.weight for a in questions.aspects)
    return total, per_aspect, per_question


def test_reward_equals_a_hand_built_reward_over_the_official_processor(critic, processor):
    frames = _frames()
    questions = _question_set()
    config = RewardConfig(explanation_weight=0.4, function_word_weight=FUNCTION_WORD_WEIGHT)
    result = DRFReward(critic, config, VISUAL)(frames, questions)
    total, per_aspect, per_question = _reference_reward(critic, processor, frames, questions, config)

    assert result.total.dtype == torch.float32 and result.total.shape == ()
    assert float(result.total) == pytest.approx(total, rel=0, abs=1e-5)
    assert result.per_aspect.keys() == per_aspect.keys()
    for name, value in per_aspect.items():
        assert result.per_aspect[name] == pytest.approx(value, rel=0, abs=1e-5), name
    assert [q.value for q in result.per_question] == pytest.approx(per_question, rel=0, abs=1e-5)
    # The numbers differ enough that a swapped weight or a dropped term would show.
    assert abs(per_aspect["TA"] - per_aspect["PHY"]) > 1e-3
    assert len({round(v, 4) for v in per_question}) == len(per_question)


# ------------------------------------------------------------------------------- 2. reward kinds
YES_NO_FORMULAS = {
    "log_prob": lambda a, b: a - math.log(math.exp(a) + math.exp(b)),
    "probability": lambda a, b: 1 / (1 + math.exp(b - a)),
    "logit_margin": lambda a, b: a - b,
}


def test_every_yes_no_kind_has_a_formula_here():
    assert set(YES_NO_FORMULAS) == set(YES_NO_REWARDS.names())


@pytest.mark.parametrize("kind", list(YES_NO_FORMULAS))
@pytest.mark.parametrize("expected", ["yes", "no"])
def test_yes_no_kinds_match_their_formulas(kind, expected):
    yes_logit, no_logit = 1.5, -0.25
    critic = _scripted({"Is there a cat?": (yes_logit, no_logit)})
    questions = QuestionSet("a cat", [_one_aspect([YesNoQuestion("Is there a cat?", expected)])])
    result = _reward(critic, yes_no=kind)(GREY, questions)
    favoured, other = (yes_logit, no_logit) if expected == "yes" else (no_logit, yes_logit)
    value = YES_NO_FORMULAS[kind](favoured, other)
    assert float(result.total) == pytest.approx(value, abs=1e-6)
    (score,) = result.per_question
    assert score.value == pytest.approx(value, abs=1e-6)
    assert score.probability == pytest.approx(YES_NO_FORMULAS["probability"](favoured, other), abs=1e-6)
    assert score.expected == expected and score.kind == "yes_no"


def test_expected_no_flips_the_orientation():
    # A critic that answers a question and its negation consistently (the logits swap).
    critic = _scripted({"Is the video sharp?": (0.8, -1.1), "Is the video blurry?": (-1.1, 0.8)})
    reward = _reward(critic)
    sharp = reward(GREY, QuestionSet("x", [_one_aspect([YesNoQuestion("Is the video sharp?", "yes")])]))
    not_blurry = reward(GREY, QuestionSet("x", [_one_aspect([YesNoQuestion("Is the video blurry?", "no")])]))
    blurry = reward(GREY, QuestionSet("x", [_one_aspect([YesNoQuestion("Is the video blurry?", "yes")])]))
    assert float(sharp.total) == pytest.approx(float(not_blurry.total), abs=1e-7)
    assert float(sharp.total) != pytest.approx(float(blurry.total), abs=1e-3)


def test_expected_yes_and_no_are_complementary_on_the_real_critic(critic):
    frames = _frames(seed=1)
    reward = DRFReward(critic, RewardConfig(), VISUAL)
    text = "Is there a red cat?"
    values = {}
    for expected in ("yes", "no"):
        result = reward(frames, QuestionSet("x", [_one_aspect([YesNoQuestion(text, expected)])]))
        values[expected] = float(result.total)
        assert result.per_question[0].probability == pytest.approx(math.exp(values[expected]), abs=1e-6)
    assert math.exp(values["yes"]) + math.exp(values["no"]) == pytest.approx(1.0, abs=1e-6)
    logits = critic.score_yes_no(frames, [text], VISUAL)[0]
    assert values["no"] == pytest.approx(float(torch.log_softmax(logits, -1)[1]), abs=1e-6)


def test_a_question_repeated_with_opposite_expected_answers_is_scored_both_ways():
    critic = _scripted({"Is it sharp?": (1.0, -1.0)})
    aspect = _one_aspect([YesNoQuestion("Is it sharp?", "yes"), YesNoQuestion("Is it sharp?", "no")])
    result = _reward(critic)(GREY, QuestionSet("x", [aspect]))
    yes_value, no_value = (q.value for q in result.per_question)
    assert yes_value == pytest.approx(YES_NO_FORMULAS["log_prob"](1.0, -1.0), abs=1e-6)
    assert no_value == pytest.approx(YES_NO_FORMULAS["log_prob"](-1.0, 1.0), abs=1e-6)
    assert float(result.total) == pytest.approx((yes_value + no_value) / 2, abs=1e-6)


def test_each_question_text_is_asked_once_per_video():
    critic = _scripted({"Is there a cat?": (0.5, 0.0), "Is it sharp?": (0.1, 0.3)})
    questions = QuestionSet(
        "x",
        [
            _one_aspect(
                [YesNoQuestion("Is there a cat?"), YesNoQuestion("Is it sharp?")], [ExplanationQuery(*DESCRIBE)]
            ),
            _one_aspect([YesNoQuestion("Is there a cat?", weight=2.0)], [ExplanationQuery(*DESCRIBE)], name="PHY"),
        ],
    )
    result = _reward(critic)(GREY, questions)
    assert critic.calls == [("yes_no", ["Is there a cat?", "Is it sharp?"]), ("answers", [DESCRIBE])]
    assert len(result.per_question) == 5  # every (aspect, question) pair is still reported


EXPLANATION_WEIGHTS = [1.0, FUNCTION_WORD_WEIGHT, FUNCTION_WORD_WEIGHT]  # "Describe", " it", "."
EXPLANATION_FORMULAS = {
    "token_weighted_log_likelihood": sum(w * v for w, v in zip(EXPLANATION_WEIGHTS, DESCRIBE_LOGPROBS, strict=True))
    / sum(EXPLANATION_WEIGHTS),
    "mean_log_likelihood": sum(DESCRIBE_LOGPROBS) / len(DESCRIBE_LOGPROBS),
    "none": None,
}


def test_every_explanation_kind_has_a_formula_here():
    assert set(EXPLANATION_FORMULAS) == set(EXPLANATION_REWARDS.names())


@pytest.mark.parametrize("kind", list(EXPLANATION_FORMULAS))
def test_explanation_kinds_match_their_formulas(kind):
    critic = _scripted({"Is there a cat?": (2.0, 0.0)})
    questions = QuestionSet(
        "x",
        [
            _one_aspect([YesNoQuestion("Is there a cat?")], [ExplanationQuery(*DESCRIBE)]),
            _one_aspect(explanations=[ExplanationQuery(*DESCRIBE)], name="VQ", weight=3.0),
        ],
    )
    result = _reward(critic, explanation=kind, explanation_weight=0.5)(GREY, questions)
    yes_no_value = YES_NO_FORMULAS["log_prob"](2.0, 0.0)
    explanation_value = EXPLANATION_FORMULAS[kind]
    kinds = [(q.aspect, q.kind) for q in result.per_question]
    if explanation_value is None:
        # No explanation is scored or listed; the explanation-only aspect has nothing left and drops out.
        assert kinds == [("TA", "yes_no")]
        assert critic.calls == [("yes_no", ["Is there a cat?"])]
        assert result.per_aspect == pytest.approx({"TA": yes_no_value})
        assert float(result.total) == pytest.approx(yes_no_value, abs=1e-6)
        return
    assert kinds == [("TA", "yes_no"), ("TA", "explanation"), ("VQ", "explanation")]
    assert result.per_question[1].value == pytest.approx(explanation_value, abs=1e-6)
    ta = (yes_no_value + 0.5 * explanation_value) / 1.5
    assert result.per_aspect == pytest.approx({"TA": ta, "VQ": explanation_value}, abs=1e-6)
    assert float(result.total) == pytest.approx((ta + 3.0 * explanation_value) / 4.0, abs=1e-6)


# ------------------------------------------------------------------------------------- 3. token weights
def test_token_weights_on_hand_made_spans():
    fw = 0.3
    answer = "The apples, on a café table  it's cat's."
    spans = [
        (0, 3),  # "The": a function word, whatever its case
        (3, 7),  # " app": part of a content word
        (7, 10),  # "les"
        (10, 11),  # ","
        (11, 14),  # " on": a spatial word, full weight
        (14, 16),  # " a"
        (16, 19),  # " ca": part of a non-ASCII content word
        (19, 20),  # "f"
        (20, 21),  # "é"
        (21, 27),  # " table"
        (27, 29),  # "  ": spaces only
        (29, 31),  # "it"
        (31, 33),  # "'s" of the function word "it's"
        (33, 37),  # " cat"
        (37, 39),  # "'s" of "cat's"
        (39, 40),  # "."
    ]
    assert "".join(answer[s:e] for s, e in spans) == answer
    expected = [fw, 1, 1, fw, 1, fw, 1, 1, 1, 1, fw, fw, fw, 1, 1, fw]
    weights = token_weights(answer, spans, fw)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx(expected)
    # A token spanning a function word and a content word carries the content word.
    assert token_weights("of cats", [(0, 7)], fw).tolist() == [1.0]
    assert token_weights("", [], fw).shape == (0,)
    # A typographic apostrophe and quotes do not hide a function word.
    assert token_weights("it’s 'the' red", [(0, 4), (4, 10), (10, 14)], fw).tolist() == pytest.approx([fw, fw, 1])


def test_token_weights_on_the_tiny_tokenizers_real_spans(critic):
    answer = "Two red apples on the wooden table."
    (scored,) = critic.score_answers(_frames(2), ["Describe the objects."], [answer], VISUAL)
    pieces = [answer[s:e] for s, e in scored.token_spans]
    # The tiny BPE splits "Two", "apples" and "table" into pieces (and " a" is the start of "apples" here).
    assert pieces == ["T", "wo", " red", " a", "p", "p", "le", "s", " on", " the", " wooden", " ", "tab", "le", "."]
    fw = FUNCTION_WORD_WEIGHT
    expected = [1, 1, 1, 1, 1, 1, 1, 1, 1, fw, 1, fw, 1, 1, fw]  # " on" is spatial: full weight
    assert token_weights(answer, scored.token_spans, fw).tolist() == pytest.approx(expected)
    assert {"a", "the", "of", "is"} <= FUNCTION_WORDS and not {"red", "apples", "two", "on"} & FUNCTION_WORDS


def test_only_function_words_with_zero_function_word_weight_fall_back_to_the_plain_mean():
    critic = ScriptedCritic({}, {("Is it?", "It is."): ([-1.0, -2.0, -6.0], [(0, 2), (2, 5), (5, 6)])})
    questions = QuestionSet("x", [_one_aspect(explanations=[ExplanationQuery("Is it?", "It is.")])])
    result = _reward(critic, function_word_weight=0.0)(GREY, questions)
    # Every weight is 0: a weighted mean of nothing would be a constant 0 with no gradient.
    assert float(result.total) == pytest.approx(-3.0, abs=1e-6)


# -------------------------------------------------------------------------------- 4. aspect weighting
def _two_aspects(ta_weight=0.7, phy_weight=0.3) -> QuestionSet:
    return QuestionSet(
        "x",
        [
            _one_aspect([YesNoQuestion("Is there a cat?")], weight=ta_weight),
            _one_aspect(explanations=[ExplanationQuery(*DESCRIBE)], name="PHY", weight=phy_weight),
        ],
    )


TA_VALUE = YES_NO_FORMULAS["log_prob"](0.5, -0.5)
PHY_VALUE = EXPLANATION_FORMULAS["token_weighted_log_likelihood"]


def test_aspect_weights_from_the_question_set_and_overrides():
    critic = _scripted({"Is there a cat?": (0.5, -0.5)})
    # Aspect-only sets: a yes/no-only aspect and an explanation-only aspect each score alone.
    result = _reward(critic)(GREY, _two_aspects())
    assert result.per_aspect == pytest.approx({"TA": TA_VALUE, "PHY": PHY_VALUE}, abs=1e-6)
    assert float(result.total) == pytest.approx(0.7 * TA_VALUE + 0.3 * PHY_VALUE, abs=1e-6)
    # Unnormalised weights are normalised.
    result = _reward(critic)(GREY, _two_aspects(2.0, 6.0))
    assert float(result.total) == pytest.approx(0.25 * TA_VALUE + 0.75 * PHY_VALUE, abs=1e-6)
    # RewardConfig.aspect_weights overrides the set's weights (only the named ones).
    result = _reward(critic, aspect_weights={"PHY": 2.1})(GREY, _two_aspects())
    assert float(result.total) == pytest.approx((0.7 * TA_VALUE + 2.1 * PHY_VALUE) / 2.8, abs=1e-6)


def test_zero_weight_aspects_drop_out_of_the_total_but_are_reported():
    critic = _scripted({"Is there a cat?": (0.5, -0.5)})
    result = _reward(critic)(GREY, _two_aspects(0.0, 0.3))
    assert float(result.total) == pytest.approx(PHY_VALUE, abs=1e-6)
    assert result.per_aspect == pytest.approx({"TA": TA_VALUE, "PHY": PHY_VALUE}, abs=1e-6)
    result = _reward(critic, aspect_weights={"PHY": 0.0})(GREY, _two_aspects())
    assert float(result.total) == pytest.approx(TA_VALUE, abs=1e-6)


def test_aspect_weight_errors_name_the_problem():
    critic = _scripted({"Is there a cat?": (0.5, -0.5)})
    with pytest.raises(DRFInputError, match=r"aspect 'Style'.*their aspects are \['PHY', 'TA'\]"):
        _reward(critic, aspect_weights={"Style": 1.0})(GREY, _two_aspects())
    with pytest.raises(DRFInputError, match="all aspect weights are zero"):
        _reward(critic, aspect_weights={"TA": 0.0, "PHY": 0.0})(GREY, _two_aspects())
    with pytest.raises(DRFInputError, match="all aspect weights are zero"):
        _reward(critic)(GREY, _two_aspects(0.0, 0.0))
    assert critic.calls == [], "weights are checked before the critic runs"
    # The only weighted aspect has explanations only, and explanations are switched off.
    with pytest.raises(DRFInputError, match="no aspect with a positive weight has a question to score"):
        _reward(critic, explanation="none")(GREY, _two_aspects(0.0, 1.0))
    with pytest.raises(DRFInputError, match=r"aspect_weights\.TA: must not be negative"):
        _reward(critic, aspect_weights={"TA": -1.0})


# ----------------------------------------------------------------------------------------- 6. results
def test_result_lists_every_question_once_and_summarises_the_weakest():
    critic = _scripted({"Is there a cat?": (2.0, 0.0), "Is it sharp?": (-1.0, 0.0), "Is it dark?": (0.3, 0.0)})
    questions = QuestionSet(
        "x",
        [
            _one_aspect(
                [YesNoQuestion("Is there a cat?"), YesNoQuestion("Is it dark?", "no", weight=0.5)],
                [ExplanationQuery(*DESCRIBE)],
            ),
            _one_aspect([YesNoQuestion("Is it sharp?")], name="VQ", weight=0.5),
        ],
    )
    frames = GREY.clone().requires_grad_(True)
    result = _reward(critic)(frames, questions)
    assert result.total.requires_grad
    result.total.backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0

    rows = [(q.aspect, q.kind, q.question) for q in result.per_question]
    assert rows == [
        ("TA", "yes_no", "Is there a cat?"),
        ("TA", "yes_no", "Is it dark?"),
        ("TA", "explanation", DESCRIBE[0]),
        ("VQ", "yes_no", "Is it sharp?"),
    ]
    cat, dark, describe, sharp = result.per_question
    assert isinstance(cat, QuestionScore) and isinstance(cat.value, float)
    assert cat.probability == pytest.approx(YES_NO_FORMULAS["probability"](2.0, 0.0), abs=1e-6)
    assert dark.probability == pytest.approx(YES_NO_FORMULAS["probability"](0.0, 0.3), abs=1e-6)
    assert (dark.expected, dark.weight) == ("no", 0.5)
    assert describe.probability is None and describe.target == DESCRIBE[1] and describe.expected == ""
    assert describe.to_dict() == {
        "aspect": "TA",
        "kind": "explanation",
        "question": DESCRIBE[0],
        "value": describe.value,
        "weight": 1.0,
        "target": DESCRIBE[1],
    }
    assert "target" not in cat.to_dict() and cat.to_dict()["probability"] == cat.probability

    assert result.worst_questions() == [sharp, dark, cat]  # ascending p(expected); no explanations
    assert result.worst_questions(1) == [sharp]
    summary = reward_summary(result)
    assert summary.splitlines()[0] == f"total reward {float(result.total.detach()):+.4f}"
    for name, value in result.per_aspect.items():
        assert f"  {name}: {value:+.4f}" in summary
    assert summary.index("Is it sharp?") < summary.index("Is it dark?") < summary.index("Is there a cat?")
    assert "(expected no, p=0.43)" in summary


# ------------------------------------------------------------------------------------- 7. bad input
@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (torch.zeros(0, 3, 28, 28), "no frames to score"),
        (torch.zeros(2, 28, 28, 3), r"\[F, 3, H, W\]; got shape \(2, 28, 28, 3\)"),
        (torch.zeros(3, 28, 28), r"\[F, 3, H, W\]; got shape \(3, 28, 28\)"),
        (torch.zeros(1, 2, 3, 28, 28), r"\[F, 3, H, W\]"),
    ],
)
def test_bad_frames_raise_before_the_critic_runs(frames, message):
    critic = _scripted({"Is there a cat?": (0.5, -0.5)})
    with pytest.raises(DRFInputError, match=message):
        _reward(critic)(frames, _two_aspects())
    assert critic.calls == []


# ----------------------------------------------------------------------------------------- 8. vanilla
def test_vanilla_drf_reward_is_the_single_questions_log_prob(critic):
    questions = decompose("two red apples on a wooden table", method="vanilla")
    (aspect,) = questions.aspects
    (question,) = aspect.yes_no
    assert aspect.name == "TA" and not aspect.explanations and question.expected == "yes"
    frames = _frames(seed=2)
    result = DRFReward(critic, RewardConfig(explanation_weight=0.7), VISUAL)(frames, questions)
    logits = critic.score_yes_no(frames, [question.question], VISUAL)[0]
    assert float(result.total) == pytest.approx(float(torch.log_softmax(logits, -1)[0]), abs=1e-6)
    assert result.per_aspect == pytest.approx({"TA": float(result.total)})
    assert [q.kind for q in result.per_question] == ["yes_no"]


# --------------------------------------------------------------------------- 5. finite-difference checks
def _float64_reward(qwen_dir) -> DRFReward:
    critic64 = load_critic(qwen_dir, dtype=torch.float64, device="cpu")
    return DRFReward(critic64, RewardConfig(explanation_weight=0.4, function_word_weight=FUNCTION_WORD_WEIGHT), VISUAL)


def test_reward_gradient_in_the_pixels_matches_finite_differences(qwen_dir, float64_throughout):
    reward = _float64_reward(qwen_dir)
    questions = _question_set()
    frames = _frames(seed=3, dtype=torch.float64)

    def total(pixels: torch.Tensor) -> torch.Tensor:
        return reward(pixels, questions).total

    pixels = frames.clone().requires_grad_(True)
    value = total(pixels)
    assert value.dtype == torch.float64, "a float64 critic gives a float64 reward"
    (gradient,) = torch.autograd.grad(value, pixels)
    flat = gradient.flatten()
    eps = 1e-5
    checked = [int(flat.abs().argmax()), int(flat.abs().argsort()[len(flat) // 2]), 1 * 3 * SIZE * SIZE + 1234]
    with torch.no_grad():
        for index in checked:
            plus, minus = frames.clone(), frames.clone()
            plus.view(-1)[index] += eps
            minus.view(-1)[index] -= eps
            numeric = (total(plus) - total(minus)) / (2 * eps)
            torch.testing.assert_close(flat[index], numeric, rtol=1e-5, atol=1e-10)
        direction = torch.randn(frames.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        direction /= direction.norm()
        numeric = (total(frames + eps * direction) - total(frames - eps * direction)) / (2 * eps)
        torch.testing.assert_close((gradient * direction).sum(), numeric, rtol=1e-6, atol=1e-12)
    assert flat.abs().max() > 1e-4


WAN_SPEC = VideoSpec(height=32, width=32, num_frames=5)
WAN_STEPS = 3


@pytest.fixture
def tensor_float_keeps_float64(monkeypatch):
    """`Tensor.float()` leaves float64 tensors alone for one test. diffusers' Wan blocks call `.float()` on
    their hidden states (and keep their norms in float32) even in a float64 model, and `WanBackend.decode`
    returns float32 frames by contract; each of these roundings adds ~1e-4 relative noise to central
    differences of the whole chain. Without them the chain is float64 end to end and agrees to ~1e-8."""
    original = torch.Tensor.float

    def keep_float64(tensor, *args, **kwargs):
        return tensor if tensor.dtype == torch.float64 else original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", keep_float64)


def test_reward_gradient_in_the_lora_weights_matches_finite_differences(
    tiny_models, qwen_dir, float64_throughout, tensor_float_keeps_float64
):
    """Sampler (all T steps with gradient) -> VAE decode -> critic -> DRFReward, in float64 throughout."""
    backend = load_video_backend(tiny_models.wan, torch.float64, "cpu")
    backend.transformer.to(torch.float64)  # also the norms and embeddings diffusers keeps in float32
    params = add_lora(backend.denoiser, LoRAConfig(rank=2, alpha=2.0), backend.lora_target_presets["attention"])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in params:
            # add_lora keeps LoRA weights in float32; float64 here keeps the whole path in float64. B is
            # nonzero, so A gets gradient too.
            param.data = 0.3 * torch.randn(param.shape, generator=generator, dtype=torch.float64)
    reward = DRFReward(
        load_critic(qwen_dir, dtype=torch.float64, device="cpu"),
        RewardConfig(explanation_weight=0.4, function_word_weight=FUNCTION_WORD_WEIGHT),
        CriticInputConfig(height=28, width=28),  # 32x32 frames, resized (differentiably) to 28x28
    )
    questions = _question_set()
    # K = T: every step carries gradient, so autograd's gradient is the full derivative. With K < T the
    # sampler deliberately ignores how the first T-K steps depend on the LoRA (truncated backprop), and a
    # finite difference (which sees every step) would not match.
    sampler = SamplerConfig(
        num_inference_steps=WAN_STEPS, truncated_backprop_steps=WAN_STEPS, guidance_scale=3.0, checkpointing="none"
    )
    embeddings = backend.encode_prompts([questions.prompt], "blurry", sampler.guidance_scale)
    noise = backend.init_noise(WAN_SPEC, 1, torch.Generator().manual_seed(6)).double()

    def total() -> torch.Tensor:
        latents = sample_latents(backend, embeddings, noise, sampler, WAN_STEPS)
        frames = backend.decode(latents)[0]
        return reward(frames, questions).total

    try:
        value = total()
        assert value.dtype == torch.float64
        assert all(p.dtype == torch.float64 for p in backend.transformer.parameters())
        gradients = torch.autograd.grad(value, params)
        assert all(g.abs().sum() > 0 for g in gradients), "every LoRA weight gets gradient"
        random_direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        eps = 1e-4
        for direction in (list(gradients), random_direction):
            norm = torch.sqrt(sum((d * d).sum() for d in direction))
            direction = [d / norm for d in direction]
            analytic = sum((g * d).sum() for g, d in zip(gradients, direction, strict=True))
            values = []
            with torch.no_grad():
                for sign in (1, -1):
                    for p, d in zip(params, direction, strict=True):
                        p.add_(sign * eps * d)
                    values.append(total())
                    for p, d in zip(params, direction, strict=True):
                        p.sub_(sign * eps * d)
            numeric = (values[0] - values[1]) / (2 * eps)
            torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-12)
    finally:
        remove_lora(backend.denoiser)

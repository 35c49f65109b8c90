"""Logit-level rewards: a critic's answers about the frames become one differentiable number.

- yes/no questions (asked with "Answer yes or no."): the logits of ("Yes", "No") at the answer
  position, oriented so the first column is the answer a faithful video gives, turned into a score
  by a `YES_NO_REWARDS` entry (log-probability normalised over {Yes, No}, probability, or logit
  margin); the share of all probability on {Yes, No} is reported per question (`answer_mass`);
- explanation queries: the teacher-forced log-likelihood of the target answer, each token weighted
  by whether its word carries meaning (`EXPLANATION_REWARDS`, "token-aware"; `LIGHT_WORDS`);
- one critic call (`Critic.score`) per video for both kinds, so the vision tower runs once;
- per aspect: the weighted mean of its yes/no scores, blended with its explanation score by
  `RewardConfig.explanation_weight`; total: the aspect-weight-normalised sum.

Every number is also reported per aspect and per question (`RewardResult`), so a user sees what
the model got wrong. `RewardFunction` is what the trainer, `api` and the heatmaps are given (frames
+ a prompt's questions -> `RewardResult`); `DRFReward` is the one built on a `Critic`. Knows nothing
about diffusion models or training.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import CriticInputConfig, RewardConfig
from .critics.base import AnswerLogProbs, Critic, CriticScores
from .errors import DRFInputError
from .questions import QuestionSet
from .registry import Registry

logger = logging.getLogger(__name__)

# --- yes/no rewards: logits [Q, 2] (expected answer first) -> scores [Q] ------------------------

YesNoReward = Callable[[torch.Tensor], torch.Tensor]
YES_NO_REWARDS: Registry[YesNoReward] = Registry("yes/no reward")


@YES_NO_REWARDS.register("log_prob")
def yes_no_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """log p(expected) - logsumexp(log p(Yes), log p(No)): at most 0, the paper's default."""
    return torch.log_softmax(logits, dim=-1)[:, 0]


@YES_NO_REWARDS.register("probability")
def yes_no_probability(logits: torch.Tensor) -> torch.Tensor:
    """p(expected | {Yes, No}) in 0..1: bounded, so one question cannot dominate."""
    return torch.softmax(logits, dim=-1)[:, 0]


@YES_NO_REWARDS.register("logit_margin")
def yes_no_logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """logit(expected) - logit(other): unbounded; strongest gradient, easiest to over-optimise."""
    return logits[:, 0] - logits[:, 1]


# --- explanation rewards: per-token log-probs + weights -> one score ---------------------------

ExplanationReward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EXPLANATION_REWARDS: Registry[ExplanationReward | None] = Registry("explanation reward")


@EXPLANATION_REWARDS.register("token_weighted_log_likelihood")
def token_weighted_log_likelihood(token_logprobs: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean per-token log-likelihood: content words count more than function words.

    When every weight is 0 (an answer of function words only, with `function_word_weight` 0), it is
    the plain mean: a weighted mean of nothing would be a constant 0 that passes no gradient.
    """
    if not bool((token_weights > 0).any()):  # `token_weights` is built on the CPU: no device sync
        return token_logprobs.mean()
    weights = token_weights.to(token_logprobs)
    return (token_logprobs * weights).sum() / weights.sum()


@EXPLANATION_REWARDS.register("mean_log_likelihood")
def mean_log_likelihood(token_logprobs: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """Plain mean per-token log-likelihood (every token weighs the same)."""
    return token_logprobs.mean()


EXPLANATION_REWARDS.add("none", None)

# Token weights of the explanation term. A target answer such as "The cat is not under the table"
# is mostly grammar; its meaning sits in a few words. LIGHT_WORDS get `function_word_weight`: they
# are what any fluent answer contains whatever the video shows, so rewarding their likelihood
# rewards fluency, not faithfulness. Everything else weighs 1.0, including two groups of short
# words a plain stop-word list would make light:
# - NEGATION_WORDS flip the meaning ("a child without a hat", "no people"): a light "no" would let
#   the likelihood of "there are people" pay almost as much as "there are no people";
# - SPATIAL_WORDS carry the layout the prompt asks for ("the cube is left of the sphere", "on" vs
#   "under" the table), which is exactly what text-to-video models get wrong.
# Words of order in time ("before", "after", "then") and quantity ("both", "each", "only") are not
# light either: sequences and counts are part of what a prompt asks for.
NEGATION_WORDS = frozenset("no not never neither nor without none nothing nobody nowhere cannot".split())
SPATIAL_WORDS = frozenset(
    """left right on under behind between above below inside outside over beneath underneath beside near
    next front back top bottom across through into onto toward towards away around along up down off out in
    against among within upon""".split()
)
LIGHT_WORDS = frozenset(
    """a an the this that these those there here it its it's they them their theirs he she his her hers him
    we us our you your i me my mine is are was were be been being am do does did doing has
    have having had will would can could shall should may might must of to from by for with at as about than
    and or but so if while because also too very just really quite yes which who whom whose what when where
    why how""".split()
)
# The old name, kept for callers that import it.
FUNCTION_WORDS = LIGHT_WORDS

# A word: letters and digits of any script, with apostrophes inside ("it's", "cat's").
_WORD = re.compile(r"[\w'’]+")


def token_weights(answer: str, token_spans: Sequence[tuple[int, int]], function_word_weight: float) -> torch.Tensor:
    """One weight per answer token: 1.0 for a token inside any word that is not in `LIGHT_WORDS`
    (content, negation and spatial words), `function_word_weight` for tokens inside light words or
    made only of spaces and punctuation."""
    words = [(m.start(), m.end(), m.group().lower().replace("’", "'").strip("'")) for m in _WORD.finditer(answer)]
    weights = []
    for start, end in token_spans:
        weight = function_word_weight
        for word_start, word_end, word in words:
            if word_start < end and start < word_end and word not in LIGHT_WORDS:
                weight = 1.0
                break
        weights.append(weight)
    return torch.tensor(weights, dtype=torch.float32)


# --- results -----------------------------------------------------------------------------------


@dataclass
class QuestionScore:
    """One question's contribution, for people: what was asked and how the video fared."""

    aspect: str
    kind: str  # "yes_no" or "explanation"
    question: str
    value: float  # the reward term (log-prob, probability, margin or weighted log-likelihood)
    weight: float
    expected: str = ""  # yes/no: the answer a faithful video gives
    probability: float | None = None  # yes/no: p(expected | {Yes, No})
    # yes/no: p(Yes) + p(No) among all tokens; low means the critic wanted to answer something else.
    answer_mass: float | None = None
    target: str = ""  # explanation: the target answer

    def to_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value not in ("", None)}


@dataclass
class RewardResult:
    """`total` is differentiable; the per-aspect and per-question numbers are detached floats."""

    total: torch.Tensor
    per_aspect: dict[str, float] = field(default_factory=dict)
    per_question: list[QuestionScore] = field(default_factory=list)

    def worst_questions(self, count: int = 3) -> list[QuestionScore]:
        """Yes/no questions the video fails most clearly (lowest probability of the expected answer)."""
        yes_no = [q for q in self.per_question if q.probability is not None]
        return sorted(yes_no, key=lambda q: q.probability)[:count]  # type: ignore[arg-type, return-value]


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """Half-precision critic outputs become float32; float64 ones (gradient checks) stay float64."""
    return values if values.dtype == torch.float64 else values.float()


def _weighted_mean(values: list[torch.Tensor], weights: list[float]) -> torch.Tensor | None:
    total_weight = sum(weights)
    if not values or total_weight <= 0:
        return None
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total_weight  # type: ignore[return-value]


class RewardFunction(ABC):
    """Frames of one video `[F, 3, H, W]` in 0..1 + its prompt's `QuestionSet` -> `RewardResult`.

    What the trainer, `api` and the heatmaps are given; `total` must be differentiable in the frames.
    """

    @abstractmethod
    def __call__(self, frames: torch.Tensor, questions: QuestionSet) -> RewardResult:
        """Score one video."""

    def for_aspect(self, name: str) -> RewardFunction:
        """A reward that scores only aspect `name` (for its gradient heatmap)."""
        raise DRFInputError(
            f"{type(self).__name__} cannot score a single aspect ({name!r}); heatmaps need one that can"
        )

    def for_frames(self, frame_indices: Sequence[int], still_image: bool = False) -> RewardFunction:
        """This reward for videos made of the frames at `frame_indices` of a clip (their timing), or for
        one still image (`still_image`)."""
        return self

    @property
    def chat_model(self) -> Any:
        """A text-only `chat(text) -> text` model behind this reward (held-out paraphrases), or None."""
        return None

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory in backward while training (nothing to do by default)."""
        return None

    def offload_modules(self) -> tuple[list[torch.nn.Module], torch.device | None]:
        """The modules phase offload may keep in host RAM while others run, and their device."""
        return [], None


class DRFReward(RewardFunction):
    """Scores frames against a `QuestionSet` with a frozen critic; differentiable in the frames."""

    def __init__(self, critic: Critic, config: RewardConfig, critic_input: CriticInputConfig) -> None:
        config.validate()
        critic_input.validate()
        self.critic = critic
        self.config = config
        self.critic_input = critic_input
        self.yes_no_reward = YES_NO_REWARDS.get(config.yes_no)
        self.explanation_reward = EXPLANATION_REWARDS.get(config.explanation)

    def for_aspect(self, name: str) -> DRFReward:
        """The same critic and settings; aspect-weight overrides for other aspects dropped (not scored)."""
        weights = {key: value for key, value in self.config.aspect_weights.items() if key == name}
        if weights.get(name, 1.0) <= 0:
            weights[name] = 1.0  # a zero-weight aspect still gets its own map
        config = RewardConfig(**{**self.config.to_dict(), "aspect_weights": weights})
        return DRFReward(self.critic, config, self.critic_input)

    def for_frames(self, frame_indices: Sequence[int], still_image: bool = False) -> DRFReward:
        """The critic is told the true rate of frames taken at `frame_indices` (`CriticInputConfig.for_frames`);
        a `still_image` is handed to it as an image, not as a one-frame video (`CriticInputConfig.for_still_image`)."""
        return DRFReward(self.critic, self.config, self.critic_input.for_sample(frame_indices, still_image))

    @property
    def chat_model(self) -> Critic:
        return self.critic

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.critic.set_gradient_checkpointing(enabled)

    def offload_modules(self) -> tuple[list[torch.nn.Module], torch.device | None]:
        return self.critic.modules_to_free(), self.critic.device

    def aspect_weights(self, questions: QuestionSet) -> dict[str, float]:
        weights = {aspect.name: aspect.weight for aspect in questions.aspects}
        for name, weight in self.config.aspect_weights.items():
            if name not in weights:
                raise DRFInputError(
                    f"reward.aspect_weights names aspect {name!r}, which the questions do not have; "
                    f"their aspects are {sorted(weights)}"
                )
            weights[name] = weight
        if sum(weights.values()) <= 0:
            raise DRFInputError("all aspect weights are zero; give at least one aspect a positive weight")
        return weights

    def __call__(self, frames: torch.Tensor, questions: QuestionSet) -> RewardResult:
        """Reward of one video `frames` `[F, 3, H, W]` in 0..1."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise DRFInputError(f"frames must be [F, 3, H, W]; got shape {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise DRFInputError("no frames to score; choose a frame selection that keeps at least one frame")
        aspect_weights = self.aspect_weights(questions)
        yes_no_scores, explanation_scores = self._score(frames, questions)

        per_question: list[QuestionScore] = []
        aspect_values: dict[str, torch.Tensor] = {}
        for aspect in questions.aspects:
            yes_no_terms, yes_no_weights = [], []
            for question in aspect.yes_no:
                value, probability, mass = yes_no_scores[(question.question, question.expected)]
                yes_no_terms.append(value)
                yes_no_weights.append(question.weight)
                per_question.append(
                    QuestionScore(
                        aspect.name,
                        "yes_no",
                        question.question,
                        float(value.detach()),
                        question.weight,
                        expected=question.expected,
                        probability=probability,
                        answer_mass=mass,
                    )
                )
            explanation_terms, explanation_weights = [], []
            for query in aspect.explanations if self.explanation_reward is not None else []:
                value = explanation_scores[(aspect.name, query.question, query.target)]
                explanation_terms.append(value)
                explanation_weights.append(query.weight)
                per_question.append(
                    QuestionScore(
                        aspect.name,
                        "explanation",
                        query.question,
                        float(value.detach()),
                        query.weight,
                        target=query.target,
                    )
                )
            yes_no_part = _weighted_mean(yes_no_terms, yes_no_weights)
            explanation_part = _weighted_mean(explanation_terms, explanation_weights)
            blend = self.config.explanation_weight
            if yes_no_part is not None and explanation_part is not None:
                aspect_values[aspect.name] = (yes_no_part + blend * explanation_part) / (1.0 + blend)
            elif yes_no_part is not None or explanation_part is not None:
                aspect_values[aspect.name] = yes_no_part if yes_no_part is not None else explanation_part
        scored = {name: w for name, w in aspect_weights.items() if name in aspect_values and w > 0}
        if not scored:
            raise DRFInputError(
                "no aspect with a positive weight has a question to score; add questions or change the weights"
            )
        norm = sum(scored.values())
        total = sum(aspect_values[name] * (w / norm) for name, w in scored.items())
        return RewardResult(
            total=total,  # type: ignore[arg-type]
            per_aspect={name: float(value.detach()) for name, value in aspect_values.items()},
            per_question=per_question,
        )

    def _score(self, frames: torch.Tensor, questions: QuestionSet) -> tuple[dict, dict]:
        """One critic call for every yes/no question and explanation query (one look at the video)."""
        pairs = [q for aspect in questions.aspects for q in aspect.yes_no]
        texts = list(dict.fromkeys(q.question for q in pairs))
        keys = []
        if self.explanation_reward is not None:
            keys = list(
                dict.fromkeys((a.name, q.question, q.target) for a in questions.aspects for q in a.explanations)
            )
        unique = list(dict.fromkeys((question, target) for _, question, target in keys))
        if not texts and not unique:
            return {}, {}
        scores = self.critic.score(frames, texts, [q for q, _ in unique], [t for _, t in unique], self.critic_input)
        return self._yes_no_values(pairs, texts, scores), self._explanation_values(keys, unique, scores.answers)

    def _yes_no_values(self, pairs: list, texts: list[str], scores: CriticScores) -> dict:
        if not texts:
            return {}
        logits = _at_least_float32(scores.yes_no_logits)
        masses = scores.yes_no_mass
        row = {text: i for i, text in enumerate(texts)}
        values = {}
        # Keyed by (text, expected): one text may be asked with either expected answer.
        for key in dict.fromkeys((q.question, q.expected) for q in pairs):
            text, expected = key
            yes_no = logits[row[text]]
            oriented = yes_no if expected == "yes" else yes_no.flip(0)
            value = self.yes_no_reward(oriented.unsqueeze(0))[0]
            probability = float(torch.softmax(oriented.detach(), dim=-1)[0])
            mass = float(masses[row[text]]) if masses is not None else None
            values[key] = (value, probability, mass)
        return values

    def _explanation_values(self, keys: list, unique: list, scored: list[AnswerLogProbs]) -> dict:
        values = {}
        for (question, target), answer in zip(unique, scored, strict=True):
            weights = token_weights(answer.answer, answer.token_spans, self.config.function_word_weight)
            values[(question, target)] = self.explanation_reward(  # type: ignore[misc]
                _at_least_float32(answer.token_logprobs), weights
            )
        return {key: values[(key[1], key[2])] for key in keys}


# Below this share of the probability on {Yes, No}, a report flags the answer: the critic wanted to
# say something else (a sentence, "yes" in lower case, a refusal), so its yes/no logits mean little.
LOW_ANSWER_MASS = 0.5


def answer_mass_note(score: QuestionScore) -> str:
    """ ", Yes/No mass 0.93" for a report line (flagged when low); "" when the critic did not say."""
    if score.answer_mass is None:
        return ""
    flag = " LOW: the critic wanted to say something else" if score.answer_mass < LOW_ANSWER_MASS else ""
    return f", Yes/No mass {score.answer_mass:.2f}{flag}"


def reward_summary(result: RewardResult) -> str:
    """A few readable lines: total, per aspect, and the questions the video fails most."""
    lines = [f"total reward {float(result.total.detach()):+.4f}"]
    lines += [f"  {name}: {value:+.4f}" for name, value in result.per_aspect.items()]
    worst = result.worst_questions()
    if worst:
        lines.append("  weakest answers:")
        lines += [
            f"    [{q.aspect}] {q.question} (expected {q.expected}, p={q.probability:.2f}{answer_mass_note(q)})"
            for q in worst
            if q.probability is not None and not math.isnan(q.probability)
        ]
    return "\n".join(lines)

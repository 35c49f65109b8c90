"""What every VLM critic offers the reward, the decomposer and the nodes.

A critic is a frozen vision-language model. It takes frames as a float tensor `[F, 3, H, W]` in
0..1 that may carry gradients (from the VAE decode), preprocesses them in torch (so the gradient
flows), and returns answer logits or per-token log-probabilities that are differentiable with
respect to the frames. It also offers non-differentiable `generate` (explanations a person reads)
and text-only `chat` (for the language-model decomposer).

Knows nothing about rewards, aspects or training: it answers questions about frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import CriticInputConfig

# Appended to every yes/no question: an instruction-tuned VLM then answers with one word, so the
# logits of "Yes" / "No" at the first answer position are its answer, not the start of a sentence.
# `CriticScores.yes_no_mass` shows how far the critic follows it.
YES_NO_INSTRUCTION = "Answer yes or no."


def yes_no_prompt(question: str) -> str:
    """The text a critic is asked for a yes/no question: the question, then the one-word instruction."""
    return f"{question.rstrip()} {YES_NO_INSTRUCTION}"


@dataclass
class AnswerLogProbs:
    """Teacher-forced log-probabilities of one target answer, one entry per answer token.

    `token_spans[i]` is the `(start, end)` character range of token `i` in `answer`, so a caller
    can map tokens to words (for token weighting) without knowing the tokenizer.
    """

    answer: str
    token_logprobs: torch.Tensor  # [L] float32, differentiable w.r.t. the frames
    token_spans: list[tuple[int, int]]


@dataclass
class CriticScores:
    """Everything a reward asks about one video, from one look at it (one vision-tower pass)."""

    yes_no_logits: torch.Tensor  # [Q, 2] float: logits of ("Yes", "No"), differentiable w.r.t. the frames
    # [Q] detached: p(Yes) + p(No) among all tokens at the answer position. Low: the critic wanted to
    # say something else, so its yes/no logits mean little. None when a critic cannot tell.
    yes_no_mass: torch.Tensor | None
    answers: list[AnswerLogProbs]


class Critic(ABC):
    """A frozen VLM that scores frames. Implementations register in `critics.CRITICS`."""

    family: ClassVar[str]

    device: torch.device
    dtype: torch.dtype
    # How the linear weights are stored: a key of `quantization.CRITIC_QUANTIZERS` ("none", "int8", "int4").
    quantization: str = "none"

    @abstractmethod
    def score_yes_no(self, frames: torch.Tensor, questions: Sequence[str], visual: CriticInputConfig) -> torch.Tensor:
        """Logits of the answers ("Yes", "No") at the answer position, shape `[Q, 2]`, float32;
        each question is asked as `yes_no_prompt(question)`.

        All questions share the one video: the vision tower runs once and the language model once
        per batch of questions (not once per question).
        """

    @abstractmethod
    def score_answers(
        self,
        frames: torch.Tensor,
        queries: Sequence[str],
        answers: Sequence[str],
        visual: CriticInputConfig,
    ) -> list[AnswerLogProbs]:
        """Teacher-forced log-likelihood of `answers[i]` given the frames and `queries[i]`."""

    def score(
        self,
        frames: torch.Tensor,
        questions: Sequence[str],
        queries: Sequence[str],
        answers: Sequence[str],
        visual: CriticInputConfig,
    ) -> CriticScores:
        """Yes/no logits for `questions` and answer log-likelihoods for `queries` / `answers`.

        Critics that can should override it to look at the frames once for both (Qwen-VL does);
        this default asks twice and cannot report the yes/no probability mass.
        """
        logits = self.score_yes_no(frames, questions, visual) if questions else torch.zeros((0, 2))
        scored = self.score_answers(frames, queries, answers, visual) if queries else []
        return CriticScores(yes_no_logits=logits, yes_no_mass=None, answers=scored)

    @abstractmethod
    def generate(self, frames: torch.Tensor, question: str, visual: CriticInputConfig, max_new_tokens: int = 64) -> str:
        """Greedy answer text to `question` about the frames (no gradient)."""

    @abstractmethod
    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int = 512) -> str:
        """Greedy text-only answer (no frames, no gradient); used by the LM decomposer."""

    @abstractmethod
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the VLM's layer activations during backward instead of storing them."""

    def modules_to_free(self) -> list[torch.nn.Module]:
        """Modules a caller may move off the device between phases (default: none)."""
        return []

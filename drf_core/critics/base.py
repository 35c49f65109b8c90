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


@dataclass
class AnswerLogProbs:
    """Teacher-forced log-probabilities of one target answer, one entry per answer token.

    `token_spans[i]` is the `(start, end)` character range of token `i` in `answer`, so a caller
    can map tokens to words (for token weighting) without knowing the tokenizer.
    """

    answer: str
    token_logprobs: torch.Tensor  # [L] float32, differentiable w.r.t. the frames
    token_spans: list[tuple[int, int]]


class Critic(ABC):
    """A frozen VLM that scores frames. Implementations register in `critics.CRITICS`."""

    family: ClassVar[str]

    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def score_yes_no(self, frames: torch.Tensor, questions: Sequence[str], visual: CriticInputConfig) -> torch.Tensor:
        """Logits of the answers ("Yes", "No") at the answer position, shape `[Q, 2]`, float32.

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

"""What the critic scores of one sample: which frames, seen as a video or as a still image, asked
which questions. The one rule training, held-out monitoring, Critique Video and Evaluate LoRA share.

A sample of one frame is a still image: an image family such as Flux makes one frame per prompt,
and an IMAGE batch of one frame (e.g. VAE Decode of an image model) is a picture. Its frame is
handed to the critic as an image (`CriticInputConfig.for_still_image`: the Qwen processor's image
path, not a one-frame video), and the questions about motion or time are left out, "video"
reading "image" (`questions.for_still_image`); the frame selection, made for videos, does not
apply. A sample of more frames is a video: the decode settings' frame selection picks the frames
and the critic is told their true rate (`CriticInputConfig.for_frames`).

Knows frame selection, question sets and the `RewardFunction` interface; nothing about models,
training or ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CriticInputConfig, DecodeConfig
from .frames import select_frames
from .questions import QuestionSet, for_still_image
from .reward import RewardFunction


@dataclass(frozen=True)
class ScoredFrames:
    """The frames of a sample the critic scores (`frame_indices`) and whether it is a still image."""

    frame_indices: tuple[int, ...]
    still_image: bool

    @classmethod
    def of(cls, num_frames: int, decode: DecodeConfig) -> ScoredFrames:
        """For a sample of `num_frames` frames: one frame is a still image (its frame 0, whatever the
        frame selection asks for); more are a video, scored at `decode`'s frame selection."""
        if num_frames == 1:
            return cls((0,), True)
        return cls(tuple(select_frames(decode.frame_selection, num_frames, decode.frame_selection_count)), False)

    def pick(self, frames: torch.Tensor) -> torch.Tensor:
        """The scored frames of a whole sample `[F, ...]`."""
        return frames[list(self.frame_indices)]

    def questions(self, question_set: QuestionSet) -> QuestionSet:
        """The questions the critic is asked: a still image's leave out motion and time (`DRFInputError`
        when nothing is left)."""
        return for_still_image(question_set) if self.still_image else question_set

    def reward(self, reward: RewardFunction) -> RewardFunction:
        """`reward` for these frames: told their true rate, or seeing one image (`RewardFunction.for_frames`)."""
        return reward.for_frames(self.frame_indices, still_image=self.still_image)

    def critic_input(self, critic_input: CriticInputConfig) -> CriticInputConfig:
        """How the critic sees these frames when it answers in words (the same as `reward`'s)."""
        return critic_input.for_sample(self.frame_indices, self.still_image)

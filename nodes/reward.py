"""Reward Settings: how the critic's logits become the reward, and which frames it sees.

The `DRF_REWARD` wire carries a `RewardSettings` (three engine configs). Train LoRA and Critique
Video use the defaults when nothing is connected. Every dropdown lists a registry's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..drf_core.config import CriticInputConfig, DecodeConfig, RewardConfig
from ..drf_core.frames import FRAME_SELECTIONS
from ..drf_core.reward import EXPLANATION_REWARDS, YES_NO_REWARDS
from .spec import (
    REWARD,
    Combo,
    DRFNode,
    Float,
    Int,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    String,
    category,
    parse_weights,
)

CRITIC_MODES = ("video", "images")


@dataclass(frozen=True)
class RewardSettings:
    reward: RewardConfig = field(default_factory=RewardConfig)
    critic_input: CriticInputConfig = field(default_factory=CriticInputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


_DEFAULT_REWARD = RewardConfig()
_DEFAULT_INPUT = CriticInputConfig()
_DEFAULT_DECODE = DecodeConfig()


class RewardSettingsNode(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFRewardSettings",
        display_name="Reward Settings (DRF)",
        category=category("reward"),
        description=(
            "How the critic's answers become one differentiable reward: the yes/no score, the weight of the "
            "explanation likelihood, aspect weight overrides, which frames are decoded and scored, and the size "
            "the critic sees them at."
        ),
        inputs=(
            Combo(
                "yes_no_reward",
                YES_NO_REWARDS.names(),
                "log_prob: log P(expected answer) (the paper's); probability: P; logit_margin: logit difference.",
                _DEFAULT_REWARD.yes_no,
            ),
            Combo(
                "explanation_reward",
                EXPLANATION_REWARDS.names(),
                "token_weighted_log_likelihood: how likely the critic finds the target explanation; none: off.",
                _DEFAULT_REWARD.explanation,
            ),
            Float(
                "explanation_weight",
                _DEFAULT_REWARD.explanation_weight,
                0.0,
                10.0,
                "Weight of the explanation term against the yes/no term inside each aspect.",
            ),
            Float(
                "function_word_weight",
                _DEFAULT_REWARD.function_word_weight,
                0.0,
                1.0,
                "Weight of words like 'the', 'of' in the explanation likelihood (content words weigh 1).",
            ),
            String(
                "aspect_weights",
                "",
                "Optional overrides of the questions' aspect weights, e.g. PHY=0.5. Empty keeps the questions' own.",
            ),
            Combo(
                "frame_selection",
                FRAME_SELECTIONS.names(),
                "Which decoded frames the critic scores. uniform: N frames evenly spaced over the whole clip (motion "
                "is visible); prefix: the first N (cheapest, but almost no motion); every_nth; first_middle_last; all.",
                _DEFAULT_DECODE.frame_selection,
            ),
            Int(
                "frame_count",
                _DEFAULT_DECODE.frame_selection_count,
                1,
                256,
                "N for uniform / prefix (frames scored), n for every_nth. More frames: more memory.",
            ),
            Combo("critic_input", CRITIC_MODES, "video: the frames as one clip; images: each frame alone.", "video"),
            Int(
                "critic_width",
                _DEFAULT_INPUT.width,
                0,
                2048,
                "0 (with height 0): the model's own size rule, aspect ratio kept. Else a fixed width (multiple of "
                "28), which squashes frames of another aspect ratio.",
                28,
            ),
            Int(
                "critic_height",
                _DEFAULT_INPUT.height,
                0,
                2048,
                "0 (with width 0): the model's own size rule, aspect ratio kept. Else a fixed height (multiple of 28).",
                28,
            ),
            Float(
                "video_fps",
                _DEFAULT_INPUT.video_fps,
                1.0,
                240.0,
                "Frame rate of the scored videos (Wan 2.1 / 2.2 A14B: 16, Wan 2.2 TI2V-5B: 24; your own clip: its "
                "fps, e.g. from Get Video Components).",
                1.0,
            ),
            Float(
                "critic_fps",
                _DEFAULT_INPUT.fps,
                0.0,
                60.0,
                "Frame rate the critic is told. 0: the true rate of the scored frames (video_fps over their spacing).",
                0.1,
            ),
        ),
        outputs=(OutputSpec(REWARD, "reward", "The reward settings, for Train LoRA and Critique Video."),),
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        yes_no_reward: str,
        explanation_reward: str,
        explanation_weight: float,
        function_word_weight: float,
        aspect_weights: str,
        frame_selection: str,
        frame_count: int,
        critic_input: str,
        critic_width: int,
        critic_height: int,
        video_fps: float,
        critic_fps: float,
    ) -> NodeResult:
        YES_NO_REWARDS.get(yes_no_reward)
        EXPLANATION_REWARDS.get(explanation_reward)
        FRAME_SELECTIONS.get(frame_selection)
        reward = RewardConfig(
            yes_no=yes_no_reward,
            explanation=explanation_reward,
            explanation_weight=explanation_weight,
            function_word_weight=function_word_weight,
            aspect_weights=parse_weights(aspect_weights, "aspect_weights"),
        )
        visual = CriticInputConfig(
            mode=critic_input, height=critic_height, width=critic_width, video_fps=video_fps, fps=critic_fps
        )
        decode = DecodeConfig(frame_selection=frame_selection, frame_selection_count=frame_count)
        for config in (reward, visual, decode):
            config.validate()
        return NodeResult((RewardSettings(reward, visual, decode),))

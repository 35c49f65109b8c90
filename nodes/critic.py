"""Critique Video: the critic's verdict on a video, as a report, a chart and gradient heatmaps.

The frames scored are the ones training would score (`drf_core.scoring`, through
`api.critique_sample`): of a video, the reward settings' frame selection, told to the critic at
their true frame rate; an IMAGE batch of one frame (e.g. VAE Decode of an image model such as Flux)
is a still image, which the critic sees as a picture, and the questions about motion or time are
left out, as when training an image model. So a critique explains the reward the trainer sees. The
report gives, per yes/no question, the share of the critic's probability on {Yes, No}: a low share
means the critic wanted to say something else. Heatmaps are the reward's gradient with respect to
the pixels, per aspect: where changing the video would raise that aspect's score most.
"""

from __future__ import annotations

from ..drf_core import api
from ..drf_core.errors import DRFInputError
from ..drf_core.media import from_pil, labelled_side_by_side
from ..drf_core.reward import DRFReward
from ..drf_core.scoring import ScoredFrames
from .reward import RewardSettings
from .spec import (
    CRITIC,
    QUESTIONS,
    REWARD,
    Boolean,
    DRFNode,
    Int,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    Preview,
    Socket,
    category,
    comfy_image,
    engine_frames,
)


class CritiqueVideo(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFCritiqueVideo",
        display_name="Critique Video (DRF)",
        category=category("reward"),
        description=(
            "Asks the critic every question about a video: a report with each question's score and the critic's "
            "own explanations, a score chart, and gradient heatmaps showing where the video violates each aspect."
        ),
        inputs=(
            Socket("critic", CRITIC, "The critic (from Load VLM Critic)."),
            Socket(
                "frames",
                "IMAGE",
                "The video as an IMAGE batch of frames (e.g. from Sample Video or Load Video). One frame is a still "
                "image: the critic sees a picture and questions about motion or time are left out.",
            ),
            Socket("questions", QUESTIONS, "The questions for this video's prompt (one question set)."),
            Boolean("explain", True, "Let the critic answer the explanation queries in words (slower)."),
            Boolean("heatmaps", True, "Compute per-aspect gradient heatmaps (one backward pass per aspect)."),
            Int("max_new_tokens", 64, 8, 1024, "Longest explanation the critic may write."),
            Socket("reward", REWARD, "Reward settings (defaults when not connected).", optional=True),
        ),
        outputs=(
            OutputSpec("STRING", "report", "Markdown report: total, per aspect, per question, explanations."),
            OutputSpec("IMAGE", "score_chart", "Bar chart of every question's score."),
            OutputSpec("IMAGE", "heatmap_frames", "Scored frames with each aspect's gradient heatmap, side by side."),
            OutputSpec("FLOAT", "total_reward", "The total reward (higher is better)."),
        ),
        is_output_node=True,
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        critic,
        frames,
        questions,
        explain: bool,
        heatmaps: bool,
        max_new_tokens: int,
        reward: RewardSettings | None = None,
    ) -> NodeResult:
        if len(questions) != 1:
            raise DRFInputError(
                f"Critique Video scores one prompt's questions, got {len(questions)} question sets; "
                "decompose only this video's prompt"
            )
        settings = reward or RewardSettings()
        video = engine_frames(frames, "frames")
        # A frame selection that does not fit, or an image's questions all about motion: refused before loading.
        ScoredFrames.of(video.shape[0], settings.decode).questions(questions[0])
        vlm = critic.get()
        verdict = api.critique_sample(
            DRFReward(vlm, settings.reward, settings.critic_input),
            video,
            questions[0],
            settings.decode,
            settings.critic_input,
            explain_with=vlm if explain else None,
            heatmaps=heatmaps,
            max_new_tokens=max_new_tokens,
        )
        chart = comfy_image(from_pil([verdict.chart()]))
        maps = comfy_image(
            labelled_side_by_side(list(verdict.heatmaps.values()), list(verdict.heatmaps))
            if verdict.heatmaps
            else verdict.frames
        )
        report = verdict.report()
        previews = [Preview(chart), Preview(maps, animated=True, fps=4.0)]
        return NodeResult((report, chart, maps, verdict.total), previews=previews, text=report)

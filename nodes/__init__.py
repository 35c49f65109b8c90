"""ComfyUI-DiffusionDRF's nodes, as host-independent specs plus `run` functions.

`NODES` lists every node class; `_comfy.py` (inside ComfyUI) and `local.py` (anywhere) run them.
Importing this package never imports ComfyUI.
"""

from __future__ import annotations

from .critic import CritiqueVideo
from .evaluate import EvaluateLoRA
from .loaders import LoadVideoModel, LoadVLMCritic, VideoModelFromComfy
from .lora import LoadLoRA, SaveLoRA
from .plots import RewardCurves
from .prompts import DecomposePrompt, QuestionsFromJSON
from .reward import RewardSettingsNode
from .sample import CompareSideBySide, SampleVideo
from .spec import DRFNode
from .train import TrainingOptionsNode, TrainLoRA

NODES: tuple[type[DRFNode], ...] = (
    LoadVideoModel,
    VideoModelFromComfy,
    LoadVLMCritic,
    DecomposePrompt,
    QuestionsFromJSON,
    RewardSettingsNode,
    TrainingOptionsNode,
    TrainLoRA,
    SaveLoRA,
    LoadLoRA,
    SampleVideo,
    CompareSideBySide,
    CritiqueVideo,
    EvaluateLoRA,
    RewardCurves,
)
NODES_BY_ID: dict[str, type[DRFNode]] = {node.SPEC.node_id: node for node in NODES}

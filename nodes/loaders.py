"""Load Video Model and Load VLM Critic: pick a local model folder, a dtype and a device.

Both return a `ModelHandle`; the model itself is loaded on first use and kept between queue runs
(`model_cache.py`). Knows which folder kinds hold which models; nothing about training.
"""

from __future__ import annotations

from ..drf_core.config import DTYPES
from ..drf_core.devices import device_names
from ..drf_core.models import read_model_index
from .model_cache import ModelHandle
from .spec import CRITIC, VIDEO_MODEL, Combo, DRFNode, NodeContext, NodeResult, NodeSpec, OutputSpec, category

VIDEO_MODEL_FOLDER = "diffusers"
VIDEO_MODEL_MARKER = "model_index.json"
CRITIC_FOLDER = "vlm"
CRITIC_MARKER = "config.json"
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_TOOLTIP = "auto: bf16 on an NVIDIA GPU, fp32 on the CPU and on Apple MPS. fp16 is not recommended for training."


def device_choices(_folders: object = None) -> list[str]:
    """auto, cpu, every CUDA device this machine has (cuda:0, cuda:1, ...) and mps on Apple machines."""
    return device_names()


class LoadVideoModel(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFLoadVideoModel",
        display_name="Load Video Model (DRF)",
        category=category("loaders"),
        description=(
            "Loads a diffusers text-to-video model folder (e.g. Wan2.1-T2V-1.3B-Diffusers) from models/diffusers. "
            "The model is loaded once and reused by later runs until ComfyUI needs the memory."
        ),
        inputs=(
            Combo(
                "model",
                lambda folders: folders.list_folders(VIDEO_MODEL_FOLDER, VIDEO_MODEL_MARKER),
                "A folder under models/diffusers holding model_index.json (the whole diffusers repository).",
            ),
            Combo("dtype", DTYPE_CHOICES, DTYPE_TOOLTIP, default="auto"),
            Combo(
                "device",
                device_choices,
                "Where the video model runs. auto: the first NVIDIA GPU, else Apple MPS, else the CPU.",
                "auto",
            ),
        ),
        outputs=(OutputSpec(VIDEO_MODEL, "video_model", "The video model, for Train LoRA and Sample Video."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, model: str, dtype: str, device: str) -> NodeResult:
        path = ctx.folders.resolve(VIDEO_MODEL_FOLDER, model)
        read_model_index(path)  # a clear error now, not at the first sample
        return NodeResult((ModelHandle("video_model", str(path), dtype, device),))


class LoadVLMCritic(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFLoadVLMCritic",
        display_name="Load VLM Critic (DRF)",
        category=category("loaders"),
        description=(
            "Loads a frozen vision-language model (e.g. Qwen2.5-VL-7B-Instruct) from models/vlm or models/LLM. "
            "It answers questions about the videos; its answer logits are the reward. It can sit on another "
            "GPU or on the CPU."
        ),
        inputs=(
            Combo(
                "model",
                lambda folders: folders.list_folders(CRITIC_FOLDER, CRITIC_MARKER),
                "A transformers model folder (config.json, weights, tokenizer) under models/vlm or models/LLM.",
            ),
            Combo("dtype", DTYPE_CHOICES, DTYPE_TOOLTIP, default="auto"),
            Combo(
                "device",
                device_choices,
                "Where the critic runs; another GPU than the video model's saves memory.",
                "auto",
            ),
        ),
        outputs=(OutputSpec(CRITIC, "critic", "The critic, for Train LoRA, Critique Video and Decompose Prompt."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, model: str, dtype: str, device: str) -> NodeResult:
        path = ctx.folders.resolve(CRITIC_FOLDER, model)
        return NodeResult((ModelHandle("critic", str(path), dtype, device),))

"""VLM critics: a registry keyed by the transformers `model_type` of a folder, and `load_critic`.

`load_critic(folder)` reads `<folder>/config.json`, picks the critic class registered for its
`model_type` and loads it on the asked device and dtype. Adding a model family is one module and
one `CRITICS.add(...)` line here.

Knows nothing about rewards or training; checks only what a folder is, the classes load the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import resolve_device, resolve_dtype
from ..errors import ModelFolderError
from ..io import read_model_config
from ..registry import Registry
from .base import YES_NO_INSTRUCTION, AnswerLogProbs, Critic, CriticScores, yes_no_prompt
from .qwen2_5_vl import Qwen2VLCritic, QwenVLCritic

CRITICS: Registry[type[Critic]] = Registry("critic")
CRITICS.add("qwen2_5_vl", QwenVLCritic)
CRITICS.add("qwen2_vl", Qwen2VLCritic)

__all__ = [
    "CRITICS",
    "YES_NO_INSTRUCTION",
    "AnswerLogProbs",
    "Critic",
    "CriticScores",
    "Qwen2VLCritic",
    "QwenVLCritic",
    "critic_model_type",
    "load_critic",
    "yes_no_prompt",
]


def critic_model_type(folder: Path) -> str:
    """The folder's `model_type`, after checking that it is a transformers VLM folder at all."""
    supported = ", ".join(CRITICS.names())
    if not folder.exists():
        raise ModelFolderError(
            f"critic model folder {folder} does not exist; give the local folder of a vision-language model "
            f"({supported}), e.g. one downloaded with `huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct "
            "--local-dir <folder>`"
        )
    if not folder.is_dir():
        raise ModelFolderError(f"critic model path {folder} is a file; give the folder that holds config.json")
    if (folder / "model_index.json").is_file():
        raise ModelFolderError(
            f"{folder} is a diffusers pipeline folder (it has model_index.json), not a vision-language model; give "
            f"the critic a transformers VLM folder ({supported}) such as Qwen2.5-VL-7B-Instruct"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            f"{folder} has no config.json, so it is not a transformers model folder; give the folder that holds the "
            "VLM's config.json, weights and tokenizer (the top folder of the download)"
        )
    config = read_model_config(config_file)
    model_type = config.get("model_type")
    if model_type is None and config.get("_class_name"):
        raise ModelFolderError(
            f"{folder} holds a diffusers component ({config['_class_name']}), not a vision-language model; give the "
            f"critic a transformers VLM folder ({supported}) such as Qwen2.5-VL-7B-Instruct"
        )
    if model_type not in CRITICS:
        raise ModelFolderError(
            f"{folder} holds a model of type {model_type!r}, which is not a supported critic; supported "
            f"vision-language model types: {supported} (e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
        )
    return model_type


def load_critic(path: str | Path, dtype: Any = "auto", device: Any = "auto", quantization: str = "none") -> Critic:
    """Load the critic in a local transformers folder.

    `dtype`: "auto" (bf16 on CUDA, fp32 elsewhere), "bf16", "fp16", "fp32" or a `torch.dtype`;
    `device`: "auto", "cpu", "cuda", "cuda:N" or a `torch.device`; `quantization`: a key of
    `quantization.CRITIC_QUANTIZERS` ("none", "int8", "int4"): a quantized critic is loaded on the CPU
    and quantized layer by layer into `device`. All parameters are frozen and the model is in eval
    mode. Nothing is downloaded.
    """
    import torch

    from ..quantization import check_critic_quantization, quantize_critic

    folder = Path(path).expanduser()
    model_type = critic_model_type(folder)
    check_critic_quantization(quantization)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    load_device = device if quantization == "none" else torch.device("cpu")
    try:
        critic = CRITICS.get(model_type).from_folder(folder, dtype=dtype, device=load_device)
    except OSError as error:  # transformers' "no file named model.safetensors ..." and other missing files
        raise ModelFolderError(
            f"the critic in {folder} cannot be loaded ({error}); the folder is incomplete or damaged: download "
            "the whole model folder again (config, every weight file, tokenizer)"
        ) from error
    return quantize_critic(critic, quantization, device)

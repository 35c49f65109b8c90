"""ComfyUI's own (core) nodes that the example workflows use, written as this pack's `NodeSpec`s.

The workflow tools (`workflow.py`: building, checking, converting to API format) read node specs;
these let them place core Load Diffusion Model / Load CLIP / Load VAE / KSampler / ... beside the
pack's nodes. Inputs are listed in ComfyUI's order (required, then optional) with its defaults and
ranges; combo options list the values the workflows may use (a subset of ComfyUI's), file combos
list the model folder. A real-ComfyUI test compares every spec here with the server's
`/object_info`, so a ComfyUI that changes one of these nodes fails the tests, not an artist's queue.

Describes ComfyUI 0.3.64's nodes as data; imports nothing of ComfyUI.
"""

from __future__ import annotations

from .spec import (
    Combo,
    Float,
    Int,
    ModelFolders,
    NodeSpec,
    OutputSpec,
    Socket,
    String,
)

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
# The values the example workflows use (ComfyUI offers more).
SAMPLER_NAMES = ("euler", "uni_pc", "uni_pc_bh2")
SCHEDULER_NAMES = ("simple", "normal", "beta", "sgm_uniform")
CLIP_TYPES = ("wan",)
DUAL_CLIP_TYPES = ("flux",)
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


def _files(kind: str):
    def options(folders: ModelFolders) -> list[str]:
        return folders.list_files(kind, MODEL_FILE_SUFFIXES)

    return options


def _core(node_id: str, display_name: str, inputs: tuple, outputs: tuple, is_output_node: bool = False) -> NodeSpec:
    description = f"ComfyUI's {display_name}."
    return NodeSpec(node_id, display_name, "ComfyUI core", description, inputs, outputs, is_output_node)


CORE_SPECS: dict[str, NodeSpec] = {
    spec.node_id: spec
    for spec in (
        _core(
            "UNETLoader",
            "Load Diffusion Model",
            (
                Combo("unet_name", _files("diffusion_models"), "The diffusion model file."),
                Combo("weight_dtype", WEIGHT_DTYPES, "Weight storage.", "default"),
            ),
            (OutputSpec("MODEL", "MODEL", ""),),
        ),
        _core(
            "CLIPLoader",
            "Load CLIP",
            (
                Combo("clip_name", _files("text_encoders"), "The text encoder file."),
                Combo("type", CLIP_TYPES, "The model family."),
                Combo("device", ("default", "cpu"), "Where the text encoder runs.", "default", optional=True),
            ),
            (OutputSpec("CLIP", "CLIP", ""),),
        ),
        _core(
            "DualCLIPLoader",
            "DualCLIPLoader",
            (
                Combo("clip_name1", _files("text_encoders"), "The first text encoder file (Flux: CLIP-L)."),
                Combo("clip_name2", _files("text_encoders"), "The second text encoder file (Flux: T5-XXL)."),
                Combo("type", DUAL_CLIP_TYPES, "The model family."),
                Combo("device", ("default", "cpu"), "Where the text encoders run.", "default", optional=True),
            ),
            (OutputSpec("CLIP", "CLIP", ""),),
        ),
        _core(
            "VAELoader",
            "Load VAE",
            (Combo("vae_name", _files("vae"), "The VAE file."),),
            (OutputSpec("VAE", "VAE", ""),),
        ),
        _core(
            "ModelSamplingSD3",
            "ModelSamplingSD3",
            (Socket("model", "MODEL", ""), Float("shift", 3.0, 0.0, 100.0, "Noise schedule shift.", step=0.01)),
            (OutputSpec("MODEL", "MODEL", ""),),
        ),
        _core(
            "LoraLoaderModelOnly",
            "LoraLoaderModelOnly",
            (
                Socket("model", "MODEL", ""),
                Combo("lora_name", _files("loras"), "The LoRA file."),
                Float("strength_model", 1.0, -100.0, 100.0, "LoRA strength.", step=0.01),
            ),
            (OutputSpec("MODEL", "MODEL", ""),),
        ),
        _core(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            (String("text", "", "The prompt.", multiline=True), Socket("clip", "CLIP", "")),
            (OutputSpec("CONDITIONING", "CONDITIONING", ""),),
        ),
        _core(
            "EmptyHunyuanLatentVideo",
            "EmptyHunyuanLatentVideo",
            (
                Int("width", 848, 16, MAX_RESOLUTION, "Width.", step=16),
                Int("height", 480, 16, MAX_RESOLUTION, "Height.", step=16),
                Int("length", 25, 1, MAX_RESOLUTION, "Frames.", step=4),
                Int("batch_size", 1, 1, 4096, "Batch size."),
            ),
            (OutputSpec("LATENT", "LATENT", ""),),
        ),
        _core(
            "KSampler",
            "KSampler",
            (
                Socket("model", "MODEL", ""),
                Int("seed", 0, 0, 0xFFFFFFFFFFFFFFFF, "Noise seed.", control_after_generate=True),
                Int("steps", 20, 1, 10000, "Steps."),
                Float("cfg", 8.0, 0.0, 100.0, "Guidance scale.", step=0.1),
                Combo("sampler_name", SAMPLER_NAMES, "Sampler."),
                Combo("scheduler", SCHEDULER_NAMES, "Scheduler."),
                Socket("positive", "CONDITIONING", ""),
                Socket("negative", "CONDITIONING", ""),
                Socket("latent_image", "LATENT", ""),
                Float("denoise", 1.0, 0.0, 1.0, "Denoise.", step=0.01),
            ),
            (OutputSpec("LATENT", "LATENT", ""),),
        ),
        _core(
            "VAEDecode",
            "VAE Decode",
            (Socket("samples", "LATENT", ""), Socket("vae", "VAE", "")),
            (OutputSpec("IMAGE", "IMAGE", ""),),
        ),
    )
}

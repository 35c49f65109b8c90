"""Load Video Model, Video Model from ComfyUI and Load VLM Critic.

Load Video Model and Load VLM Critic pick a local model folder, a dtype and a device and return a
`ModelHandle`; the model itself is loaded on first use and kept between queue runs
(`model_cache.py`). Video Model from ComfyUI wraps core MODEL / VAE / CLIP (or CONDITIONING)
objects as the same video-model wire; its `run` imports the ComfyUI backend, so it runs only
inside ComfyUI. Knows which folder kinds hold which models; nothing about training.
"""

from __future__ import annotations

from ..drf_core.config import DTYPES, resolve_device, resolve_dtype
from ..drf_core.critics import critic_model_type
from ..drf_core.devices import device_names
from ..drf_core.errors import DRFInputError
from ..drf_core.models import VIDEO_WEIGHT_STORAGES, read_model_index
from ..drf_core.quantization import CRITIC_QUANTIZERS, check_critic_quantization
from .comfy_names import COMFY_SCHEDULERS, SOLVERS
from .model_cache import ModelHandle
from .spec import (
    CRITIC,
    VIDEO_MODEL,
    Combo,
    DRFNode,
    Float,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    Socket,
    String,
    category,
)
from .wan_experts import TRAINED_EXPERT_CHOICES, experts_trained

VIDEO_MODEL_FOLDER = "diffusers"
VIDEO_MODEL_MARKER = "model_index.json"
CRITIC_FOLDER = "vlm"
CRITIC_MARKER = "config.json"
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_TOOLTIP = "auto: bf16 on an NVIDIA GPU, fp32 on the CPU and on Apple MPS. fp16 is not recommended for training."
WEIGHT_STORAGE_TOOLTIP = (
    "How the frozen transformer weights are kept. auto: in the dtype above. fp8_e4m3fn / fp8_e5m2: half the "
    "memory of bf16, each layer cast to the dtype above while it runs; the LoRA stays in full precision."
)
QUANTIZATION_TOOLTIP = (
    "How the frozen critic's linear layers are stored (bitsandbytes). none: as loaded. int8: about half of bf16 "
    "(scales included). int4 (NF4): about a quarter, with a less exact reward. Gradients "
    "still reach the pixels."
)


def device_choices(_folders: object = None) -> list[str]:
    """auto, cpu, every CUDA device this machine has (cuda:0, cuda:1, ...) and mps on Apple machines."""
    return device_names()


def check_dtype_and_device(dtype: str, device: str) -> None:
    """Refuse an unknown dtype or device on the loader itself (the model loads later, in the node that uses it)."""
    resolve_dtype(dtype, resolve_device(device))


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
            Combo("weight_storage", tuple(VIDEO_WEIGHT_STORAGES.names()), WEIGHT_STORAGE_TOOLTIP, default="auto"),
        ),
        outputs=(OutputSpec(VIDEO_MODEL, "video_model", "The video model, for Train LoRA and Sample Video."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, model: str, dtype: str, device: str, weight_storage: str = "auto") -> NodeResult:
        path = ctx.folders.resolve(VIDEO_MODEL_FOLDER, model)
        read_model_index(path)  # a clear error now, not at the first sample
        check_dtype_and_device(dtype, device)
        VIDEO_WEIGHT_STORAGES.get(weight_storage)
        options = () if weight_storage == "auto" else (("weight_storage", weight_storage),)
        return NodeResult((ModelHandle("video_model", str(path), dtype, device, options),))


class VideoModelFromComfy(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFVideoModelFromComfy",
        display_name="Video Model from ComfyUI (DRF)",
        category=category("loaders"),
        description=(
            "Trains and samples on the models ComfyUI's own loaders give: a Wan text-to-video or Flux dev "
            "text-to-image MODEL (Load Diffusion Model, optionally through ModelSamplingSD3 for the shift), its VAE "
            "(Load VAE) and its text encoder (Load CLIP / DualCLIPLoader), or prompts already encoded with CLIP Text "
            "Encode (Flux: through FluxGuidance). ComfyUI keeps managing their memory. Sampling equals core KSampler "
            "with the same sampler and scheduler; saved LoRAs load in LoraLoaderModelOnly. Flux makes one image."
        ),
        inputs=(
            Socket(
                "model",
                "MODEL",
                "A Wan 2.1 / 2.2 text-to-video MODEL (e.g. wan2.1_t2v_1.3B_fp16.safetensors, "
                "wan2.2_ti2v_5B_fp16.safetensors; for Wan 2.2 A14B its high-noise expert) or a Flux dev MODEL "
                "(flux1-dev.safetensors).",
            ),
            Socket(
                "vae",
                "VAE",
                "The model's VAE: wan_2.1_vae.safetensors (Wan 2.1, Wan 2.2 A14B), wan2.2_vae.safetensors (Wan 2.2 "
                "TI2V-5B: sizes in steps of 32, 24 fps videos) or ae.safetensors (Flux).",
            ),
            Socket("clip", "CLIP", "The text encoder (e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors).", optional=True),
            Combo("sampler_name", SOLVERS.names(), "ComfyUI sampler, as on core KSampler.", "uni_pc"),
            Combo("scheduler", COMFY_SCHEDULERS, "ComfyUI scheduler, as on core KSampler.", "simple"),
            Socket(
                "positive",
                "CONDITIONING",
                "Optional: a prompt already encoded (CLIP Text Encode), used for positive_text.",
                optional=True,
            ),
            String(
                "positive_text",
                "",
                "The prompt text `positive` encodes: Train LoRA and Sample Video find it by this text "
                "(empty: no positive connected).",
            ),
            Socket("negative", "CONDITIONING", "Optional: the negative prompt already encoded.", optional=True),
            String("negative_text", "", "The negative prompt text `negative` encodes (empty: no negative prompt)."),
            Socket(
                "model_low_noise",
                "MODEL",
                "Wan 2.2 A14B only: the low-noise expert (wan2.2_t2v_low_noise_14B_*.safetensors); `model` is then "
                "the high-noise one.",
                optional=True,
            ),
            Float(
                "low_noise_from",
                0.5,
                0.0,
                1.0,
                "Wan 2.2 A14B: the share of the steps the high-noise expert runs before the low-noise one takes "
                "over (ComfyUI's template: 10 of 20 steps = 0.5), as two KSamplerAdvanced do.",
                0.05,
            ),
            Combo(
                "trained_expert",
                list(TRAINED_EXPERT_CHOICES),
                "Wan 2.2 A14B: the expert the LoRA trains (and Load LoRA previews on); apply the saved file to that "
                "MODEL. The low-noise expert shapes the final details. 'both' trains one LoRA per expert (Save LoRA "
                "writes two files); the gradient reaches the high-noise expert only when truncated_backprop_steps "
                "is more than the low-noise expert's steps.",
                TRAINED_EXPERT_CHOICES[0],
            ),
        ),
        outputs=(OutputSpec(VIDEO_MODEL, "video_model", "The video model, for Train LoRA and Sample Video."),),
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        model,
        vae,
        sampler_name: str,
        scheduler: str,
        positive_text: str,
        negative_text: str,
        low_noise_from: float = 0.5,
        trained_expert: str = "low_noise",
        clip=None,
        positive=None,
        negative=None,
        model_low_noise=None,
    ) -> NodeResult:
        SOLVERS.get(sampler_name)
        experts_trained(trained_expert)  # an unknown choice is refused here, before anything loads
        if scheduler not in COMFY_SCHEDULERS:
            choices = ", ".join(COMFY_SCHEDULERS)
            raise DRFInputError(f"unknown ComfyUI scheduler {scheduler!r}; choose one of: {choices}")
        try:
            from .comfy_backend import ComfyVideoBackend, ComfyVideoModel
            from .comfy_prompts import ComfyPrompts, conditioning_extras, conditioning_tensor
        except ImportError as error:
            raise DRFInputError(f"Video Model from ComfyUI runs only inside ComfyUI ({error})") from None
        if clip is None and positive is None:
            raise DRFInputError(
                "connect a CLIP (Load CLIP) or an encoded prompt (positive) to Video Model from ComfyUI"
            )
        if positive is not None and not positive_text.strip():
            raise DRFInputError("positive is connected but positive_text is empty; write the prompt it encodes")
        prompts = ComfyPrompts(clip=clip)
        for text, conditioning, what in ((positive_text, positive, "positive"), (negative_text, negative, "negative")):
            if conditioning is not None:
                prompts.encoded[text] = conditioning_tensor(conditioning, what)
                prompts.extras[text] = conditioning_extras(conditioning)
        backend = ComfyVideoBackend(
            model, vae, prompts, sampler_name, scheduler, model_low_noise, low_noise_from, trained_expert
        )
        return NodeResult((ComfyVideoModel(backend),), text=backend.source)


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
            Combo("quantization", tuple(CRITIC_QUANTIZERS.names()), QUANTIZATION_TOOLTIP, default="none"),
        ),
        outputs=(OutputSpec(CRITIC, "critic", "The critic, for Train LoRA, Critique Video and Decompose Prompt."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, model: str, dtype: str, device: str, quantization: str = "none") -> NodeResult:
        path = ctx.folders.resolve(CRITIC_FOLDER, model)
        critic_model_type(path)  # a clear error now (wrong kind of folder), not at the first critique
        check_dtype_and_device(dtype, device)
        check_critic_quantization(quantization, "quantization")  # unknown mode, or bitsandbytes missing
        options = () if quantization == "none" else (("quantization", quantization),)
        return NodeResult((ModelHandle("critic", str(path), dtype, device, options),))

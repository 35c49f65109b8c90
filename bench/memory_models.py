"""The real model configurations, built as fake-tensor models the engine's classes wrap.

Every config below is written out from the model's published `config.json` (Hugging Face:
`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, `Wan-AI/Wan2.2-TI2V-5B-Diffusers`,
`Qwen/Qwen2.5-VL-7B-Instruct`, `Qwen/Qwen2.5-VL-3B-Instruct`); nothing is downloaded. The models are
built under a `FakeTensorMode`, so their weights have shapes and dtypes but no memory, and are
handed to the engine's own `WanBackend` and `QwenVLCritic` (the classes `load_video_backend` and
`load_critic` return). Differences from the real folders, none of which changes a tensor's size:

- tokenizers: the tiny T5 tokenizer (Wan pads every prompt to 512 tokens anyway) and a word-level
  Qwen tokenizer that knows every word of the prompts and questions (about one token per word, as
  Qwen's own vocabulary gives for plain English); the critic config's special-token ids are the
  tokenizer's (the vocabulary size, and so the embedding and LM head, stay the published ones);
- Wan 2.2's VAE latent mean/std: 48 zeros/ones (the values only shift the decoded pixels).

`fake_copy_*` build the same kind of fake models from already-loaded (tiny) ones, for validation.
Knows the engine's backend and critic classes; never trains anything.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# --- published configs -----------------------------------------------------------------------

UMT5_XXL = {  # text_encoder/config.json of the Wan 2.1 / 2.2 Diffusers folders (encoder only)
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "scalable_attention": True,
}


@dataclass(frozen=True)
class VideoModelSpec:
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    expand_timesteps: bool = False
    boundary_ratio: float | None = None
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(UMT5_XXL))


_WAN_TRANSFORMER_COMMON = {
    "patch_size": [1, 2, 2],
    "attention_head_dim": 128,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
    "added_kv_proj_dim": None,
    "image_dim": None,
}
# latents_mean / latents_std: AutoencoderKLWan's defaults are Wan 2.1's published values.
_WAN21_VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}
_UNIPC = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
}

VIDEO_MODELS: dict[str, VideoModelSpec] = {
    "Wan2.1-T2V-1.3B": VideoModelSpec(
        transformer={
            **_WAN_TRANSFORMER_COMMON,
            "num_attention_heads": 12,
            "num_layers": 30,
            "ffn_dim": 8960,
            "in_channels": 16,
            "out_channels": 16,
        },
        vae=dict(_WAN21_VAE),
        scheduler={**_UNIPC, "flow_shift": 3.0},
    ),
    # Wan2.1-T2V-14B's published config; each of Wan 2.2 A14B's two experts has this architecture.
    "Wan2.1-T2V-14B": VideoModelSpec(
        transformer={
            **_WAN_TRANSFORMER_COMMON,
            "num_attention_heads": 40,
            "num_layers": 40,
            "ffn_dim": 13824,
            "in_channels": 16,
            "out_channels": 16,
        },
        vae=dict(_WAN21_VAE),
        scheduler={**_UNIPC, "flow_shift": 5.0},
    ),
    "Wan2.2-TI2V-5B": VideoModelSpec(
        transformer={
            **_WAN_TRANSFORMER_COMMON,
            "num_attention_heads": 24,
            "num_layers": 30,
            "ffn_dim": 14336,
            "in_channels": 48,
            "out_channels": 48,
        },
        vae={  # the Wan 2.2 VAE: the Wan 2.1 VAE's stages, wider, residual, 48 channels, patchified
            **_WAN21_VAE,
            "base_dim": 160,
            "decoder_base_dim": 256,
            "z_dim": 48,
            "is_residual": True,
            "in_channels": 12,
            "out_channels": 12,
            "patch_size": 2,
            "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "clip_output": False,
            "latents_mean": [0.0] * 48,
            "latents_std": [1.0] * 48,
        },
        scheduler={**_UNIPC, "flow_shift": 5.0},
        expand_timesteps=True,
    ),
}

_QWEN_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
_QWEN_TEXT = {
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    "attention_dropout": 0.0,
    "use_sliding_window": False,
}

CRITIC_MODELS: dict[str, dict[str, Any]] = {
    "7B": {
        "text": {
            **_QWEN_TEXT,
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "tie_word_embeddings": False,
        },
        "vision": {**_QWEN_VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
    "3B": {
        "text": {
            **_QWEN_TEXT,
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
        },
        "vision": {**_QWEN_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
}

# --- builders (call these inside a FakeTensorMode) -----------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (fake parameters cannot be swapped by `.to(dtype)`)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _words(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(word for text in texts for word in re.findall(r"[A-Za-z0-9]+", text)))


def build_video_backend(name: str, dtype: torch.dtype, device: torch.device) -> Any:
    """A `WanBackend` over fake modules of the published configs (call inside a FakeTensorMode)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from drf_core.models.wan import WanBackend
    from drf_core.tiny import build_tiny_t5_tokenizer

    spec = VIDEO_MODELS[name]
    tokenizer = build_tiny_t5_tokenizer()
    text_config = UMT5Config(**spec.text_encoder, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with default_dtype(dtype), torch.device(device):
        text_encoder = UMT5EncoderModel(text_config)
        transformer = WanTransformer3DModel(**spec.transformer)
        vae = AutoencoderKLWan(**spec.vae)
    return WanBackend(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        transformer_2=None,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**spec.scheduler),
        boundary_ratio=spec.boundary_ratio,
        expand_timesteps=spec.expand_timesteps,
        source=f"fake:{name}",
        device=device,
        dtype=dtype,
    )


def build_critic(name: str, dtype: torch.dtype, device: torch.device, texts: list[str]) -> Any:
    """A `QwenVLCritic` over a fake Qwen2.5-VL of the published config (call inside a FakeTensorMode).

    `texts` (questions, answers, the prompt) become whole words of the tokenizer.
    """
    import transformers

    from drf_core.critics.qwen2_5_vl import QwenVLCritic, _zero_dropout
    from drf_core.critics.qwen_vision import read_vision_settings
    from drf_core.tiny import (
        QWEN2_5_VL_CHAT_TEMPLATE,
        QWEN2_5_VL_PREPROCESSOR_CONFIG,
        QWEN_SPECIAL_TOKENS,
        build_tiny_qwen_tokenizer,
    )

    spec = CRITIC_MODELS[name]
    system = "system You are a helpful assistant user assistant"
    tokenizer = build_tiny_qwen_tokenizer(extra_words=_words([*texts, system]))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = transformers.Qwen2_5_VLConfig(
        text_config={**spec["text"], **special},
        vision_config=spec["vision"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )
    _zero_dropout(config)
    with default_dtype(dtype), torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model.requires_grad_(False)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="drf_memory_vision_") as folder:
        (Path(folder) / "preprocessor_config.json").write_text(
            json.dumps(QWEN2_5_VL_PREPROCESSOR_CONFIG), encoding="utf-8"
        )
        vision = read_vision_settings(folder)
    return QwenVLCritic(model, tokenizer, QWEN2_5_VL_CHAT_TEMPLATE, vision, f"fake:Qwen2.5-VL-{name}")


def fake_copy_backend(real: Any) -> Any:
    """A `WanBackend` of the same configs as the loaded `real` one, with fake weights."""
    from drf_core.models.wan import WanBackend

    def clone(module: torch.nn.Module | None) -> torch.nn.Module | None:
        if module is None:
            return None
        with default_dtype(next(module.parameters()).dtype), torch.device(real.device):
            if hasattr(module, "from_config"):  # diffusers
                copy = type(module).from_config(module.config)
            else:  # transformers
                copy = type(module)(module.config)
        return copy.requires_grad_(False).eval()

    return WanBackend(
        tokenizer=real.tokenizer,
        text_encoder=clone(real.text_encoder),
        transformer=clone(real.transformer),
        transformer_2=clone(real.transformer_2),
        vae=clone(real.vae),
        scheduler=real.scheduler_template,
        boundary_ratio=real.boundary_ratio,
        expand_timesteps=real.expand_timesteps,
        source=f"fake:{real.source}",
        device=real.device,
        dtype=real.dtype,
        max_sequence_length=real.max_sequence_length,
    )


def fake_copy_critic(real: Any) -> Any:
    """The same critic class, tokenizer and settings as `real`, over a fake model of its config."""
    with default_dtype(real.dtype), torch.device(real.device):
        model = type(real.model)(real.model.config)
    model.requires_grad_(False)
    model.eval()
    return type(real)(model, real.tokenizer, real.chat_template, real.vision, f"fake:{real.name}")

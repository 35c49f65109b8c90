"""Tiny random models, built in code and written as ordinary model folders.

`write_tiny_wan(dir)` writes a diffusers Wan text-to-video folder (`model_index.json`,
transformer, VAE, UMT5 text encoder, T5 tokenizer, UniPC scheduler as in the real
Wan2.1-T2V-1.3B-Diffusers). `write_tiny_qwen2_5_vl(dir)` writes a transformers Qwen2.5-VL folder
(weights, byte-level BPE tokenizer with Qwen's special tokens, Qwen's chat template, and the
`preprocessor_config.json` the real Qwen2.5-VL-7B-Instruct ships). The normal loaders
(`models.wan.load_wan`, `critics.load_critic`, `WanPipeline.from_pretrained`,
`AutoProcessor.from_pretrained`) load them, so tests and the demo exercise the real loading code.

Sizes follow `FACTS.md`: they are small enough for a CPU and large enough that gradients are
meaningful (the VAE's `base_dim=16`; `base_dim=3` gives wrong gradients). Nothing here downloads.
Knows nothing about training or rewards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The official Qwen2.5-VL chat template (chat_template.json of Qwen/Qwen2.5-VL-*-Instruct).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# preprocessor_config.json of Qwen/Qwen2.5-VL-7B-Instruct (the video processor reads it too).
QWEN2_5_VL_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

# Words the tiny tokenizers learn as whole tokens, so prompts and answers tokenize compactly.
_TINY_WORDS = (
    "a an the is are of on in to and with across frames video camera slowly pans left right "
    "two three red blue green wooden table apples apple cat dog shape keep do does there Is Are "
    "Describe object objects motion sharp clear"
).split()


TINY_QWEN_INITIALIZER_RANGE = 0.1
# vocab_size in config.json of Qwen/Qwen2.5-VL-3B/7B-Instruct (151,665 tokens, padded).
QWEN2_5_VL_VOCAB_SIZE = 151936
TINY_WAN_TEXT_DIM = 4096  # UMT5-XXL's width, which ComfyUI's Wan model assumes


@dataclass(frozen=True)
class TinyModelPaths:
    wan: Path
    qwen: Path


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_tiny_t5_tokenizer():
    """A Unigram T5 tokenizer from an in-code vocabulary (printable ASCII plus a few words)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(33, 127)]
    vocab += [("\u2581" + w, -1.0) for w in _TINY_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def write_tiny_wan(directory: str | Path, seed: int = 0, scheduler: str = "unipc") -> Path:
    """Write a tiny diffusers Wan 2.1 text-to-video folder and return its path.

    `scheduler` is "unipc" (as Wan2.1-T2V-1.3B-Diffusers ships) or "flow_euler".
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    _seeded(seed)
    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    _seeded(seed + 1)
    transformer = _tiny_wan_transformer(latent_channels=16)
    _seeded(seed + 2)
    tokenizer = build_tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TINY_WAN_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
        )
    elif scheduler == "flow_euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        raise ValueError(f"unknown tiny scheduler {scheduler!r}; use 'unipc' or 'flow_euler'")
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=sched, transformer=transformer
    )
    pipe.save_pretrained(directory)
    logger.info("wrote tiny Wan text-to-video folder to %s", directory)
    return directory


def _tiny_wan_transformer(latent_channels: int):
    """A 2-block Wan transformer reading and writing `latent_channels` channels (Wan 2.1 VAE: 16, Wan 2.2 VAE: 48).

    ComfyUI's Wan model derives its head count as dim // 128 and fixes the text width at 4096
    (UMT5-XXL), so one head of 128 and a 4096-wide text encoder make this transformer loadable
    by ComfyUI's own UNETLoader too (see `wan_keys.native_wan_state_dict`).
    """
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=1,
        attention_head_dim=128,
        in_channels=latent_channels,
        out_channels=latent_channels,
        text_dim=TINY_WAN_TEXT_DIM,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=32,
    )


def write_tiny_wan_ti2v_native(path: str | Path, seed: int = 0) -> Path:
    """A tiny Wan 2.2 TI2V-5B transformer (the 5B's layout: Wan 2.1's blocks on the Wan 2.2 VAE's 48 latent
    channels) as one original-layout safetensors file; ComfyUI's UNETLoader detects it as Wan 2.2 5B (WAN22)."""
    return _write_tiny_transformer_native(path, latent_channels=48, seed=seed)


def write_tiny_wan_t2v_native(path: str | Path, seed: int = 0) -> Path:
    """A tiny Wan text-to-video transformer on the Wan 2.1 VAE's 16 latent channels (the layout of Wan 2.1 and of
    each of Wan 2.2 A14B's two experts) as one original-layout safetensors file, without a diffusers folder;
    ComfyUI's UNETLoader detects it as Wan 2.1 (WAN21). Different seeds give different experts."""
    return _write_tiny_transformer_native(path, latent_channels=16, seed=seed)


def _write_tiny_transformer_native(path: str | Path, latent_channels: int, seed: int) -> Path:
    from safetensors.torch import save_file

    from .models.wan_keys import native_wan_state_dict

    _seeded(seed)
    transformer = _tiny_wan_transformer(latent_channels=latent_channels)
    state = {k: v.detach().contiguous() for k, v in native_wan_state_dict(transformer.state_dict()).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_wan_native(wan_folder: str | Path, path: str | Path) -> Path:
    """The transformer of a (tiny) diffusers Wan folder as one original-layout safetensors file,
    the kind ComfyUI's UNETLoader reads from `models/diffusion_models`."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    from .models.wan_keys import native_wan_state_dict

    transformer = WanTransformer3DModel.from_pretrained(Path(wan_folder) / "transformer", local_files_only=True)
    state = {k: v.detach().contiguous() for k, v in native_wan_state_dict(transformer.state_dict()).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def build_tiny_qwen_tokenizer(yes_no_single_tokens: bool = True, extra_words: Sequence[str] = ()):
    """A byte-level BPE tokenizer with Qwen's special tokens and Qwen's chat template.

    With `yes_no_single_tokens`, merges make "Yes", "No", " Yes" and " No" single tokens, as in
    the real Qwen vocabulary; without, they split into characters (for the error-path test).
    `extra_words` become whole tokens too (bench/memory.py: prompts as long as the real tokenizer's).
    """
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {c: i for i, c in enumerate(byte_chars)}
    merges: list[tuple[str, str]] = []

    def learn(left: str, right: str) -> None:
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))

    def learn_word(word: str) -> None:
        current = word[0]
        for ch in word[1:]:
            learn(current, ch)
            current += ch

    space = bytes_to_unicode()[ord(" ")]
    words = list(dict.fromkeys([*_TINY_WORDS, *extra_words]))
    if yes_no_single_tokens:
        words = ["Yes", "No", *words]
    for word in words:
        learn_word(word)
        learn(space, word)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen2_5_vl_config(tokenizer, vocab_size: int | None = None):
    """A 2-layer Qwen2.5-VL config for `tokenizer`; `vocab_size` defaults to its length rounded up to 64
    (give `QWEN2_5_VL_VOCAB_SIZE` with the real tokenizer to get the real model's embedding size)."""
    from transformers import Qwen2_5_VLConfig

    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)), strict=True))
    vocab_size = vocab_size or (len(tokenizer) + 63) // 64 * 64
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen2_5_VLConfig(
        # A wider initialisation than the real model's 0.02: initialised at 0.02, a 2-layer random
        # VLM answers almost the same whatever the pixels (yes/no margins vary by ~0.01 across
        # unrelated videos). At 0.1 they vary by ~0.1 and respond smoothly, so a short CPU run
        # raises the reward on held-out seeds; at 0.3 the answers turn chaotic in the pixels.
        initializer_range=TINY_QWEN_INITIALIZER_RANGE,
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            initializer_range=TINY_QWEN_INITIALIZER_RANGE,
            **special,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            in_channels=3,
            initializer_range=TINY_QWEN_INITIALIZER_RANGE,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )


def write_tiny_qwen2_5_vl(
    directory: str | Path,
    seed: int = 0,
    yes_no_single_tokens: bool = True,
    tokenizer: Any = None,
    vocab_size: int | None = None,
) -> Path:
    """Write a tiny Qwen2.5-VL folder laid out like Qwen/Qwen2.5-VL-7B-Instruct; return its path.

    `tokenizer` (default: the tiny BPE) may be a real Qwen2.5 tokenizer; it is saved with the
    Qwen2.5-VL chat template, and with `vocab_size=QWEN2_5_VL_VOCAB_SIZE` the tiny model then has the
    real vocabulary, so prompts, special tokens and answer positions are the ones a real critic sees.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tiny_qwen_tokenizer(yes_no_single_tokens)
    else:
        tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    config = build_tiny_qwen2_5_vl_config(tokenizer, vocab_size)
    _seeded(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps(QWEN2_5_VL_PREPROCESSOR_CONFIG, indent=2), encoding="utf-8"
    )
    (directory / "chat_template.json").write_text(
        json.dumps({"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}, indent=2), encoding="utf-8"
    )
    logger.info("wrote tiny Qwen2.5-VL folder to %s", directory)
    return directory


def write_tiny_models(directory: str | Path, seed: int = 0) -> TinyModelPaths:
    """Write both tiny folders under `directory` (`wan/` and `qwen2_5_vl/`)."""
    directory = Path(directory)
    return TinyModelPaths(
        wan=write_tiny_wan(directory / "wan", seed=seed),
        qwen=write_tiny_qwen2_5_vl(directory / "qwen2_5_vl", seed=seed),
    )

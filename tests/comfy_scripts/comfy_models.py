"""Models in ComfyUI's own formats for the scripts run with ComfyUI's interpreter (imported by them).

- `random_wan_vae_state`: a Wan 2.1 or Wan 2.2 VAE at its fixed size (ComfyUI builds them from fixed
  numbers) with seeded random weights.
- `smallest_flux_state`: Flux dev in ComfyUI's key layout with one double and one single block.
  ComfyUI's detection fixes Flux's width (3072, 24 heads, text width 4096) and reads only the
  block counts from the keys, so this is the smallest Flux it loads (545 million parameters).
- `random_flux_vae_state`: Flux's VAE (`ae.safetensors` layout, ComfyUI's fixed size), random weights.
- `random_clip_l_state`: CLIP-L (`clip_l.safetensors` layout, ComfyUI's fixed size), random weights.
- `tiny_t5xxl_state`: T5-XXL in the key layout of ComfyUI's `t5xxl_*.safetensors` at the size of
  `comfy_test_nodes/drf_tiny_t5xxl/t5_config_tiny.json` (T5's full vocabulary, tiny attention and
  feed-forward), which the test server builds instead of T5-XXL's fixed 4.7 billion parameters.
- `tiny_umt5_state`: a UMT5 text encoder in the key layout of ComfyUI's `umt5_xxl_*.safetensors`
  (with its SentencePiece tokenizer inside, as ComfyUI's files carry it) at the size of
  `comfy_test_nodes/drf_tiny_umt5/umt5_config_tiny.json`, which the test server builds instead of
  UMT5-XXL's fixed 5.7 billion parameters.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
TINY_UMT5_CONFIG = TESTS_DIR / "comfy_test_nodes" / "drf_tiny_umt5" / "umt5_config_tiny.json"
TINY_T5XXL_CONFIG = TESTS_DIR / "comfy_test_nodes" / "drf_tiny_t5xxl" / "t5_config_tiny.json"
# Text the tokenizer is trained on: words of the example prompts and of everyday scenes.
TOKENIZER_TEXT = """
a red fox runs across a snowy field at sunrise
a glass of water tips over and the water spills across a wooden table
two dogs play tug of war with a rope on a sandy beach
a basketball bounces three times on a wooden gym floor
a paper boat floats down a small stream in the rain
two red apples on a wooden table, the camera slowly pans left
blurry, static, low quality, distorted, watermark, text
a cat sleeps on a sofa while the sun moves across the room
the camera zooms in on a blue car driving through a city at night
"""


# The sizes `comfy.sd.VAE` builds each Wan VAE at (it reads only the kind of VAE from a file's keys).
WAN21_VAE_SIZE = {"dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                  "temperal_downsample": [False, True, True]}  # fmt: skip
WAN22_VAE_SIZE = {**WAN21_VAE_SIZE, "dim": 160, "z_dim": 48}  # and the class's own decoder width, 256


def random_wan_vae_state(wan_vae_class, torch, size=None, dtype=None) -> dict:
    """A Wan VAE state dict (ComfyUI's layout at `size`, default the Wan 2.1 VAE's) with seeded random
    weights: weights ~ N(0, 1/fan_in), norm scales 1, biases 0 (ComfyUI's layers start uninitialised),
    stored in `dtype` (default float32). The layout is built on the meta device (no memory)."""
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        layout = wan_vae_class(**(size or WAN21_VAE_SIZE))
    state = {}
    for key, value in layout.state_dict().items():
        if key.endswith("gamma"):
            tensor = torch.ones(value.shape)
        elif value.ndim >= 2:
            fan_in = value[0].numel()
            tensor = torch.randn(value.shape, generator=generator) / fan_in**0.5
        else:
            tensor = torch.zeros(value.shape)
        state[key] = tensor.to(dtype or torch.float32)
    return state


def _seeded_random(shape, generator, torch, dtype=None):
    """Uniform weights with variance 1/fan_in, drawn in `dtype` (uniform in bf16 is the fastest way to half a
    billion values)."""
    bound = (3.0 / max(1, int(torch.Size(shape[1:]).numel()))) ** 0.5
    return torch.empty(shape, dtype=dtype or torch.float32).uniform_(-bound, bound, generator=generator)


def smallest_flux_state(torch, dtype=None) -> dict:
    """Flux dev (guidance embedding) in ComfyUI's key layout: depth 1 + 1 single block, seeded random
    weights (norm scales 1, biases 0), stored in `dtype` (default bf16, as Flux files are)."""
    import comfy.ldm.flux.model
    import comfy.ops

    layout = comfy.ldm.flux.model.Flux(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
        mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
        patch_size=2, qkv_bias=True, guidance_embed=True, device="meta", operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in layout.state_dict().items():
        dtype = dtype or torch.bfloat16
        if value.ndim >= 2:
            state[key] = _seeded_random(value.shape, generator, torch, dtype)
        else:
            state[key] = (torch.ones if key.endswith(".scale") else torch.zeros)(value.shape, dtype=dtype)
    return state


def random_flux_vae_state(torch) -> dict:
    """Flux's VAE (16 latent channels, no quant convs, ComfyUI's fixed channel sizes), seeded random weights."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}  # fmt: skip
    layout = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig},
    )
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in layout.state_dict().items():
        if value.ndim >= 2:
            state[key] = _seeded_random(value.shape, generator, torch)
        elif key.endswith("norm.weight") or (key.endswith(".weight") and "norm" in key):
            state[key] = torch.ones(value.shape)
        else:
            state[key] = torch.zeros(value.shape)
    return state


def random_clip_l_state(torch) -> dict:
    """CLIP-L's text model (ComfyUI's `sd1_clip_config.json` size), seeded random weights, fp16."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    config = json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text(encoding="utf-8"))
    layout = comfy.clip_model.CLIPTextModel(config, torch.float32, "meta", comfy.ops.disable_weight_init)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in layout.state_dict().items():
        if "embedding" in key:
            tensor = torch.randn(value.shape, generator=generator) * 0.02
        elif value.ndim >= 2:
            tensor = _seeded_random(value.shape, generator, torch)
        elif "norm" in key and key.endswith("weight"):
            tensor = torch.ones(value.shape)
        else:
            tensor = torch.zeros(value.shape)
        state[key] = tensor.to(torch.float16)
    return state


def _random_t5_state(torch, config: dict, dtype) -> dict:
    """Seeded random weights in the key layout ComfyUI's T5 / UMT5 encoder has for `config` (norms at 1)."""
    import comfy.ops
    import comfy.text_encoders.t5

    layout = comfy.text_encoders.t5.T5(config, torch.float32, "meta", comfy.ops.disable_weight_init)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in layout.state_dict().items():
        if key.endswith("layer_norm.weight"):
            tensor = torch.ones(value.shape)
        elif key.endswith("relative_attention_bias.weight") or key == "shared.weight":
            tensor = torch.randn(value.shape, generator=generator)
        else:
            tensor = torch.randn(value.shape, generator=generator) / value.shape[-1] ** 0.5
        state[key] = tensor.to(dtype)
    return state


def tiny_t5xxl_state(torch) -> dict:
    """The tiny T5-XXL's state dict in ComfyUI's layout, seeded random weights, fp16."""
    return _random_t5_state(torch, json.loads(TINY_T5XXL_CONFIG.read_text(encoding="utf-8")), torch.float16)


def tiny_spiece_model(vocab_size: int) -> bytes:
    """A SentencePiece unigram model with UMT5's special ids (pad 0, end 1, unknown 2, no start)."""
    import sentencepiece

    model = io.BytesIO()
    lines = [line for line in TOKENIZER_TEXT.strip().splitlines() if line]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def tiny_umt5_state(torch, dtype=None) -> dict:
    """The tiny UMT5's state dict in ComfyUI's layout, seeded random weights, plus `spiece_model`."""
    config = json.loads(TINY_UMT5_CONFIG.read_text(encoding="utf-8"))
    state = _random_t5_state(torch, config, dtype or torch.float16)
    spiece = tiny_spiece_model(config["vocab_size"])
    state["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    return state

"""Test-only ComfyUI custom node: core Load CLIP builds Wan's UMT5-XXL at a tiny size.

ComfyUI builds UMT5-XXL from its fixed `umt5_config_xxl.json` (5.7 billion parameters), so no small
file can stand in for `umt5_xxl_fp8_e4m3fn_scaled.safetensors`. Loaded into the test server only,
this module points ComfyUI's `UMT5XXlModel` at `umt5_config_tiny.json`: the same architecture and
code (ComfyUI's T5 with UMT5's per-layer position buckets, its tokenizer, padding, attention mask and
CLIPLoader's detection, which needs 24 blocks and width 4096), with 2 heads of 8 and a 32-wide
feed-forward. Everything else in the server is unchanged. Adds no nodes.
"""

import logging
from pathlib import Path

import comfy.text_encoders.t5
import comfy.text_encoders.wan
from comfy import sd1_clip

TINY_CONFIG = str(Path(__file__).with_name("umt5_config_tiny.json"))


def _tiny_umt5_init(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
    sd1_clip.SDClipModel.__init__(
        self,
        device=device,
        layer=layer,
        layer_idx=layer_idx,
        textmodel_json_config=TINY_CONFIG,
        dtype=dtype,
        special_tokens={"end": 1, "pad": 0},
        model_class=comfy.text_encoders.t5.T5,
        enable_attention_masks=True,
        zero_out_masked=True,
        model_options=model_options,
    )


comfy.text_encoders.wan.UMT5XXlModel.__init__ = _tiny_umt5_init
logging.getLogger(__name__).warning("TEST SERVER: Load CLIP builds UMT5-XXL from %s", TINY_CONFIG)

NODE_CLASS_MAPPINGS: dict = {}

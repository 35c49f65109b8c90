"""Test-only ComfyUI custom node: DualCLIPLoader (type flux) builds T5-XXL at a tiny size.

ComfyUI builds T5-XXL from its fixed `t5_config_xxl.json` (4.7 billion parameters), so no small file
can stand in for `t5xxl_fp16.safetensors`. Loaded into the test server only, this module points
ComfyUI's `T5XXLModel` at `t5_config_tiny.json`: the same code (ComfyUI's T5, its T5 tokenizer with
the full vocabulary, padding, and the loader's detection, which needs 24 blocks and width 4096), with
2 heads of 8 and a 32-wide feed-forward. CLIP-L keeps its real size. Adds no nodes.
"""

import logging
import os
from pathlib import Path

import comfy.text_encoders.sd3_clip
import comfy.text_encoders.t5
from comfy import sd1_clip

TINY_CONFIG = str(Path(__file__).with_name("t5_config_tiny.json"))


def _tiny_t5xxl_init(
    self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=False, model_options=None
):  # ComfyUI's signature
    model_options = {**(model_options or {}), "model_name": "t5xxl"}
    sd1_clip.SDClipModel.__init__(
        self,
        device=device,
        layer=layer,
        layer_idx=layer_idx,
        textmodel_json_config=TINY_CONFIG,
        dtype=dtype,
        special_tokens={"end": 1, "pad": 0},
        model_class=comfy.text_encoders.t5.T5,
        enable_attention_masks=attention_mask,
        return_attention_masks=attention_mask,
        model_options=model_options,
    )


assert os.path.isfile(TINY_CONFIG)
comfy.text_encoders.sd3_clip.T5XXLModel.__init__ = _tiny_t5xxl_init
logging.getLogger(__name__).warning("TEST SERVER: T5-XXL is built from %s", TINY_CONFIG)

NODE_CLASS_MAPPINGS: dict = {}

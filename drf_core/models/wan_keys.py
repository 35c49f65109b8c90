"""Module names of diffusers' `WanTransformer3DModel` <-> the original Wan checkpoint's names.

ComfyUI (and the original Wan code, musubi-tuner, kijai's wrapper) name the transformer's layers as
the Wan 2.1 / 2.2 release does: `blocks.0.self_attn.q`, `blocks.0.ffn.0`, `head.head`, ... Diffusers
renames them (`blocks.0.attn1.to_q`, `blocks.0.ffn.net.0.proj`, `proj_out`). A LoRA exported for
ComfyUI must use the original names, so this module holds the table, written out here as two
registries (per-block layers and top-level layers) rather than imported from diffusers' checkpoint
converter, so that the tests can use diffusers' converter as an independent check.

Covers every layer with weights of the text-to-video models (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 T2V
A14B and TI2V 5B) and of the image-to-video additions (`img_emb`, `k_img` / `v_img`). Names are
module names (no `.weight`). Knows nothing about LoRA or files.
"""

from __future__ import annotations

import re

from ..errors import DRFInputError

# Inside `blocks.{i}.`: diffusers name -> original name. Note the swapped norms: diffusers' `norm2`
# is the (affine) cross-attention norm that the original calls `norm3`, and vice versa.
WAN_BLOCK_MODULES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "norm1": "norm1",
    "norm2": "norm3",
    "norm3": "norm2",
}

# Outside the blocks: diffusers name -> original name.
WAN_TOP_LEVEL_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "norm_out": "head.norm",
    "proj_out": "head.head",
}

_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _invert(table: dict[str, str]) -> dict[str, str]:
    inverse = {native: diffusers for diffusers, native in table.items()}
    if len(inverse) != len(table):
        raise AssertionError("the Wan module-name table maps two diffusers names to one original name")
    return inverse


_NATIVE_BLOCK_MODULES = _invert(WAN_BLOCK_MODULES)
_NATIVE_TOP_LEVEL_MODULES = _invert(WAN_TOP_LEVEL_MODULES)


def _translate(name: str, block_table: dict[str, str], top_table: dict[str, str], direction: str) -> str:
    match = _BLOCK_NAME.match(name)
    if match is not None and match.group(2) in block_table:
        return f"blocks.{match.group(1)}.{block_table[match.group(2)]}"
    if name in top_table:
        return top_table[name]
    known = ", ".join([*list(top_table)[:4], "blocks.<i>." + next(iter(block_table)), "..."])
    raise DRFInputError(
        f"{name!r} is not a layer of a Wan transformer ({direction}); known names look like {known}. "
        "Check that the LoRA / module belongs to a Wan 2.1 / 2.2 model."
    )


def diffusers_to_native_wan_module(name: str) -> str:
    """`blocks.0.attn1.to_q` -> `blocks.0.self_attn.q` (the name ComfyUI's LoRA loader applies)."""
    return _translate(name, WAN_BLOCK_MODULES, WAN_TOP_LEVEL_MODULES, "diffusers name expected")


def native_to_diffusers_wan_module(name: str) -> str:
    """`blocks.0.self_attn.q` -> `blocks.0.attn1.to_q` (the inverse of `diffusers_to_native_wan_module`)."""
    return _translate(name, _NATIVE_BLOCK_MODULES, _NATIVE_TOP_LEVEL_MODULES, "original Wan name expected")


def native_wan_state_dict(state_dict: dict) -> dict:
    """A `WanTransformer3DModel` state dict under the original Wan names (what ComfyUI's
    `UNETLoader` reads from `models/diffusion_models`). Modulation tables are parameters, not
    layers: diffusers' `blocks.N.scale_shift_table` is `blocks.N.modulation`, the top-level one is
    `head.modulation`."""
    native = {}
    for name, tensor in state_dict.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "scale_shift_table":
            key = f"{module}.modulation" if module else "head.modulation"
        else:
            key = f"{diffusers_to_native_wan_module(module)}.{leaf}"
        native[key] = tensor
    return native

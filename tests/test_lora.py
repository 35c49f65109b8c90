"""LoRA injection, export (ComfyUI / diffusers) and loading back, on tiny Wan transformers.

Independent references: diffusers' own Wan checkpoint converter (`convert_wan_transformer_to_diffusers`)
for the original module names, and `WanPipeline.load_lora_weights` for the exported files.
"""

from __future__ import annotations

import json
import re

import pytest
import safetensors.torch
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from drf_core import __version__
from drf_core.config import LoRAConfig
from drf_core.errors import DRFInputError
from drf_core.lora import (
    DIFFUSERS_ADAPTER_METADATA_KEY,
    LORA_FORMATS,
    add_lora,
    apply_lora,
    has_lora,
    lora_module_weights,
    lora_parameters,
    lora_state_dict,
    read_lora_file,
    remove_lora,
    save_lora,
)
from drf_core.models.wan_keys import diffusers_to_native_wan_module, native_to_diffusers_wan_module
from drf_core.tiny import TINY_WAN_TEXT_DIM

# The Wan presets as module-name suffixes ("attention" is the first eight).
ATTENTION_FFN = [
    *(f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")),
    "ffn.net.0.proj",
    "ffn.net.2",
]
RANK, ALPHA = 4, 8.0  # scale 2.0: a file that lost its alpha would give different outputs
CONFIG = LoRAConfig(rank=RANK, alpha=ALPHA)

TINY_I2V = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
    image_dim=32,
    added_kv_proj_dim=24,
)
# Wan2.1-T2V-1.3B's transformer config.
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


@pytest.fixture(scope="module")
def transformer_dir(tiny_models):
    return tiny_models.wan / "transformer"


def load_transformer(transformer_dir, dtype=torch.float32) -> WanTransformer3DModel:
    return WanTransformer3DModel.from_pretrained(transformer_dir, torch_dtype=dtype).eval()


def fixed_inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 16, 2, 8, 8, generator=generator).to(dtype)
    text = torch.randn(1, 7, TINY_WAN_TEXT_DIM, generator=generator).to(dtype)
    return latents, torch.tensor([500.0]), text


def run(model, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(*fixed_inputs(dtype)).sample


def trained(transformer_dir, config=CONFIG, targets=ATTENTION_FFN) -> WanTransformer3DModel:
    """A tiny transformer with a LoRA whose A and B are random (as after training, not a no-op)."""
    model = load_transformer(transformer_dir)
    add_lora(model, config, targets)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def converter_module(native: str, param_names) -> set[str]:
    """What diffusers' Wan checkpoint converter calls the weights of original layer `native`."""
    checkpoint = {f"{native}.{p}": torch.zeros(1) for p in param_names}
    return set(convert_wan_transformer_to_diffusers(checkpoint))


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiny_t2v", "tiny_i2v", "wan2.1_1.3b"])
def test_native_names_are_the_ones_diffusers_converter_reads(kind, transformer_dir):
    if kind == "tiny_t2v":
        model = load_transformer(transformer_dir)
    else:
        with torch.device("meta"):
            model = WanTransformer3DModel(**(TINY_I2V if kind == "tiny_i2v" else WAN_1_3B))
    checked = 0
    for name, module in model.named_modules():
        # Modulation tables (`scale_shift_table`) are parameters of the root and the blocks, not layers.
        params = [p for p, _ in module.named_parameters(recurse=False) if p != "scale_shift_table"]
        if not params:
            continue
        native = diffusers_to_native_wan_module(name)
        assert converter_module(native, params) == {f"{name}.{p}" for p in params}, name
        assert native_to_diffusers_wan_module(native) == name
        checked += 1
    assert checked >= (300 if kind == "wan2.1_1.3b" else 20)
    assert diffusers_to_native_wan_module("norm_out") == "head.norm"  # no weights; round trip only
    assert native_to_diffusers_wan_module("head.norm") == "norm_out"


@pytest.mark.parametrize(
    ("mapping", "name"),
    [
        (diffusers_to_native_wan_module, "blocks.0.attn1.to_qkv"),
        (diffusers_to_native_wan_module, "transformer_blocks.0.attn1.to_q"),
        (diffusers_to_native_wan_module, "blocks.0.self_attn.q"),
        (native_to_diffusers_wan_module, "double_blocks.0.img_attn.qkv"),
        (native_to_diffusers_wan_module, "blocks.0.attn1.to_q"),
    ],
)
def test_unknown_module_names_raise_naming_them(mapping, name):
    with pytest.raises(DRFInputError, match=re.escape(repr(name))):
        mapping(name)


# --- injection -----------------------------------------------------------------------------------


def test_add_lora_on_bf16_model_trains_only_fp32_lora_weights(transformer_dir):
    model = load_transformer(transformer_dir, torch.bfloat16)
    base_output = run(model, torch.bfloat16)
    base_dtypes = {name: p.dtype for name, p in model.named_parameters()}  # diffusers keeps a few in fp32
    params = add_lora(model, CONFIG, ATTENTION_FFN)

    layers = [name for name, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(layers) == 2 * len(ATTENTION_FFN) and len(params) == 2 * len(layers)
    assert {p.dtype for p in params} == {torch.float32}
    base_after = {
        name.replace(".base_layer", ""): p.dtype for name, p in model.named_parameters() if "lora_" not in name
    }
    assert base_after == base_dtypes and torch.bfloat16 in base_after.values()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} == {id(p) for p in lora_parameters(model)}
    # B starts at zero: the fresh LoRA changes nothing, and the output keeps the base dtype.
    output = run(model, torch.bfloat16)
    assert output.dtype == torch.bfloat16 and torch.equal(output, base_output)

    with torch.no_grad():
        for param in params[1::2]:  # lora_B
            param.normal_()
    model(*fixed_inputs(torch.bfloat16)).sample.float().square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.dtype == torch.float32, name
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_add_lora_errors(transformer_dir):
    model = load_transformer(transformer_dir)
    with pytest.raises(DRFInputError, match="no layer of the model matches"):
        add_lora(model, CONFIG, ["to_qkv"])
    with pytest.raises(DRFInputError, match="not Linear/Conv"):
        add_lora(model, CONFIG, ["attn1"])
    add_lora(model, CONFIG, ["attn1.to_q"])
    with pytest.raises(DRFInputError, match="already has a LoRA adapter named 'drf'"):
        add_lora(model, CONFIG, ["attn1.to_q"])


def test_lora_state_dict_uses_plain_module_names(transformer_dir):
    model = trained(transformer_dir)
    state = lora_state_dict(model)
    expected = {
        f"blocks.{i}.{target}.lora_{part}.weight" for i in range(2) for target in ATTENTION_FFN for part in "AB"
    }
    assert set(state) == expected
    layer = model.get_submodule("blocks.1.ffn.net.2")
    assert torch.equal(state["blocks.1.ffn.net.2.lora_B.weight"], layer.lora_B["drf"].weight)


def test_remove_lora_restores_the_base_model(transformer_dir):
    base_output = run(load_transformer(transformer_dir))
    model = trained(transformer_dir)
    assert not torch.equal(run(model), base_output)
    remove_lora(model)
    assert not has_lora(model)
    assert torch.equal(run(model), base_output)


# --- export --------------------------------------------------------------------------------------


def save(model, tmp_path, fmt, **kwargs):
    return save_lora(tmp_path / f"{fmt}.safetensors", model, CONFIG, fmt, diffusers_to_native_wan_module, **kwargs)


@pytest.mark.parametrize("fmt", ["diffusers", "comfyui"])
def test_export_loads_in_diffusers_wan_pipeline_exactly(fmt, transformer_dir, tiny_models, tmp_path):
    """Diffusers reads both files (for "comfyui" through its own original-name converter)."""
    model = trained(transformer_dir)
    path = save(model, tmp_path, fmt)
    pipe = WanPipeline.from_pretrained(tiny_models.wan, local_files_only=True)
    pipe.load_lora_weights(str(path))
    # Same fp32 arithmetic in the same order, so the outputs are bit-identical.
    assert torch.equal(run(pipe.transformer.eval()), run(model))


def test_diffusers_file_layout_and_header(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    path = save(model, tmp_path, "diffusers")
    tensors = safetensors.torch.load_file(str(path))
    assert set(tensors) == {f"transformer.{key}" for key in lora_state_dict(model)}
    with safetensors.safe_open(str(path), "pt") as handle:
        header = handle.metadata()
    assert DIFFUSERS_ADAPTER_METADATA_KEY == LORA_ADAPTER_METADATA_KEY
    adapter = json.loads(header[LORA_ADAPTER_METADATA_KEY])
    assert adapter["transformer.r"] == RANK and adapter["transformer.lora_alpha"] == ALPHA


@pytest.mark.parametrize("kind", ["tiny", "wan2.1_1.3b"])
def test_comfyui_export_names_original_wan_layers(kind, transformer_dir):
    if kind == "tiny":
        model = trained(transformer_dir)
    else:
        with torch.device("meta"):
            model = WanTransformer3DModel(**WAN_1_3B)
        add_lora(model, LoRAConfig(rank=32, alpha=16.0), ATTENTION_FFN)
    modules = lora_module_weights(model)
    keys = LORA_FORMATS.get("comfyui").tensors(modules, diffusers_to_native_wan_module)

    key_form = re.compile(r"^diffusion_model\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$")
    bases: dict[str, set[str]] = {}
    for key in keys:
        match = key_form.match(key)
        assert match, key
        bases.setdefault(match.group(1), set()).add(match.group(2))
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert len(layers) == len(ATTENTION_FFN) * (2 if kind == "tiny" else 30)
    assert len(bases) == len(layers) and all(len(parts) == 3 for parts in bases.values())
    trained_by_converter = set()
    for native, _ in bases.items():
        (weight_key,) = converter_module(native, ["weight"])
        module = weight_key.removesuffix(".weight")
        trained_by_converter.add(module)
        layer = layers[module]
        for part in "AB":
            exported = keys[f"diffusion_model.{native}.lora_{part}.weight"]
            weight = getattr(layer, f"lora_{part}")["drf"].weight
            assert exported.shape == weight.shape
            assert kind != "tiny" or torch.equal(exported, weight)
        alpha = keys[f"diffusion_model.{native}.alpha"]
        assert alpha.dim() == 0 and alpha.dtype == torch.float32
        assert alpha.item() / layer.r["drf"] == layer.scaling["drf"]  # ComfyUI's scale == peft's
    assert trained_by_converter == set(layers)


# --- loading back --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_loading_back_reproduces_the_trained_model(fmt, transformer_dir, tmp_path):
    model = trained(transformer_dir)
    lora = read_lora_file(save(model, tmp_path, fmt), native_to_diffusers_wan_module, family="wan")
    assert lora.key_layout == fmt and (lora.rank, lora.alpha) == (RANK, ALPHA)
    assert set(lora.target_modules) == set(lora_module_weights(model))

    preview = load_transformer(transformer_dir)
    assert apply_lora(preview, lora) == []
    assert not any(p.requires_grad for p in preview.parameters())
    assert torch.equal(run(preview), run(model))

    resumed = load_transformer(transformer_dir)
    params = apply_lora(resumed, lora, trainable=True)
    assert {id(p) for p in params} == {id(p) for p in resumed.parameters() if p.requires_grad}
    assert {p.dtype for p in params} == {torch.float32}
    saved, restored = lora_state_dict(model), lora_state_dict(resumed)
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    assert torch.equal(run(resumed), run(model))


def test_other_key_spellings_read_to_the_same_layers(transformer_dir, tmp_path):
    """ComfyUI's loader also takes lora_down/lora_up, lora_A.default and kohya `lora_unet_` names."""
    model = trained(transformer_dir)
    comfy = safetensors.torch.load_file(str(save(model, tmp_path, "comfyui")))
    diffusers = safetensors.torch.load_file(str(save(model, tmp_path, "diffusers")))
    reference = read_lora_file(tmp_path / "comfyui.safetensors", native_to_diffusers_wan_module).modules

    variants = {
        "down_up": {k.replace("lora_A", "lora_down").replace("lora_B", "lora_up"): v for k, v in comfy.items()},
        "default": {k.replace(".weight", ".default.weight"): v for k, v in comfy.items()},
        "peft": {k.removeprefix("transformer."): v for k, v in diffusers.items()},
    }
    kohya_keys = {}
    for key, value in comfy.items():
        native, part = re.match(r"diffusion_model\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$", key).groups()
        part = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(part, part)
        kohya_keys[f"lora_unet_{native.replace('.', '_')}.{part}"] = value
    variants["kohya"] = kohya_keys
    for name, tensors in variants.items():
        safetensors.torch.save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        modules = read_lora_file(tmp_path / f"{name}.safetensors", native_to_diffusers_wan_module).modules
        assert modules.keys() == reference.keys(), name
        for module, weights in modules.items():
            assert torch.equal(weights.down, reference[module].down), (name, module)
            assert torch.equal(weights.up, reference[module].up), (name, module)
            # The peft file has no alpha anywhere: scale 1.0 (alpha = rank), as diffusers and ComfyUI read it.
            assert weights.alpha == (RANK if name == "peft" else ALPHA), (name, module)


def test_mixed_ranks_apply_per_layer_and_export_again(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    tensors = safetensors.torch.load_file(str(save(model, tmp_path, "comfyui")))
    generator = torch.Generator().manual_seed(3)
    odd = "diffusion_model.blocks.1.cross_attn.o"
    tensors[f"{odd}.lora_A.weight"] = torch.randn(2, 128, generator=generator)
    tensors[f"{odd}.lora_B.weight"] = torch.randn(128, 2, generator=generator)
    tensors[f"{odd}.alpha"] = torch.tensor(3.0)
    safetensors.torch.save_file(tensors, str(tmp_path / "mixed.safetensors"))
    lora = read_lora_file(tmp_path / "mixed.safetensors", native_to_diffusers_wan_module)

    mixed = load_transformer(transformer_dir)
    apply_lora(mixed, lora)
    layer = mixed.get_submodule("blocks.1.attn2.to_out.0")
    assert (layer.r["drf"], layer.scaling["drf"]) == (2, 1.5)
    assert mixed.get_submodule("blocks.0.attn2.to_out.0").scaling["drf"] == ALPHA / RANK
    # Reference: the same deltas merged into the base weights by hand.
    merged = load_transformer(transformer_dir)
    with torch.no_grad():
        for name, weights in lora.modules.items():
            merged.get_submodule(name).weight += weights.scale * (weights.up @ weights.down)
    torch.testing.assert_close(run(mixed), run(merged), rtol=1e-5, atol=1e-5)

    again = LORA_FORMATS.get("comfyui").tensors(lora_module_weights(mixed), diffusers_to_native_wan_module)
    assert again[f"{odd}.alpha"].item() == 3.0 and again[f"{odd}.lora_A.weight"].shape == (2, 128)


def test_strength_scales_the_lora(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    lora = read_lora_file(save(model, tmp_path, "comfyui"), native_to_diffusers_wan_module)
    off = load_transformer(transformer_dir)
    apply_lora(off, lora, strength=0.0)
    assert torch.equal(run(off), run(load_transformer(transformer_dir)))
    half = load_transformer(transformer_dir)
    apply_lora(half, lora, strength=0.5)
    assert half.get_submodule("blocks.0.attn1.to_q").scaling["drf"] == 0.5 * ALPHA / RANK
    with pytest.raises(DRFInputError, match=r"strength 1\.0"):
        apply_lora(load_transformer(transformer_dir), lora, strength=0.5, trainable=True)


def test_fractional_alpha_survives_the_float32_alpha_tensor(transformer_dir, tmp_path):
    config = LoRAConfig(rank=3, alpha=0.1)  # 0.1 is not a float32 value
    model = trained(transformer_dir, config, ["attn1.to_q", "ffn.net.2"])
    path = save_lora(tmp_path / "a.safetensors", model, config, "comfyui", diffusers_to_native_wan_module)
    preview = load_transformer(transformer_dir)
    apply_lora(preview, read_lora_file(path, native_to_diffusers_wan_module))
    assert preview.get_submodule("blocks.0.attn1.to_q").scaling["drf"] == 0.1 / 3
    assert torch.equal(run(preview), run(model))


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_preview_adapter_beside_a_training_adapter(transformer_dir, tmp_path):
    """A second, frozen adapter becomes the active one; switching back restores the trained adapter."""
    model = trained(transformer_dir)
    trained_output = run(model)
    lora = read_lora_file(save(model, tmp_path, "comfyui"), native_to_diffusers_wan_module)
    lora.modules = {name: w for name, w in lora.modules.items() if "attn1" in name}
    apply_lora(model, lora, adapter_name="preview")
    assert not any(p.requires_grad for p in lora_parameters(model, "preview"))
    assert not torch.equal(run(model), trained_output)  # only "preview" (a subset of the layers) is active
    model.set_adapter("drf")
    training = lora_parameters(model)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in training}
    assert torch.equal(run(model), trained_output)


def test_metadata_round_trip(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    questions = {"aspects": [{"name": "TA", "questions": ["Is there a red apple?"]}]}
    metadata = {
        "base_model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "family": "wan",
        "training_steps": 120,
        "questions": questions,
        "prompts": ["a red apple on a wooden table"],
        "target_preset": "attention_ffn",
        "rank": "999",  # save_lora's own value wins
    }
    lora = read_lora_file(save(model, tmp_path, "comfyui", metadata=metadata), native_to_diffusers_wan_module)
    header = lora.metadata
    assert all(isinstance(value, str) for value in header.values())
    assert header["format"] == "pt" and header["lora_format"] == "comfyui"
    assert (header["rank"], header["alpha"]) == ("4", "8.0")
    assert header["base_model"] == metadata["base_model"] and header["family"] == "wan"
    assert json.loads(header["training_steps"]) == 120
    assert json.loads(header["questions"]) == questions
    assert json.loads(header["prompts"]) == metadata["prompts"]
    assert header["target_preset"] == "attention_ffn" and header["drf_version"] == __version__
    assert json.loads(header["target_modules"]) == sorted(lora_module_weights(model))
    with pytest.raises(DRFInputError, match="'wan' model family, not 'ltx_video'"):
        read_lora_file(lora.path, native_to_diffusers_wan_module, family="ltx_video")


def test_bf16_storage_keeps_alpha_fp32(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    path = save(model, tmp_path, "comfyui", dtype="bf16")
    tensors = safetensors.torch.load_file(str(path))
    assert {t.dtype for k, t in tensors.items() if "lora_" in k} == {torch.bfloat16}
    assert {t.dtype for k, t in tensors.items() if k.endswith(".alpha")} == {torch.float32}
    resumed = load_transformer(transformer_dir)
    apply_lora(resumed, read_lora_file(path, native_to_diffusers_wan_module), trainable=True)
    for key, value in lora_state_dict(resumed).items():
        assert value.dtype == torch.float32
        assert torch.equal(value, lora_state_dict(model)[key].to(torch.bfloat16).float())


def test_failed_write_leaves_no_file(transformer_dir, tmp_path, monkeypatch):
    model = trained(transformer_dir)
    target = tmp_path / "out" / "lora.safetensors"
    target.parent.mkdir()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_lora(target, model, CONFIG, "comfyui", diffusers_to_native_wan_module)
    assert list(target.parent.iterdir()) == []
    target.write_bytes(b"previous")  # an earlier file under the name survives a failed overwrite
    with pytest.raises(OSError, match="disk full"):
        save_lora(target, model, CONFIG, "comfyui", diffusers_to_native_wan_module)
    assert list(target.parent.iterdir()) == [target] and target.read_bytes() == b"previous"


# --- bad inputs ----------------------------------------------------------------------------------


def write(path, tensors):
    safetensors.torch.save_file(tensors, str(path))
    return path


def test_bad_files_give_clear_errors(tmp_path):
    read = lambda path: read_lora_file(path, native_to_diffusers_wan_module)  # noqa: E731
    with pytest.raises(DRFInputError, match="does not exist"):
        read(tmp_path / "missing.safetensors")
    with pytest.raises(DRFInputError, match="is a folder"):
        read(tmp_path)
    (tmp_path / "notes.safetensors").write_text("these are my notes, not a LoRA")
    with pytest.raises(DRFInputError, match="not a readable safetensors file"):
        read(tmp_path / "notes.safetensors")
    with pytest.raises(DRFInputError, match="holds no LoRA weights"):
        read(write(tmp_path / "model.safetensors", {"blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}))
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 8)}
    flux["diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight"] = torch.zeros(24, 4)
    with pytest.raises(DRFInputError, match="another model family"):
        read(write(tmp_path / "flux.safetensors", flux))
    dora = {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24)}
    dora |= {"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4)}
    with pytest.raises(DRFInputError, match=r"cannot apply.*dora_scale"):
        read(
            write(tmp_path / "dora.safetensors", dora | {"transformer.blocks.0.attn1.to_q.dora_scale": torch.ones(24)})
        )
    with pytest.raises(DRFInputError, match="lacks its lora_A"):
        read(
            write(tmp_path / "half.safetensors", {"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4)})
        )
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 8)}
    kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] = torch.zeros(24, 4)
    with pytest.raises(DRFInputError, match="lora_unet_double_blocks_0_img_attn_qkv' names no layer"):
        read(write(tmp_path / "kohya_flux.safetensors", kohya))
    mixed = dora | {"diffusion_model.blocks.0.self_attn.k.lora_A.weight": torch.zeros(4, 24)}
    mixed |= {"diffusion_model.blocks.0.self_attn.k.lora_B.weight": torch.zeros(24, 4)}
    with pytest.raises(DRFInputError, match="mixes LoRA key layouts"):
        read(write(tmp_path / "mixed.safetensors", mixed))


def test_lora_that_does_not_fit_the_model_is_refused(transformer_dir, tmp_path):
    read = lambda tensors, name: read_lora_file(write(tmp_path / name, tensors), native_to_diffusers_wan_module)  # noqa: E731
    deep = {"transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 24)}
    deep["transformer.blocks.7.attn1.to_q.lora_B.weight"] = torch.zeros(24, 4)
    with pytest.raises(DRFInputError, match=r"layer\(s\) this model does not have.*blocks\.7\.attn1\.to_q"):
        apply_lora(load_transformer(transformer_dir), read(deep, "deep.safetensors"))
    wide = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 1536)}
    wide["diffusion_model.blocks.0.self_attn.q.lora_B.weight"] = torch.zeros(1536, 4)
    model = load_transformer(transformer_dir)
    with pytest.raises(DRFInputError, match=r"does not fit this model.*another model size"):
        apply_lora(model, read(wide, "wide.safetensors"))
    assert not has_lora(model)  # refused before anything was injected


def test_comfyui_file_holds_only_lora_tensors_on_the_cpu(transformer_dir, tmp_path):
    model = trained(transformer_dir)
    tensors = safetensors.torch.load_file(str(save(model, tmp_path, "comfyui")))
    assert len(tensors) == 3 * len(lora_module_weights(model))  # lora_A, lora_B, alpha per layer; no base weights
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight", ".alpha")) for key in tensors)

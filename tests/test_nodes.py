"""The nodes without ComfyUI: their schemas, and each node's behaviour on tiny models.

Runs the same `run` functions ComfyUI's generated V3 classes call (`nodes/_comfy.py`), through
the local host (`nodes/local.py`). The real-ComfyUI side is `test_comfyui_nodes.py`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import NODE_PROMPT
from tests.conftest import run_node as run

PACK_NAME = "comfyui_diffusiondrf"  # conftest.import_pack imports the repository under this name

SMALL_VIDEO = {"width": 32, "height": 32, "num_frames": 5}
SMALL_TRAIN = {
    **SMALL_VIDEO,
    "num_inference_steps": 2,
    "truncated_backprop_steps": 1,
    "lora_rank": 4,
    "lora_alpha": 4.0,
    "learning_rate": 3e-2,
    "checkpoint_interval": 0,
}
PROMPT = NODE_PROMPT


def pack_module(name: str):
    return importlib.import_module(f"{PACK_NAME}.{name}")


# --- schemas ------------------------------------------------------------------------------------


def test_every_schema_is_complete_and_consistent(pack_nodes, local, root):
    spec_module = pack_module("nodes.spec")
    folders = local.LocalFolders(root)
    known_types = {*spec_module.WIDGET_TYPES, *spec_module.CORE_SOCKET_TYPES, *spec_module.CUSTOM_TYPES}
    ids = [node.SPEC.node_id for node in pack_nodes.NODES]
    assert len(ids) == len(set(ids)) and len(ids) >= 13
    for node in pack_nodes.NODES:
        spec = node.SPEC
        assert spec.node_id.startswith("DRF"), spec.node_id
        assert spec.category.startswith("DiffusionDRF/"), spec.node_id
        assert len(spec.description) > 40, spec.node_id
        assert spec.display_name, spec.node_id
        names = [i.name for i in spec.inputs]
        assert len(names) == len(set(names)), spec.node_id
        assert len({o.name for o in spec.outputs}) == len(spec.outputs), spec.node_id
        assert not {o.name for o in spec.outputs} & set(names), f"{spec.node_id}: ComfyUI needs distinct ids"
        for item in spec.inputs:
            where = f"{spec.node_id}.{item.name}"
            assert item.tooltip and len(item.tooltip) > 10, where
            assert item.type in known_types, where
            if item.type in ("INT", "FLOAT"):
                assert item.min is not None and item.max is not None and item.min <= item.default <= item.max, where
                assert isinstance(item.default, int if item.type == "INT" else float), where
            if item.type == "BOOLEAN":
                assert isinstance(item.default, bool), where
            if item.type == "STRING":
                assert isinstance(item.default, str), where
            if item.type == "COMBO":
                options = item.option_list(folders)
                assert options or item.name == "lora_name", f"{where} lists nothing (the tiny models are in place)"
                assert item.default is None or item.default in options, where
            assert not item.control_after_generate or (item.type == "INT" and item.name == "seed"), where
        for output in spec.outputs:
            assert output.type in known_types and output.tooltip, f"{spec.node_id} -> {output.name}"


def test_model_combos_list_model_folders_only(pack_nodes, local, root):
    (root / "models" / "diffusers" / "not_a_model").mkdir()
    (root / "models" / "vlm" / "nested" / "Qwen-copy").mkdir(parents=True)
    (root / "models" / "vlm" / "nested" / "Qwen-copy" / "config.json").write_text("{}")
    folders = local.LocalFolders(root)
    video = pack_nodes.NODES_BY_ID["DRFLoadVideoModel"].SPEC.input("model").option_list(folders)
    critic = pack_nodes.NODES_BY_ID["DRFLoadVLMCritic"].SPEC.input("model").option_list(folders)
    assert video == ["Wan2.1-T2V-1.3B-Diffusers"]
    assert critic == ["Qwen2.5-VL-7B-Instruct", "nested/Qwen-copy"]  # models/LLM and models/vlm merged


# --- inputs that are text -----------------------------------------------------------------------


def test_video_model_from_comfyui_says_it_needs_comfyui(pack_nodes, local, ctx):
    """Its spec lives with the others, but only ComfyUI can run it; elsewhere the error says so."""
    errors = pack_module("drf_core.errors")
    spec = pack_nodes.NODES_BY_ID["DRFVideoModelFromComfy"].SPEC
    sockets = [i.type for i in spec.inputs if not i.is_widget]
    assert sockets == ["MODEL", "VAE", "CLIP", "CONDITIONING", "CONDITIONING", "MODEL"]  # the last: A14B low-noise
    assert spec.input("sampler_name").default == "uni_pc" and spec.input("scheduler").default == "simple"
    assert spec.input("trained_expert").default == "low_noise" and spec.input("low_noise_from").default == 0.5
    with pytest.raises(errors.DRFInputError, match="only inside ComfyUI"):
        run(pack_nodes, local, ctx, "DRFVideoModelFromComfy", model=object(), vae=object(), clip=object())
    for name, value in (("sampler_name", "dpmpp_2m"), ("scheduler", "no_such"), ("trained_expert", "all_of_them")):
        with pytest.raises(errors.DRFInputError, match=f"unknown .*{value}"):  # its own combos, checked first
            run(pack_nodes, local, ctx, "DRFVideoModelFromComfy", model=object(), vae=object(), **{name: value})


def test_aspect_weights_parse_and_reject_bad_text(pack_nodes):
    parse = pack_module("nodes.spec").parse_weights
    errors = pack_module("drf_core.errors")
    assert parse("TA=0.5, PHY=0.25\nVQ = 1", "w") == {"TA": 0.5, "PHY": 0.25, "VQ": 1.0}
    assert parse("  ", "w") == {}
    for bad, message in [
        ("TA", "NAME=weight"),
        ("TA=-1", "NAME=weight"),
        ("TA=x", "NAME=weight"),
        ("TA=1,TA=2", "twice"),
    ]:
        with pytest.raises(errors.DRFInputError, match=message):
            parse(bad, "w")


def test_decompose_gives_one_set_per_prompt_line_with_its_weights(pack_nodes, local, ctx):
    result = run(
        pack_nodes,
        local,
        ctx,
        "DRFDecomposePrompt",
        prompts=f"{PROMPT}\n\n  a blue kite flies  \n",
        aspect_weights="TA=2, VQ=1",
    )
    sets, text = result.outputs
    assert [qs.prompt for qs in sets] == [PROMPT, "a blue kite flies"]
    assert all([a.name for a in qs.aspects] == ["TA", "VQ"] and qs.aspects[0].weight == 2.0 for qs in sets)
    round_trip = pack_module("nodes.prompts").parse_questions_json(text)
    assert [qs.to_dict() for qs in round_trip] == [qs.to_dict() for qs in sets]


def test_questions_from_json_round_trip_and_located_errors(pack_nodes, local, ctx):
    errors = pack_module("drf_core.errors")
    sets, text = run(pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=PROMPT).outputs
    assert text.lstrip().startswith("{")  # one prompt -> one object, as the engine's files
    (back,) = run(pack_nodes, local, ctx, "DRFQuestionsFromJSON", questions_json=text).outputs
    assert back[0].to_dict() == sets[0].to_dict()
    with pytest.raises(errors.DRFInputError, match="line 1, column"):
        run(pack_nodes, local, ctx, "DRFQuestionsFromJSON", questions_json='{"prompt": ')
    with pytest.raises(errors.DRFInputError, match="set 2"):
        run(pack_nodes, local, ctx, "DRFQuestionsFromJSON", questions_json=f"[{text}, {{}}]")
    with pytest.raises(errors.DRFInputError, match="more than one set"):
        run(pack_nodes, local, ctx, "DRFQuestionsFromJSON", questions_json=f"[{text}, {text}]")
    with pytest.raises(errors.DRFInputError, match="empty"):
        run(pack_nodes, local, ctx, "DRFQuestionsFromJSON", questions_json="  ")


def test_loaders_name_the_folder_and_the_fix(pack_nodes, local, ctx, root):
    errors = pack_module("drf_core.errors")
    with pytest.raises(errors.DRFInputError, match=r"not in .*models/diffusers"):
        run(pack_nodes, local, ctx, "DRFLoadVideoModel", model="Wan2.2-missing", dtype="auto", device="cpu")
    with pytest.raises(errors.DRFInputError, match="inside"):
        run(
            pack_nodes,
            local,
            ctx,
            "DRFLoadVideoModel",
            model="../LLM/Qwen2.5-VL-7B-Instruct",
            dtype="auto",
            device="cpu",
        )
    (root / "models" / "diffusers" / "empty").mkdir()
    with pytest.raises(errors.ModelFolderError, match=r"model_index\.json"):
        run(pack_nodes, local, ctx, "DRFLoadVideoModel", model="empty", dtype="auto", device="cpu")
    # ComfyUI 0.3.64 does not check a V3 combo's value against its list: the loaders refuse bad choices themselves.
    with pytest.raises(errors.DRFInputError, match="no diffusers model chosen"):
        run(pack_nodes, local, ctx, "DRFLoadVideoModel", model="", dtype="auto", device="cpu")
    with pytest.raises(errors.DRFInputError, match=r"chosen by its name \(text\), got 7"):
        run(pack_nodes, local, ctx, "DRFLoadVideoModel", model=7, dtype="auto", device="cpu")
    for bad in ({"dtype": "fp8"}, {"device": "tpu"}):
        settings = {"dtype": "fp32", "device": "cpu", **bad}
        with pytest.raises(errors.DRFInputError, match=f"unknown {next(iter(bad))} '{next(iter(bad.values()))}'"):
            run(pack_nodes, local, ctx, "DRFLoadVLMCritic", model="Qwen2.5-VL-7B-Instruct", **settings)
    with pytest.raises(errors.DRFInputError, match="scheduler: 'euler_a' is not one of default, "):
        run(pack_nodes, local, ctx, "DRFTrainingOptions", scheduler="euler_a")
    # A video model's parts in the critic's folder: refused by the critic loader itself, before any loading.
    wan = root / "models" / "diffusers" / "Wan2.1-T2V-1.3B-Diffusers"
    (root / "models" / "LLM" / "wan_parts").symlink_to(wan.resolve(), target_is_directory=True)
    with pytest.raises(errors.ModelFolderError, match=r"diffusers component \(WanTransformer3DModel\)"):
        run(pack_nodes, local, ctx, "DRFLoadVLMCritic", model="wan_parts/transformer", dtype="auto", device="cpu")
    with pytest.raises(errors.ModelFolderError, match="'umt5', which is not a supported critic"):
        run(pack_nodes, local, ctx, "DRFLoadVLMCritic", model="wan_parts/text_encoder", dtype="auto", device="cpu")


def test_model_folders_without_their_weights_say_download_again(pack_nodes, local, ctx, root):
    errors = pack_module("drf_core.errors")
    wan = (root / "models" / "diffusers" / "Wan2.1-T2V-1.3B-Diffusers").resolve()
    broken = root / "models" / "diffusers" / "no_weights"
    broken.mkdir()
    for child in wan.iterdir():
        if child.name != "transformer":
            (broken / child.name).symlink_to(child)
    (broken / "transformer").mkdir()
    (broken / "transformer" / "config.json").symlink_to(wan / "transformer" / "config.json")
    video = run(pack_nodes, local, ctx, "DRFLoadVideoModel", model="no_weights", dtype="fp32", device="cpu")
    with pytest.raises(errors.ModelFolderError, match=r"no_weights cannot be loaded .*download the whole model folder"):
        video.outputs[0].get()
    qwen = (root / "models" / "LLM" / "Qwen2.5-VL-7B-Instruct").resolve()
    (root / "models" / "LLM" / "qwen_no_weights").mkdir()
    for child in qwen.iterdir():
        if child.suffix != ".safetensors":
            (root / "models" / "LLM" / "qwen_no_weights" / child.name).symlink_to(child)
    critic = run(pack_nodes, local, ctx, "DRFLoadVLMCritic", model="qwen_no_weights", dtype="fp32", device="cpu")
    with pytest.raises(errors.ModelFolderError, match=r"qwen_no_weights cannot be loaded .*download the whole model"):
        critic.outputs[0].get()


def test_load_lora_refuses_a_lora_of_another_model_family(pack_nodes, local, ctx, root):
    errors = pack_module("drf_core.errors")
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # an SDXL UNet layer
    down, up = torch.zeros(4, 640), torch.zeros(640, 4)
    kohya = "lora_unet_" + layer.replace(".", "_")
    loras = root / "models" / "loras"
    save_file({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up}, str(loras / "sdxl_kohya.safetensors"))
    save_file({f"unet.{layer}.lora_A.weight": down, f"unet.{layer}.lora_B.weight": up}, str(loras / "sdxl.safetensors"))
    save_file(
        {f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up},
        str(loras / "x.safetensors"),
        {"family": "sdxl"},
    )
    with pytest.raises(errors.DRFInputError, match="unknown model family 'sdxl'"):
        run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name="x.safetensors", family="sdxl")
    for name in ("sdxl_kohya.safetensors", "sdxl.safetensors"):  # Flux is known, and refuses them too
        with pytest.raises(errors.DRFInputError, match=f"{name}.*made for another model family"):
            run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=name, family="flux")
    for name in ("sdxl_kohya.safetensors", "sdxl.safetensors"):
        with pytest.raises(errors.DRFInputError, match=f"{name}.*made for another model family"):
            run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=name)
    with pytest.raises(
        errors.DRFInputError, match=r"x\.safetensors is a LoRA for sdxl models.*ComfyUI's own LoRA loader"
    ):
        run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name="x.safetensors")


# --- the model cache ----------------------------------------------------------------------------


def test_model_cache_loads_once_releases_and_reloads(pack_nodes, loaded):
    cache_module = pack_module("nodes.model_cache")
    cache = cache_module.MODEL_CACHE
    handle = loaded["critic"]
    first = handle.get()
    loads = cache.loads
    assert handle.get() is first and cache.loads == loads  # reused, not reloaded
    same = cache_module.ModelHandle(handle.kind, handle.path, handle.dtype, handle.device)
    assert same.get() is first  # equal handles (a re-run of the loader node) share the model
    assert cache.release(torch.device("cuda")) == []  # nothing of ours on a GPU
    assert handle in cache.release("cpu")
    assert handle not in cache.loaded()
    again = handle.get()
    assert again is not first and cache.loads == loads + 1
    other = cache_module.ModelHandle(handle.kind, handle.path, "bf16", "cpu")
    assert other.get().model.dtype == torch.bfloat16
    assert cache.loaded().count(other) == 1 and handle not in cache.loaded()  # one model per kind
    cache.release(kind="critic")


def test_loaders_pass_critic_quantization_and_video_weight_storage(pack_nodes, local, ctx):
    bnb = pytest.importorskip("bitsandbytes")
    errors = pack_module("drf_core.errors")
    cache = pack_module("nodes.model_cache").MODEL_CACHE
    critic = run(
        pack_nodes,
        local,
        ctx,
        "DRFLoadVLMCritic",
        model="Qwen2.5-VL-7B-Instruct",
        dtype="fp32",
        device="cpu",
        quantization="int8",
    ).outputs[0]
    video = run(
        pack_nodes,
        local,
        ctx,
        "DRFLoadVideoModel",
        model="Wan2.1-T2V-1.3B-Diffusers",
        dtype="fp32",
        device="cpu",
        weight_storage="fp8_e4m3fn",
    ).outputs[0]
    assert critic.options == (("quantization", "int8"),) and "quantization int8" in str(critic)
    try:
        assert critic.get().quantization == "int8"
        assert isinstance(critic.get().model.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
        assert video.get().weight_storage == "fp8_e4m3fn"
        assert video.get().transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    finally:
        cache.release(kind="critic")
        cache.release(kind="video_model")
    for node_id, name, value, message in (
        ("DRFLoadVLMCritic", "quantization", "int2", "unknown mode 'int2'"),
        ("DRFLoadVideoModel", "weight_storage", "fp4", "unknown video weight storage 'fp4'"),
    ):
        model = "Qwen2.5-VL-7B-Instruct" if node_id == "DRFLoadVLMCritic" else "Wan2.1-T2V-1.3B-Diffusers"
        with pytest.raises(errors.DRFInputError, match=message):
            run(pack_nodes, local, ctx, node_id, model=model, dtype="fp32", device="cpu", **{name: value})


# --- LoRA files ---------------------------------------------------------------------------------


@pytest.fixture()
def trained(pack_nodes, local, ctx, loaded):
    return run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, seed=3, run_name="fixture", **loaded, **SMALL_TRAIN)


def test_save_lora_counts_up_never_overwrites_and_stays_in_loras(pack_nodes, local, ctx, root, trained):
    errors = pack_module("drf_core.errors")
    lora = trained.outputs[0]
    names = [
        run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=lora, filename_prefix="drf/style").outputs[0] for _ in range(2)
    ]
    assert names == ["drf/style_00001.safetensors", "drf/style_00002.safetensors"]
    state = load_file(root / "models" / "loras" / names[0])
    assert state and all(key.startswith("diffusion_model.blocks.") for key in state)
    for bad in ("../escape", "/tmp/abs", ""):
        with pytest.raises(errors.DRFInputError):
            run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=lora, filename_prefix=bad)
    assert not list(root.glob("models/*.safetensors")) and not list(root.glob("*.safetensors"))
    combo = pack_nodes.NODES_BY_ID["DRFLoadLoRA"].SPEC.input("lora_name").option_list(ctx.folders)
    assert combo == names


def test_save_lora_counter_ignores_case_and_takes_windows_separators(pack_nodes, local, ctx, root, trained):
    """On Windows and macOS `Case/Style_00003` and `case/style_00003` are one file: never overwrite it."""
    loras = root / "models" / "loras"
    (loras / "Case").mkdir(parents=True, exist_ok=True)
    taken = loras / "Case" / "STYLE_00003.safetensors"
    taken.write_bytes(b"someone else's LoRA")
    (name,) = run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=trained.outputs[0], filename_prefix="Case\\STYLE").outputs
    assert name == "Case/STYLE_00004.safetensors"
    (name,) = run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=trained.outputs[0], filename_prefix="Case/style").outputs
    assert name == "Case/style_00005.safetensors"
    assert taken.read_bytes() == b"someone else's LoRA"


def test_load_lora_returns_the_saved_weights(pack_nodes, local, ctx, trained):
    lora = trained.outputs[0]
    (name,) = run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=lora, filename_prefix="x").outputs
    (loaded_back,) = run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=name, family="wan").outputs
    assert loaded_back.family == "wan"
    assert loaded_back.weights.modules.keys() == lora.weights.modules.keys()
    for module, weights in lora.weights.modules.items():
        back = loaded_back.weights.modules[module]
        assert torch.equal(back.down, weights.down) and torch.equal(back.up, weights.up), module
        assert back.alpha == weights.alpha


def test_a_lora_on_both_a14b_experts_saves_as_a_pair_and_loads_back_whole(pack_nodes, local, ctx, root, trained):
    """Two files under one counter, each naming its partner; Load LoRA of either gives both; a lost partner
    leaves that expert's file, and a mixed-up pair is refused."""
    experts = pack_module("nodes.wan_experts")
    errors = pack_module("drf_core.errors")
    lora = trained.outputs[0]
    low = dataclasses.replace(lora.weights, metadata={**lora.weights.metadata, "drf_wan_expert": "low_noise"})
    high_modules = {n: dataclasses.replace(w, up=w.up * 2.0) for n, w in lora.weights.modules.items()}
    high = dataclasses.replace(low, modules=high_modules, metadata={**low.metadata, "drf_wan_expert": "high_noise"})
    joined = experts.join_experts({"high_noise": high, "low_noise": low})
    assert experts.split_experts(joined)["high_noise"].modules == high_modules
    loras = root / "models" / "loras"
    (loras / "pair").mkdir(parents=True, exist_ok=True)
    (loras / "pair" / "a14b_high_noise_00004.safetensors").write_bytes(b"an older file")
    wire = dataclasses.replace(lora, weights=joined)
    (names,) = run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=wire, filename_prefix="pair/a14b").outputs
    low_name, high_name = "pair/a14b_low_noise_00005.safetensors", "pair/a14b_high_noise_00005.safetensors"
    assert names.split("\n") == [low_name, high_name]  # one counter for the pair, past the highest taken
    for name in (low_name, high_name):
        (back,) = run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=name, family="wan").outputs
        assert back.weights.metadata["drf_wan_expert"] == "both"
        assert back.weights.modules.keys() == joined.modules.keys()
        for module, weights in joined.modules.items():
            assert torch.equal(back.weights.modules[module].up, weights.up), module
    (loras / high_name).rename(loras / "pair" / "renamed.safetensors")
    (alone,) = run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=low_name, family="wan").outputs
    assert alone.weights.metadata["drf_wan_expert"] == "low_noise"
    assert alone.weights.modules.keys() == low.modules.keys()
    (loras / "pair" / "renamed.safetensors").rename(loras / high_name)
    (names,) = run(pack_nodes, local, ctx, "DRFSaveLoRA", lora=wire, filename_prefix="pair/a14b").outputs
    (loras / names.split("\n")[1]).replace(loras / high_name)  # the high-noise file of another pair
    with pytest.raises(errors.DRFInputError, match="renamed or mixed up"):
        run(pack_nodes, local, ctx, "DRFLoadLoRA", lora_name=low_name, family="wan")


# --- training -----------------------------------------------------------------------------------


def lora_tensors(wire) -> dict[str, torch.Tensor]:
    return {f"{m}.{part}": getattr(w, part) for m, w in wire.weights.modules.items() for part in ("down", "up")}


def test_train_shows_progress_previews_and_aspect_text(pack_nodes, local, ctx, loaded):
    result = run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=2, seed=1, run_name="progress", **loaded, **SMALL_TRAIN)
    lora, curve, preview, metrics = result.outputs
    assert [row["step"] for row in metrics] == [1, 2]
    assert [(v, t) for v, t, _ in ctx.progress_calls] == [(0, 2), (1, 2), (2, 2)]
    assert all(image is not None and image.size == (32, 32) for _, _, image in ctx.progress_calls[1:])
    aspects = [a.name for a in loaded["questions"][0].aspects]
    assert all(f"  {name} " in ctx.texts[-1] for name in aspects) and ctx.texts[-1].startswith("step 2/2")
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    assert preview.shape == (1, 32, 32, 3) and float(preview.min()) >= 0 and float(preview.max()) <= 1
    assert any(p.animated for p in result.previews) and "finished 2/2" in result.text
    assert lora.weights.rank == 4 and lora.family == "wan"
    assert not pack_module("drf_core.lora").has_lora(loaded["video_model"].get().denoiser, "drf")  # adapter removed


def test_interrupt_saves_a_checkpoint_and_resume_continues_exactly(pack_nodes, local, ctx, loaded):
    straight = run(
        pack_nodes, local, ctx, "DRFTrainLoRA", steps=3, seed=5, run_name="straight", **loaded, **SMALL_TRAIN
    )

    stopping = local.LocalContext(ctx.folders, interrupt_after=lambda c: c.progress_calls[-1][0] >= 1)
    with pytest.raises(local.Interrupted):
        run(pack_nodes, local, stopping, "DRFTrainLoRA", steps=3, seed=5, run_name="split", **loaded, **SMALL_TRAIN)
    run_dir = ctx.folders.output_dir() / "drf_runs" / "split"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000001"]

    resumed = run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=3, seed=5, run_name="split", **loaded, **SMALL_TRAIN)
    assert [row["step"] for row in resumed.outputs[3]] == [1, 2, 3]
    assert [r["reward"] for r in resumed.outputs[3]] == [r["reward"] for r in straight.outputs[3]]
    expected, got = lora_tensors(straight.outputs[0]), lora_tensors(resumed.outputs[0])
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_off_starts_over_in_a_new_folder_and_keeps_the_first_run(pack_nodes, local, ctx, root, loaded):
    first = run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, seed=2, run_name="again", **loaded, **SMALL_TRAIN)
    runs = root / "output" / "drf_runs"
    kept = {p: p.read_bytes() for p in (runs / "again").rglob("*") if p.is_file()}
    again = run(
        pack_nodes, local, ctx, "DRFTrainLoRA", steps=2, seed=2, run_name="again", resume=False, **loaded, **SMALL_TRAIN
    )
    assert [row["step"] for row in again.outputs[3]] == [1, 2]
    assert again.outputs[3][0]["reward"] == first.outputs[3][0]["reward"]  # started over: same first step
    assert {p: p.read_bytes() for p in (runs / "again").rglob("*") if p.is_file()} == kept
    assert [json.loads(line)["step"] for line in (runs / "again_2" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
    assert "again already holds a run and resume is off" in again.text and "set run_name to again_2" in again.text
    errors = pack_module("drf_core.errors")
    with pytest.raises(errors.DRFInputError, match="run_name is empty"):
        run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, run_name="  ", **loaded, **SMALL_TRAIN)


def test_initial_lora_continues_from_the_file_weights(pack_nodes, local, ctx, loaded, trained):
    start = trained.outputs[0]
    settings = {**SMALL_TRAIN, "lora_rank": 8, "learning_rate": 1e-6}
    result = run(
        pack_nodes,
        local,
        ctx,
        "DRFTrainLoRA",
        steps=1,
        seed=4,
        run_name="cont",
        initial_lora=start,
        **loaded,
        **settings,
    )
    continued = result.outputs[0]
    assert continued.weights.rank == start.weights.rank == 4  # the file's rank, not lora_rank
    before, after = lora_tensors(start), lora_tensors(continued)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "one optimizer step should move the weights"
    assert all(torch.allclose(before[k], after[k], atol=1e-4) for k in before)  # moved from there, by lr 1e-6


def test_train_rejects_bad_settings_before_loading(pack_nodes, local, ctx, loaded):
    errors = pack_module("drf_core.errors")
    bad = {**SMALL_TRAIN, "truncated_backprop_steps": 5, "num_inference_steps": 2}
    with pytest.raises(errors.DRFInputError, match="truncated_backprop_steps"):
        run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, run_name="bad", **loaded, **bad)
    with pytest.raises(errors.DRFInputError, match="inside"):
        run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, run_name="../../x", **loaded, **SMALL_TRAIN)


# --- sampling and critique ----------------------------------------------------------------------


def test_sample_video_same_seed_same_noise_and_lora_strength(pack_nodes, local, ctx, loaded, trained):
    common = {"video_model": loaded["video_model"], "prompt": PROMPT, "steps": 2, "seed": 11, **SMALL_VIDEO}
    (base,) = run(pack_nodes, local, ctx, "DRFSampleVideo", **common).outputs
    (zero,) = run(
        pack_nodes, local, ctx, "DRFSampleVideo", lora=trained.outputs[0], lora_strength=0.0, **common
    ).outputs
    (full,) = run(pack_nodes, local, ctx, "DRFSampleVideo", lora=trained.outputs[0], **common).outputs
    assert base.shape == (5, 32, 32, 3)
    assert torch.equal(base, zero)
    assert not torch.equal(base, full)
    (again,) = run(pack_nodes, local, ctx, "DRFSampleVideo", **common).outputs
    assert torch.equal(base, again)  # the preview adapter is gone afterwards


def test_sample_video_honours_interrupt(pack_nodes, local, ctx, loaded):
    stopping = local.LocalContext(ctx.folders, interrupt_after=lambda c: True)
    with pytest.raises(local.Interrupted):
        run(pack_nodes, local, stopping, "DRFSampleVideo", video_model=loaded["video_model"], steps=3, **SMALL_VIDEO)
    assert len(stopping.progress_calls) == 1


def test_compare_side_by_side_labels_and_keeps_inputs(pack_nodes, local, ctx):
    left, right = torch.rand(3, 16, 20, 3), torch.rand(3, 16, 12, 4)
    kept = left.clone(), right.clone()
    (both,) = run(pack_nodes, local, ctx, "DRFCompareSideBySide", left=left, right=right, left_label="").outputs
    assert both.shape == (3, 16, 20 + 4 + 12, 3)
    assert torch.allclose(both[:, :, :20], left, atol=1 / 255)  # no label drawn on the left
    assert torch.equal(left, kept[0]) and torch.equal(right, kept[1])
    errors = pack_module("drf_core.errors")
    with pytest.raises(errors.DRFInputError, match="frame count and height"):
        run(pack_nodes, local, ctx, "DRFCompareSideBySide", left=left, right=torch.rand(2, 16, 12, 3))


def test_critique_report_chart_heatmaps_and_reward(pack_nodes, local, ctx, loaded):
    frames = torch.rand(5, 32, 32, 3)
    result = run(
        pack_nodes, local, ctx, "DRFCritiqueVideo", critic=loaded["critic"], frames=frames,
        questions=loaded["questions"], reward=loaded["reward"], max_new_tokens=4,
    )  # fmt: skip
    report, chart, heatmaps, reward = result.outputs
    questions = loaded["questions"][0]
    assert all(f"## {aspect.name}" in report for aspect in questions.aspects)
    assert all(q.question in report for _, q in questions.iter_yes_no())
    assert chart.ndim == 4 and chart.shape[-1] == 3
    n = len(questions.aspects)
    assert heatmaps.shape == (1, 32, 32 * n + 4 * (n - 1), 3)  # frame_count=1 (reward settings), aspects side by side
    assert math.isfinite(reward) and reward < 0
    engine = pack_module("drf_core.api")
    settings = loaded["reward"]
    video = frames.permute(0, 3, 1, 2)
    picked = pack_module("drf_core.frames").select_frames(
        settings.decode.frame_selection, video.shape[0], settings.decode.frame_selection_count
    )
    drf_reward = pack_module("drf_core.reward").DRFReward(
        loaded["critic"].get(), settings.reward, settings.critic_input.for_frames(picked)
    )
    direct = engine.critique(drf_reward, video[picked], questions)
    assert reward == pytest.approx(direct.total, abs=1e-6)


def test_critique_needs_one_question_set(pack_nodes, local, ctx, loaded):
    errors = pack_module("drf_core.errors")
    two = loaded["questions"] * 2
    with pytest.raises(errors.DRFInputError, match="one prompt's questions"):
        run(
            pack_nodes,
            local,
            ctx,
            "DRFCritiqueVideo",
            critic=loaded["critic"],
            frames=torch.rand(1, 32, 32, 3),
            questions=two,
        )


def test_image_inputs_are_converted_and_checked(pack_nodes):
    spec = pack_module("nodes.spec")
    errors = pack_module("drf_core.errors")
    gray = torch.rand(2, 8, 8, 1)
    frames = spec.engine_frames(gray)
    assert frames.shape == (2, 3, 8, 8) and torch.equal(frames[:, 1], gray[..., 0])
    rgba = torch.rand(2, 8, 8, 4)
    assert torch.equal(spec.engine_frames(rgba), rgba[..., :3].permute(0, 3, 1, 2))
    with pytest.raises(errors.DRFInputError, match="IMAGE batch"):
        spec.engine_frames(torch.rand(8, 8, 3))
    assert torch.equal(spec.comfy_image(frames), gray.expand(-1, -1, -1, 3))


def test_reward_curves_plot(pack_nodes, local, ctx):
    metrics = [{"step": s, "reward": -2 + 0.1 * s, "reward_per_aspect": {"TA": -1.0 + s}} for s in range(1, 5)]
    (plot,) = run(pack_nodes, local, ctx, "DRFRewardCurves", metrics=metrics).outputs
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and float(plot.std()) > 0


def test_decompose_with_the_critic_as_language_model(pack_nodes, local, ctx, loaded, monkeypatch):
    errors = pack_module("drf_core.errors")
    with pytest.raises(errors.DRFInputError, match="needs a language model"):
        run(pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=PROMPT, method="llm")
    critic = loaded["critic"].get()
    asked = []
    question = {"question": "Is there a red ball?", "expected": "yes"}
    reply = json.dumps({"prompt": PROMPT, "aspects": [{"name": "TA", "weight": 1.0, "yes_no": [question]}]})
    monkeypatch.setattr(critic, "chat", lambda prompt, system=None, max_new_tokens=512: asked.append(prompt) or reply)
    result = run(
        pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=PROMPT, method="llm", aspect_weights="TA=1",
        critic=loaded["critic"], max_new_tokens=64,
    )  # fmt: skip
    sets, _ = result.outputs
    assert len(asked) == 1 and PROMPT in asked[0]  # the connected critic wrote the questions
    questions = [q.question for _, q in sets[0].iter_yes_no()]
    assert questions[0] == "Is there a red ball?"  # the model's, then the rules' about what it left out
    assert "Is there grass?" in questions and all("grass" in q for q in questions[1:])
    assert result.text.startswith(f"{PROMPT!r}: questions by llm; repaired: ")
    assert "do not cover grass" in result.text

    monkeypatch.setattr(critic, "chat", lambda prompt, system=None, max_new_tokens=512: "no JSON here")
    result = run(pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=PROMPT, method="llm", critic=loaded["critic"])
    rules = pack_module("drf_core.decompose").decompose(PROMPT)
    assert result.outputs[0][0] == rules  # the rules' questions, and the node says why
    assert "questions by rules: the language model's reply was not used (no JSON object in the reply)" in result.text


def test_releasing_the_text_encoder_reloads_the_model_for_new_prompts(pack_nodes, local, ctx, loaded):
    cache = pack_module("nodes.model_cache").MODEL_CACHE
    (options,) = run(pack_nodes, local, ctx, "DRFTrainingOptions", release_text_encoder=True).outputs
    handle = loaded["video_model"]
    trained_with = handle.get()
    run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, run_name="release", options=options, **loaded, **SMALL_TRAIN)
    assert trained_with.text_encoder is None  # freed during training, as asked
    assert handle not in cache.loaded()  # so the cache let go of the crippled model
    (frames,) = run(
        pack_nodes, local, ctx, "DRFSampleVideo", video_model=handle, prompt="a prompt never encoded", steps=2,
        **SMALL_VIDEO,
    ).outputs  # fmt: skip
    assert frames.shape == (5, 32, 32, 3) and handle.get().text_encoder is not None

"""The pack inside a real ComfyUI (set COMFYUI_DIR; skipped otherwise — CI has no ComfyUI).

One headless ComfyUI server on loopback, with only this pack in its `custom_nodes`, tiny models
under the real models' names in its model folders. Checks `/object_info` and `/workflow_templates`,
queues every example workflow (API format, shrunk sizes; the Wan 2.2 ones in tests/test_workflows.py),
checks that core `LoraLoaderModelOnly` applies the saved LoRA exactly and without "lora key not
loaded", and interrupts a training run and resumes it. The server and prompt helpers are shared
with the other real-ComfyUI modules (`tests/comfy_pack.py`, the `server` fixture in conftest.py).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.comfy_pack import (
    EXTRA_CRITIC,
    PACK_FOLDER,
    REPO_ROOT,
    TINY_UNET,
    TRAIN_WORKFLOW,
    WORKFLOWS,
    api_prompt,
    drf_node,
    run_ok,
    shrink,
)
from tests.comfy_server import history_error

pytestmark = pytest.mark.comfyui

WAKE_UP_PROMPT = {  # a core prompt that needs no model
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def comfyui_version(comfy_dir: Path) -> str:
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (comfy_dir / "comfyui_version.py").read_text())
    return found.group(1) if found else "unknown"


def test_nodes_are_built_with_the_newest_versioned_v3_api(server, pack_nodes):
    """0.3.64 has comfy_api.v0_0_2 (and latest); a newer ComfyUI may have a newer versioned one."""
    log = server.log_text()
    used = re.search(r"DiffusionDRF nodes use ComfyUI's (comfy_api\.\w+)", log)
    assert used, server.log_tail()
    if comfyui_version(server.comfy_dir) == "0.3.64":
        assert used.group(1) == "comfy_api.v0_0_2"
    assert f"DiffusionDRF: {len(pack_nodes.NODES)} nodes built with ComfyUI's {used.group(1)}" in log
    assert "DiffusionDRF: this ComfyUI has no" not in log  # every guarded ComfyUI function is present


def test_every_node_is_served_with_its_schema(server, pack_nodes):
    info = server.object_info()
    assert "IMPORT FAILED" not in server.log_text()
    for node in pack_nodes.NODES:
        spec = node.SPEC
        served = info.get(spec.node_id)
        assert served is not None, f"{spec.node_id} missing from /object_info\n{server.log_tail()}"
        assert served["category"] == spec.category and served["description"] == spec.description
        assert served["display_name"] == spec.display_name
        assert served["output_node"] == spec.is_output_node
        listed = {**served["input"]["required"], **served["input"].get("optional", {})}
        assert set(listed) == {i.name for i in spec.inputs}, spec.node_id
        for item in spec.inputs:
            options = listed[item.name][1] if len(listed[item.name]) > 1 else {}
            assert options.get("tooltip") == item.tooltip, f"{spec.node_id}.{item.name}"
            if item.type in ("INT", "FLOAT"):
                assert (options["min"], options["max"], options["default"]) == (item.min, item.max, item.default)
            # the editor adds a "control after generate" widget value only where the schema asks for it
            assert options.get("control_after_generate", False) == item.control_after_generate, item.name
            if item.type == "STRING":
                assert options.get("multiline", False) == item.multiline, item.name
        assert served["output"] == [o.type for o in spec.outputs]
        assert served["output_name"] == [o.name for o in spec.outputs]
        assert served["output_tooltips"] == [o.tooltip for o in spec.outputs]
    video_models = info["DRFLoadVideoModel"]["input"]["required"]["model"]
    critics = info["DRFLoadVLMCritic"]["input"]["required"]["model"]
    assert "Wan2.1-T2V-1.3B-Diffusers" in json.dumps(video_models)
    assert "Qwen2.5-VL-7B-Instruct" in json.dumps(critics)  # from models/LLM, merged into the vlm kind
    assert EXTRA_CRITIC in json.dumps(critics)  # extra_model_paths.yaml's vlm folder is kept


def test_workflows_are_in_the_template_browser(server):
    templates = server.workflow_templates()
    assert sorted(templates.get(PACK_FOLDER, [])) == sorted(p.stem for p in WORKFLOWS), templates
    for path in WORKFLOWS:  # the browser loads each workflow, and its same-name .jpg as the picture
        base = f"{server.url}/api/workflow_templates/{PACK_FOLDER}/{path.stem}"
        with urllib.request.urlopen(f"{base}.json") as answer:
            assert json.loads(answer.read()) == json.loads(path.read_text())
        with urllib.request.urlopen(f"{base}.jpg") as answer:
            assert answer.read(3) == b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def trained_lora(server, pack_nodes) -> str:
    """Queue the main workflow; return the LoRA name Save LoRA wrote."""
    before = set((server.models_dir / "loras").rglob("*.safetensors"))
    entry = run_ok(server, shrink(api_prompt(TRAIN_WORKFLOW, pack_nodes), run_name="comfy_train"))
    new = set((server.models_dir / "loras").rglob("*.safetensors")) - before
    assert len(new) == 1, new
    texts = json.dumps(entry["outputs"])
    name = new.pop().relative_to(server.models_dir / "loras").as_posix()
    assert name in texts  # Save LoRA's text shows the name
    return name


def test_train_workflow_saves_a_lora_with_previews(server, trained_lora):
    assert trained_lora.endswith("_00001.safetensors")
    keys = load_file(server.models_dir / "loras" / trained_lora).keys()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    previews = list(server.temp_dir.glob("drf_preview_*"))
    assert any(p.suffix == ".png" for p in previews)  # the reward curve


# tests/test_workflows.py queues these on their own server, with the Wan 2.2 checks (minutes of CPU VAE work each).
RUN_IN_TEST_WORKFLOWS = ("drf_wan22_ti2v_5b_finetune", "drf_wan22_a14b_finetune")


@pytest.mark.parametrize(
    "path", [p for p in WORKFLOWS if p != TRAIN_WORKFLOW and p.stem not in RUN_IN_TEST_WORKFLOWS], ids=lambda p: p.stem
)
def test_each_workflow_runs(server, pack_nodes, trained_lora, path):
    prompt = api_prompt(path, pack_nodes)
    for node in prompt.values():  # the compare workflow loads a LoRA by name: use the one just trained
        if node["class_type"] == "DRFLoadLoRA":
            node["inputs"]["lora_name"] = trained_lora
    entry = run_ok(server, shrink(prompt, run_name=f"comfy_{path.stem}"))
    shown = entry["outputs"]
    images = [image for output in shown.values() for image in output.get("images", [])]
    assert images, f"{path.name} showed no preview"
    for image in images:
        assert (server.temp_dir / image["subfolder"] / image["filename"]).is_file()


def test_core_node_specs_the_workflows_use_match_this_comfyui(server, pack_nodes):
    """nodes/core_specs.py against /object_info: input names and order, types, defaults, ranges, combo values."""
    import importlib

    core = importlib.import_module(f"{pack_nodes.__name__}.core_specs").CORE_SPECS
    for node_id, spec in core.items():
        info = server.object_info(node_id)
        served = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = [*info["input_order"].get("required", []), *info["input_order"].get("optional", [])]
        assert [item.name for item in spec.inputs] == [name for name in order if name in served], node_id
        assert [o.type for o in spec.outputs] == info["output"], node_id
        for item in spec.inputs:
            kind, options = served[item.name][0], served[item.name][1] if len(served[item.name]) > 1 else {}
            assert item.optional == (item.name in info["input"].get("optional", {})), (node_id, item.name)
            if item.type == "COMBO":
                choices = kind if isinstance(kind, list) else options.get("options", [])
                if not callable(item.options):
                    assert set(item.options) <= set(choices), (node_id, item.name, choices)
                if item.default is not None:  # ComfyUI's default: the one it names, else the first choice
                    assert options.get("default", choices[0] if choices else None) == item.default, (node_id, item.name)
                continue
            assert kind == item.type, (node_id, item.name, kind)
            if item.is_widget and "default" in options:
                assert options["default"] == item.default, (node_id, item.name, options)
                for bound in ("min", "max"):
                    if getattr(item, bound) is not None:
                        assert options.get(bound) == getattr(item, bound), (node_id, item.name, bound, options)
                assert bool(options.get("control_after_generate")) == item.control_after_generate or (
                    node_id == "KSampler" and item.name == "seed"
                ), (node_id, item.name)


def test_a_lora_trained_on_core_loaders_samples_the_same_in_core_ksampler(server, pack_nodes):
    """Single-prompt workflow (core loaders) -> Save LoRA; then core LoraLoaderModelOnly + KSampler + VAEDecode
    equals Sample Video with that LoRA, pixel for pixel (PNG), and differs from the base model's KSampler video.

    Two steps on tiny random models move the video by less than one 8-bit level at strength 1, so the LoRA is
    trained at the largest learning rate without warm-up and applied at strength 4 (the same on both sides)."""
    import numpy as np
    from PIL import Image

    workflow = REPO_ROOT / "workflows" / "drf_single_prompt_finetune.json"
    train_prompt = shrink(api_prompt(workflow, pack_nodes), run_name="core_round_trip", learning_rate=0.1)
    options = next(n for n in train_prompt.values() if n["class_type"] == "DRFTrainingOptions")["inputs"]
    options.update(warmup_steps=0, keep_best=False)  # two steps: no warm-up, and keep the last LoRA, not step 0's
    strength = 4.0
    before = set((server.models_dir / "loras").rglob("*.safetensors"))
    run_ok(server, train_prompt)
    (lora_path,) = set((server.models_dir / "loras").rglob("*.safetensors")) - before
    lora_name = lora_path.relative_to(server.models_dir / "loras").as_posix()
    sampler = next(n for n in train_prompt.values() if n["class_type"] == "DRFSampleVideo")["inputs"]
    text, seed, steps, cfg = sampler["prompt"], 11, 2, 5.0

    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    prompt = {
        "unet": node("UNETLoader", unet_name=TINY_UNET, weight_dtype="default"),
        "shift": node("ModelSamplingSD3", model=["unet", 0], shift=8.0),
        "clip": node("CLIPLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default"),
        "vae": node("VAELoader", vae_name="wan_2.1_vae.safetensors"),
        "lora": node("LoraLoaderModelOnly", model=["shift", 0], lora_name=lora_name, strength_model=strength),
        "pos": node("CLIPTextEncode", text=text, clip=["clip", 0]),
        "neg": node("CLIPTextEncode", text="", clip=["clip", 0]),
        "latent": node("EmptyHunyuanLatentVideo", width=32, height=32, length=5, batch_size=1),
        "video": drf_node(pack_nodes, "DRFVideoModelFromComfy", model=["shift", 0], clip=["clip", 0], vae=["vae", 0]),
        "drf_lora": drf_node(pack_nodes, "DRFLoadLoRA", lora_name=lora_name, family="wan"),
        "drf": drf_node(pack_nodes, "DRFSampleVideo", video_model=["video", 0], lora=["drf_lora", 0], prompt=text,
                        negative_prompt="", width=32, height=32, num_frames=5, steps=steps, guidance_scale=cfg,
                        seed=seed, lora_strength=strength),
        "save_drf": node("SaveImage", images=["drf", 0], filename_prefix="drf_rt/drf"),
    }  # fmt: skip
    for label, model in (("core", "lora"), ("base", "shift")):
        prompt[f"ks_{label}"] = node("KSampler", model=[model, 0], seed=seed, steps=steps, cfg=cfg,
                                     sampler_name="uni_pc", scheduler="simple", positive=["pos", 0],
                                     negative=["neg", 0], latent_image=["latent", 0], denoise=1.0)  # fmt: skip
        prompt[f"dec_{label}"] = node("VAEDecode", samples=[f"ks_{label}", 0], vae=["vae", 0])
        prompt[f"save_{label}"] = node("SaveImage", images=[f"dec_{label}", 0], filename_prefix=f"drf_rt/{label}")
    run_ok(server, prompt)

    def frames(label: str) -> list:
        files = sorted((server.output_dir / "drf_rt").glob(f"{label}_*.png"))
        assert len(files) == 5, files
        return [torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()) for f in files]

    drf, core, base = frames("drf"), frames("core"), frames("base")
    assert all(torch.equal(a, b) for a, b in zip(drf, core, strict=True)), "Sample Video + LoRA != KSampler + LoRA"
    assert any(not torch.equal(a, b) for a, b in zip(core, base, strict=True)), "the LoRA changes no pixel"
    assert "lora key not loaded" not in server.log_text()


def test_core_lora_loader_applies_the_saved_lora_exactly(server, trained_lora):
    """UNETLoader -> LoraLoaderModelOnly -> ModelSave: the saved weights are base + scale * up @ down."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_UNET, "weight_dtype": "default"}},
        "2": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["1", 0], "lora_name": trained_lora, "strength_model": 1.0},
        },
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "drf_check/patched"}},
    }
    log_before = len(server.log_text())
    run_ok(server, prompt)
    assert "lora key not loaded" not in server.log_text()[log_before:]
    (saved,) = (server.output_dir / "drf_check").glob("patched*.safetensors")
    patched = load_file(saved)
    base = load_file(server.models_dir / "diffusion_models" / TINY_UNET)
    lora = load_file(server.models_dir / "loras" / trained_lora)
    modules = sorted(k[: -len(".alpha")] for k in lora if k.endswith(".alpha"))
    assert modules
    checked = 0
    for module in modules:
        native = module[len("diffusion_model.") :]
        down, up = lora[f"{module}.lora_A.weight"], lora[f"{module}.lora_B.weight"]
        scale = float(lora[f"{module}.alpha"]) / down.shape[0]
        expected = base[f"{native}.weight"] + scale * (up @ down)
        got = patched[f"model.diffusion_model.{native}.weight"]
        assert torch.allclose(got, expected, atol=1e-6), native
        checked += 1
    assert checked == len(modules)
    untouched = "blocks.0.norm3.weight"
    if untouched in base:
        assert torch.equal(patched[f"model.diffusion_model.{untouched}"], base[untouched])


def test_interrupt_keeps_a_checkpoint_and_queueing_again_resumes(server, pack_nodes):
    steps = 40
    run_name = "comfy_interrupt"
    prompt = shrink(api_prompt(TRAIN_WORKFLOW, pack_nodes), steps=steps, run_name=run_name)
    for node in prompt.values():
        if node["class_type"] == "DRFTrainLoRA":
            node["inputs"]["num_inference_steps"] = 2
    metrics = server.output_dir / "drf_runs" / run_name / "metrics.jsonl"
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline, server.log_tail()
        assert server.history(prompt_id) is None, "training finished before it could be interrupted"
        time.sleep(0.2)
    server.interrupt()
    entry = server.wait(prompt_id, timeout=300)
    status = json.dumps(entry.get("status", {}))
    assert "interrupted" in status.lower(), status
    checkpoints = sorted(p.name for p in (metrics.parent / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].split("_")[1])
    assert 2 <= stopped_at < steps

    run_ok(server, prompt)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert f"resumed from {metrics.parent / 'checkpoints' / checkpoints[0]}" in server.log_text()


def test_models_are_reused_across_runs_and_unloaded_by_comfyuis_free(server, pack_nodes):
    prompt = shrink(api_prompt(REPO_ROOT / "workflows" / "drf_critique_video.json", pack_nodes))
    sampler = next(node for node in prompt.values() if node["class_type"] == "DRFSampleVideo")

    def loads() -> int:
        return server.log_text().count("loading video_model ")

    run_ok(server, prompt)
    loaded = loads()
    assert loaded >= 1
    assert "is managed by ComfyUI" in server.log_text()
    sampler["inputs"]["seed"] += 1  # a changed input, so ComfyUI runs the nodes again
    run_ok(server, prompt)
    assert loads() == loaded  # the second run reused the loaded model

    server.free(unload_models=True, free_memory=True)
    # ComfyUI's worker applies /free after its next prompt (or an idle timeout of up to 1000 s): give it one.
    run_ok(server, WAKE_UP_PROMPT)
    deadline = time.monotonic() + 60
    while not re.search(r"ComfyUI unloaded video_model [^\n]* transformer", server.log_text()):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    assert re.search(r"ComfyUI unloaded critic ", server.log_text())
    sampler["inputs"]["seed"] += 1
    run_ok(server, prompt)
    assert loads() == loaded  # ComfyUI moved it off the device and back, as it does its own models


def test_training_shows_progress_preview_frames_and_aspect_text_in_the_editor(server, pack_nodes):
    from tests.comfy_server import MessageRecorder

    steps = 3
    prompt = shrink(api_prompt(TRAIN_WORKFLOW, pack_nodes), steps=steps, run_name="comfy_messages")
    train_id = next(i for i, node in prompt.items() if node["class_type"] == "DRFTrainLoRA")
    recorder = MessageRecorder(server)
    try:
        entry = server.wait(server.queue(prompt, client_id=recorder.client_id), timeout=600)
        assert history_error(entry) is None, server.log_tail()
        time.sleep(1.0)  # the last messages may still be on their way
    finally:
        recorder.close()
    progress = [p for p in recorder.messages("progress") if p["node"] == train_id]
    assert [p["value"] for p in progress] == list(range(steps + 1)) and {p["max"] for p in progress} == {steps}
    texts = [text for node, text in recorder.node_texts() if node == train_id]
    assert any(text.startswith(f"step {steps}/{steps}") for text in texts), texts
    assert all(f"  {aspect} " in texts[-1] for aspect in ("TA", "PHY", "VQ")), texts[-1]
    previews = [payload for event, payload in recorder.binary if event in (1, 4)]
    assert len(previews) >= steps  # one scored frame per step on the progress bar
    executed = {m["node"]: m["output"] for m in recorder.messages("executed")}
    assert executed[train_id]["images"] and executed[train_id]["text"][0].startswith(f"finished {steps}/{steps}")


def test_sampled_frames_save_as_mp4_with_core_nodes_and_a_loaded_mp4_can_be_critiqued(server, pack_nodes):
    """Sample Video -> core Create Video -> Save Video; then core Load Video -> Get Video Components -> Critique."""
    prompt_text = "a red ball rolls on grass"
    save = shrink({
        "1": drf_node(pack_nodes, "DRFLoadVideoModel", model="Wan2.1-T2V-1.3B-Diffusers"),
        "2": drf_node(pack_nodes, "DRFSampleVideo", video_model=["1", 0], prompt=prompt_text, seed=1),
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "drf_clip/clip",
                                                     "format": "mp4", "codec": "h264"}},
    })  # fmt: skip
    run_ok(server, save)
    (clip,) = (server.output_dir / "drf_clip").glob("clip*.mp4")
    server.input_dir.mkdir(parents=True, exist_ok=True)
    (server.input_dir / clip.name).write_bytes(clip.read_bytes())

    critique = shrink({
        "1": {"class_type": "LoadVideo", "inputs": {"file": clip.name}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": drf_node(pack_nodes, "DRFLoadVLMCritic", model="Qwen2.5-VL-7B-Instruct"),
        "4": drf_node(pack_nodes, "DRFDecomposePrompt", prompts=prompt_text),
        "5": drf_node(pack_nodes, "DRFRewardSettings"),
        "6": drf_node(pack_nodes, "DRFCritiqueVideo", critic=["3", 0], frames=["2", 0], questions=["4", 0],
                      reward=["5", 0]),
    })  # fmt: skip
    entry = run_ok(server, critique)
    report = entry["outputs"]["6"]["text"][0]
    assert all(f"## {aspect}:" in report for aspect in ("TA", "PHY", "VQ")), report


def test_guarded_training_then_evaluate_lora(server, pack_nodes):
    """Training Options with held-out monitoring, early stop and the drift penalty; then Evaluate LoRA."""
    prompt_text = "a red ball rolls on grass"
    prompt = shrink({
        "1": drf_node(pack_nodes, "DRFLoadVideoModel", model="Wan2.1-T2V-1.3B-Diffusers"),
        "2": drf_node(pack_nodes, "DRFLoadVLMCritic", model="Qwen2.5-VL-7B-Instruct"),
        "3": drf_node(pack_nodes, "DRFDecomposePrompt", prompts=prompt_text),
        "4": drf_node(pack_nodes, "DRFRewardSettings"),
        "5": drf_node(pack_nodes, "DRFTrainingOptions", held_out_every=1, held_out_seeds="7", early_stop_patience=1,
                      early_stop_min_delta=10.0, drift_weight=1.0),
        "6": drf_node(pack_nodes, "DRFTrainLoRA", video_model=["1", 0], critic=["2", 0], questions=["3", 0],
                      reward=["4", 0], options=["5", 0], run_name="comfy_guarded", resume=False),
        "7": drf_node(pack_nodes, "DRFEvaluateLoRA", video_model=["1", 0], critic=["2", 0], questions=["3", 0],
                      lora=["6", 0], reward=["4", 0], seeds="3, 4"),
    }, steps=3)  # fmt: skip
    entry = run_ok(server, prompt)
    train_text = entry["outputs"]["6"]["text"][0]
    assert "early stop at step 1" in train_text and "the LoRA returned is step 0's" in train_text, train_text
    report = entry["outputs"]["7"]["text"][0]
    assert "# Evaluate LoRA" in report and "win rate" in report and "| TA |" in report, report
    assert entry["outputs"]["7"]["images"]

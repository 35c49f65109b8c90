"""The example workflows in workflows/: they fit the node specs, are what tools/build_workflows.py builds, convert
to the API prompts the editor would send, and run end to end on tiny models. Also: `check_workflow` reports each
kind of broken file it claims to catch.

The end-to-end runs use `nodes.local.run_prompt` (the same `run` functions ComfyUI's node classes call) on private
copies of the `comfy_root` tree, with sizes and step counts shrunk by overriding the API prompt's inputs. Core
ComfyUI nodes cannot run without ComfyUI: in workflows that load Wan (or Flux) with the core loaders, those loaders and
Video Model from ComfyUI are replaced here by Load Video Model on the same tiny Wan (diffusers folder), so everything
after the video model runs as in the file. test_comfyui_nodes.py runs the files unchanged in a real ComfyUI; the two
Wan 2.2 files run unchanged in one here (tests marked comfyui, on tiny models under the Wan 2.2 templates' file names),
which also compares their settings with the templates ComfyUI installs.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

PACK_NAME = "comfyui_diffusiondrf"  # conftest.import_pack imports the repository under this name
REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO_ROOT / "workflows"
BUILD_SCRIPT = REPO_ROOT / "tools" / "build_workflows.py"
REGENERATE = "run `python tools/build_workflows.py` and commit the workflows/ it writes"

TRAIN = "drf_train_wan_lora.json"
CRITIQUE = "drf_critique_video.json"
COMPARE = "drf_compare_base_vs_lora.json"
SINGLE = "drf_single_prompt_finetune.json"
FLUX = "drf_flux_image_finetune.json"
TI2V = "drf_wan22_ti2v_5b_finetune.json"
A14B = "drf_wan22_a14b_finetune.json"
EXAMPLES = (TRAIN, CRITIQUE, COMPARE, SINGLE, FLUX, TI2V, A14B)
WAN22 = (TI2V, A14B)  # Wan 2.2 on the files and settings of ComfyUI's own Wan 2.2 templates

SMALL_VIDEO = {"width": 32, "height": 32, "num_frames": 5}
REAL_VIDEO = {"width": 832, "height": 480, "num_frames": 33}
# Each workflow's training and sampling size when it is not REAL_VIDEO: Flux's image, the Wan 2.2 templates' latents.
VIDEO_SIZES = {
    FLUX: {"width": 1024, "height": 1024, "num_frames": 1},
    TI2V: {"width": 1280, "height": 704, "num_frames": 121},
    A14B: {"width": 640, "height": 640, "num_frames": 81},
}
FRAME_COUNT = 2
# class_type -> inputs replaced before running on the CPU (every name must exist, else the run would be full size).
SHRINK = {
    "DRFLoadVideoModel": {"dtype": "fp32", "device": "cpu"},
    "DRFLoadVLMCritic": {"dtype": "fp32", "device": "cpu"},
    "DRFRewardSettings": {"critic_width": 56, "critic_height": 56, "frame_count": FRAME_COUNT},
    "DRFTrainLoRA": {
        **SMALL_VIDEO,
        "steps": 2,
        "num_inference_steps": 2,
        "lora_rank": 4,
        "lora_alpha": 4.0,
        "learning_rate": 3e-2,  # large, so two steps change the videos visibly
    },
    "DRFSampleVideo": {**SMALL_VIDEO, "steps": 2},
    "DRFCritiqueVideo": {"max_new_tokens": 8},
    "DRFDecomposePrompt": {"max_new_tokens": 64},
    # held-out monitoring runs too; the last step's LoRA is kept, so the before/after comparison sees training
    "DRFTrainingOptions": {"held_out_every": 1, "held_out_seeds": "7", "keep_best": False},
}
# Core loaders (and the DRF node that turns their outputs into a video model): replaced for in-process runs.
COMFY_LOADERS = (
    "UNETLoader",
    "CLIPLoader",
    "DualCLIPLoader",
    "VAELoader",
    "ModelSamplingSD3",
    "DRFVideoModelFromComfy",
)
LABEL_ROWS = 13  # Compare Side by Side draws its labels in rows 0..12
GAP = 4  # white columns between the two videos
TITLE_BAR = 30  # the editor draws a node's title above its pos
FRONTEND_ONLY = ("Note", "MarkdownNote")


def pack_module(name: str):
    return importlib.import_module(f"{PACK_NAME}.{name}")


def read_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tools(pack_nodes):
    """`nodes.workflow` (WorkflowBuilder, check_workflow, ui_to_api, widget_slots)."""
    return pack_module("nodes.workflow")


@pytest.fixture(scope="module")
def local(pack_nodes):
    return pack_module("nodes.local")


@pytest.fixture(scope="module")
def specs(pack_nodes):
    """Specs of the pack's nodes and of the core nodes the workflows use."""
    core = pack_module("nodes.core_specs").CORE_SPECS
    return {**core, **{node_id: node.SPEC for node_id, node in pack_nodes.NODES_BY_ID.items()}}


@pytest.fixture(scope="module")
def build_script(pack_nodes):
    """tools/build_workflows.py as a module (it finds the pack already imported under PACK_NAME)."""
    spec = importlib.util.spec_from_file_location("drf_build_workflows", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fresh_root(comfy_root: Path, destination: Path) -> Path:
    """A private ComfyUI-like tree: the same model links, an empty loras folder, no output."""
    shutil.copytree(comfy_root / "models", destination / "models", symlinks=True)
    shutil.rmtree(destination / "models" / "loras")
    (destination / "models" / "loras").mkdir()
    return destination


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]


def ids_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, entry in prompt.items() if entry["class_type"] == class_type]


def without_core_loaders(prompt: dict) -> dict:
    """The prompt with its core Wan loaders replaced by Load Video Model (see the module docstring)."""
    prompt = copy.deepcopy(prompt)
    for node_id in [i for i, entry in prompt.items() if entry["class_type"] in COMFY_LOADERS]:
        if prompt[node_id]["class_type"] == "DRFVideoModelFromComfy":
            inputs = {"model": "Wan2.1-T2V-1.3B-Diffusers", "dtype": "auto", "device": "auto"}
            prompt[node_id] = {"class_type": "DRFLoadVideoModel", "inputs": inputs}
        else:
            del prompt[node_id]
    return prompt


def shrink(prompt: dict) -> dict:
    prompt = without_core_loaders(prompt)
    for node_id, entry in prompt.items():
        for name, value in SHRINK.get(entry["class_type"], {}).items():
            assert name in entry["inputs"], f"node {node_id} ({entry['class_type']}) has no input {name} to shrink"
            entry["inputs"][name] = value
    return prompt


def run_workflow(name, root, tools, local, pack_nodes, specs, edit=None):
    """Convert `name` to an API prompt, shrink it, apply `edit(prompt)`, run it; `(prompt, results)`."""
    prompt = shrink(tools.ui_to_api(read_workflow(name), specs))
    if edit is not None:
        edit(prompt)
    folders = local.LocalFolders(root)
    contexts: dict = {}
    results = local.run_prompt(
        prompt, pack_nodes.NODES_BY_ID, lambda node_id: contexts.setdefault(node_id, local.LocalContext(folders))
    )
    return prompt, results


def halves(frames: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right video of a Compare Side by Side output, below the label band."""
    assert frames.shape[2] == 2 * width + GAP, tuple(frames.shape)
    return frames[:, LABEL_ROWS:, :width], frames[:, LABEL_ROWS:, width + GAP :]


def base_and_lora_samplers(prompt: dict) -> tuple[str, str]:
    """The Sample Video ids wired into Compare Side by Side's left and right inputs."""
    (compare,) = ids_of(prompt, "DRFCompareSideBySide")
    inputs = prompt[compare]["inputs"]
    return inputs["left"][0], inputs["right"][0]


# --- the files ----------------------------------------------------------------------------------------------


def test_the_files_are_what_the_script_builds(build_script, specs):
    built = build_script.build_all(specs)
    assert set(built) == set(EXAMPLES)
    on_disk = {path.name for path in WORKFLOW_DIR.glob("*.json")}
    assert on_disk == set(EXAMPLES), f"workflows/ holds {sorted(on_disk)}; {REGENERATE} (and delete stale files)"
    for name, workflow in built.items():
        text = (WORKFLOW_DIR / name).read_text(encoding="utf-8")
        assert text == build_script.render(workflow), f"{name} differs from what the node specs give now; {REGENERATE}"
        assert text.endswith("}\n") and json.loads(text) == workflow


def test_the_script_check_mode_reports_stale_files(build_script, tmp_path):
    assert build_script.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(EXAMPLES)
    assert build_script.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / COMPARE).write_text((tmp_path / COMPARE).read_text().replace('"fixed"', '"randomize"'))
    assert build_script.main(["--check", "--out", str(tmp_path)]) == 1
    assert build_script.stale_files(tmp_path, build_script.build_all()) == [COMPARE]


@pytest.mark.parametrize("name", EXAMPLES)
def test_workflow_fits_the_node_specs(name, tools, specs, local, comfy_root):
    workflow = read_workflow(name)
    assert workflow["version"] == 0.4
    assert tools.check_workflow(workflow, specs, local.LocalFolders(comfy_root)) == []
    folders = local.LocalFolders(comfy_root)
    for node in workflow["nodes"]:
        if node["type"] in ("DRFLoadVideoModel", "DRFLoadVLMCritic"):
            model = node["widgets_values"][0]
            assert model in ("Wan2.1-T2V-1.3B-Diffusers", "Qwen2.5-VL-7B-Instruct")
            assert model in specs[node["type"]].input("model").option_list(folders), f"{model} is not listed"
        if node["type"] in FRONTEND_ONLY:
            continue
        for (_item, is_control), value in zip(
            tools.widget_slots(specs[node["type"]]), node["widgets_values"], strict=True
        ):
            if is_control:
                assert value == "fixed", f"{name}: the seed of node {node['id']} must stay fixed (resume, compare)"


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_workflow_has_a_template_browser_picture(name):
    """ComfyUI's template browser shows `<name>.jpg` beside `<name>.json` (tools/readme_screenshot.py --thumbnails)."""
    from PIL import Image

    with Image.open(WORKFLOW_DIR / name.replace(".json", ".jpg")) as picture:
        assert picture.format == "JPEG" and picture.size == (800, 450)


@pytest.mark.parametrize("name", EXAMPLES)
def test_layout_is_tidy_and_explained(name):
    workflow = read_workflow(name)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    boxes = {
        node_id: (n["pos"][0], n["pos"][1] - TITLE_BAR, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for node_id, n in nodes.items()
    }
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{name}: nodes {a} and {b} overlap"
    for link_id, source, _slot, target, _target_slot, _type in workflow["links"]:
        assert boxes[source][2] < boxes[target][0], f"{name}: link {link_id} runs right to left"
    (note,) = nodes_of(workflow, "MarkdownNote")
    text = note["widgets_values"][0]
    lines = [line for line in text.splitlines() if line.strip()]
    assert 3 <= len(lines) <= 8, f"{name}: the note has {len(lines)} lines"
    if nodes_of(workflow, "DRFLoadVideoModel"):
        assert "Wan2.1-T2V-1.3B-Diffusers" in text and "models/diffusers" in text
    else:  # every file a core loader names, and where it goes
        text_encoders = nodes_of(workflow, "CLIPLoader") + nodes_of(workflow, "DualCLIPLoader")
        files = [nodes_of(workflow, "UNETLoader")[0]["widgets_values"][0]]
        files += [value for node in text_encoders for value in node["widgets_values"] if value.endswith(".safetensors")]
        for file in files:
            assert f"`{file}`" in text, (name, file)
        if name != COMPARE:
            assert "models/diffusion_models" in text and "models/text_encoders" in text, name
        assert f"`{nodes_of(workflow, 'VAELoader')[0]['widgets_values'][0]}`" in text
    if nodes_of(workflow, "DRFLoadVLMCritic"):
        assert "Qwen2.5-VL-7B-Instruct" in text and "models/vlm" in text and "models/LLM" in text
    if nodes_of(workflow, "DRFTrainLoRA"):
        assert "Interrupt" in text and "queue again" in text
    assert boxes[note["id"]][0] == min(box[0] for box in boxes.values()), "the note sits in the first column"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_node_runs_in_comfyui(name, specs):
    """ComfyUI executes only output nodes and what feeds them: each node must be one or feed one."""
    workflow = read_workflow(name)
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY}
    feeds = {node_id: set() for node_id in nodes}
    for _link_id, source, _slot, target, _target_slot, _type in workflow["links"]:
        feeds[target].add(source)
    executed = set()
    pending = [node_id for node_id, n in nodes.items() if specs[n["type"]].is_output_node]
    assert pending, f"{name} has no output node: ComfyUI refuses it ('Prompt has no outputs')"
    while pending:
        node_id = pending.pop()
        if node_id not in executed:
            executed.add(node_id)
            pending.extend(feeds[node_id])
    idle = sorted(f"{i} ({nodes[i]['type']})" for i in set(nodes) - executed)
    assert not idle, f"{name}: ComfyUI would never run {idle}"


def test_prompts_and_seeds_agree_where_they_must():
    for name in (CRITIQUE, SINGLE, TI2V):
        workflow = read_workflow(name)
        (decompose,) = nodes_of(workflow, "DRFDecomposePrompt")
        prompts = [line for line in decompose["widgets_values"][0].splitlines() if line.strip()]
        assert len(prompts) == 1
        for sampler in nodes_of(workflow, "DRFSampleVideo"):
            assert sampler["widgets_values"][0] == prompts[0], (
                f"{name}: Sample Video's prompt is not the decomposed one"
            )
    for name in (COMPARE, SINGLE, TI2V):
        base, tuned = nodes_of(read_workflow(name), "DRFSampleVideo")
        assert base["widgets_values"] == tuned["widgets_values"], (
            f"{name}: the two samplers must differ by the LoRA only"
        )
        assert base["inputs"][-1]["name"] == "lora" and base["inputs"][-1]["link"] is None
        assert tuned["inputs"][-1]["name"] == "lora" and tuned["inputs"][-1]["link"] is not None
    (decompose,) = nodes_of(read_workflow(TRAIN), "DRFDecomposePrompt")
    assert len(decompose["widgets_values"][0].splitlines()) >= 2, "the main workflow trains on a few prompts"


def widgets_by_name(node: dict, specs, tools) -> dict:
    return {
        item.name: value
        for (item, is_control), value in zip(
            tools.widget_slots(specs[node["type"]]), node["widgets_values"], strict=True
        )
        if not is_control
    }


def test_settings_are_for_a_real_gpu(tools, specs):
    for name in EXAMPLES:
        video = VIDEO_SIZES.get(name, REAL_VIDEO)
        workflow = read_workflow(name)
        for node in nodes_of(workflow, "DRFTrainLoRA"):
            widgets = widgets_by_name(node, specs, tools)
            assert {k: widgets[k] for k in video} == video, name
            assert 200 <= widgets["steps"] <= 500 and widgets["checkpoint_interval"] == 50 and widgets["resume"]
            assert (widgets["num_inference_steps"], widgets["truncated_backprop_steps"]) == (20, 1)
            assert (widgets["lora_rank"], widgets["learning_rate"]) == (16, 1e-4)
        for node in nodes_of(workflow, "DRFSampleVideo"):
            widgets = widgets_by_name(node, specs, tools)
            assert {k: widgets[k] for k in video} == video and widgets["steps"] == 20, name
        for node in nodes_of(workflow, "DRFLoadVideoModel") + nodes_of(workflow, "DRFLoadVLMCritic"):
            assert widgets_by_name(node, specs, tools)["device"] == "auto", name


def test_workflows_load_wan_as_comfyuis_own_template_does_except_the_command_line_one(tools, specs):
    """The files, shift, sampler and scheduler of ComfyUI's Wan 2.1 text-to-video template; one diffusers workflow."""
    template = {
        "UNETLoader": {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "weight_dtype": "default"},
        "CLIPLoader": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"},
        "VAELoader": {"vae_name": "wan_2.1_vae.safetensors"},
        "ModelSamplingSD3": {"shift": 8.0},
        "DRFVideoModelFromComfy": {"sampler_name": "uni_pc", "scheduler": "simple"},
    }
    on_diffusers = []
    for name in EXAMPLES:
        workflow = read_workflow(name)
        if name == FLUX or name in WAN22:  # their own template tests below
            continue
        if nodes_of(workflow, "DRFLoadVideoModel"):
            on_diffusers.append(name)
            assert not any(nodes_of(workflow, node_type) for node_type in template), name
            continue
        for node_type, expected in template.items():
            (node,) = nodes_of(workflow, node_type)
            widgets = widgets_by_name(node, specs, tools)
            assert {k: widgets[k] for k in expected} == expected, (name, node_type)
    assert on_diffusers == [TRAIN]  # the command line's run, on the diffusers folder


def test_the_flux_workflow_loads_flux_as_comfyuis_own_template_does(tools, specs):
    """The files and sampling of ComfyUI's Flux dev text-to-image template (flux_dev_full_text_to_image.json):
    euler, simple, cfg 1.0 (guidance 3.5 is Flux's default for a prompt without FluxGuidance); one frame."""
    workflow = read_workflow(FLUX)
    template = {
        "UNETLoader": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"},
        "DualCLIPLoader": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"},
        "VAELoader": {"vae_name": "ae.safetensors"},
        "DRFVideoModelFromComfy": {"sampler_name": "euler", "scheduler": "simple"},
    }
    for node_type, expected in template.items():
        (node,) = nodes_of(workflow, node_type)
        widgets = widgets_by_name(node, specs, tools)
        assert {k: widgets[k] for k in expected} == expected, node_type
    assert not nodes_of(workflow, "ModelSamplingSD3") and not nodes_of(workflow, "DRFSampleVideo")
    (train,) = nodes_of(workflow, "DRFTrainLoRA")
    widgets = widgets_by_name(train, specs, tools)
    assert widgets["guidance_scale"] == 1.0 and widgets["num_frames"] == 1


def test_flux_workflow_trains_and_saves_a_lora(comfy_root, tmp_path, tools, local, pack_nodes, specs):
    """Everything after the video model as in the file, at one frame (the core Flux loaders swapped for the
    tiny Wan, which makes a one-frame video: the image path of the trainer)."""
    root = fresh_root(comfy_root, tmp_path)

    def one_frame(prompt):
        (train,) = ids_of(prompt, "DRFTrainLoRA")
        prompt[train]["inputs"]["num_frames"] = 1

    prompt, results = run_workflow(FLUX, root, tools, local, pack_nodes, specs, edit=one_frame)
    (train,) = ids_of(prompt, "DRFTrainLoRA")
    metrics = results[train].outputs[3]
    assert [row["step"] for row in metrics] == list(range(1, SHRINK["DRFTrainLoRA"]["steps"] + 1))
    (lora_name,) = results[ids_of(prompt, "DRFSaveLoRA")[0]].outputs
    assert lora_name == "drf/flux_drf_00001.safetensors"
    assert (root / "models" / "loras" / lora_name).is_file()


# --- Wan 2.2 on the files and settings of ComfyUI's own Wan 2.2 templates -------------------------------------
# What the workflows take from ComfyUI's templates (package comfyui_workflow_templates, read 2026-12 from the one
# ComfyUI 0.3.64 installs); test_the_wan22_workflows_match_the_installed_templates reads them again.
TEMPLATES = {TI2V: "video_wan2_2_5B_ti2v.json", A14B: "video_wan2_2_14B_t2v.json"}
UMT5 = ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan")
TEMPLATE_SETTINGS = {
    TI2V: {
        "models": {"model": ("wan2.2_ti2v_5B_fp16.safetensors", "default", 8.0)},
        "text_encoder": UMT5,
        "vae": "wan2.2_vae.safetensors",
        "sampler": ("uni_pc", "simple"),
        "steps": 20,
        "cfg": 5.0,
        "video": {"width": 1280, "height": 704, "num_frames": 121},
        "fps": 24.0,
    },
    A14B: {  # the template's group without the 4-step Lightning LoRA
        "models": {
            "model": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "default", 8.0),
            "model_low_noise": ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "default", 8.0),
        },
        "text_encoder": UMT5,
        "vae": "wan_2.1_vae.safetensors",
        "sampler": ("euler", "simple"),
        "steps": 20,
        "cfg": 3.5,
        "video": {"width": 640, "height": 640, "num_frames": 81},
        "fps": 16.0,
        "low_noise_from": 0.5,
    },
}


def wan22_settings(workflow: dict, specs, tools) -> dict:
    """What a Wan 2.2 workflow takes from ComfyUI's template, in TEMPLATE_SETTINGS' shape: each Load Diffusion Model
    is followed link by link through its ModelSamplingSD3 to the Video Model from ComfyUI input it feeds."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    targets: dict[int, list] = {}
    for _link_id, source, _slot, target, target_slot, _type in workflow["links"]:
        targets.setdefault(source, []).append((nodes[target], nodes[target]["inputs"][target_slot]["name"]))
    models = {}
    for unet in nodes_of(workflow, "UNETLoader"):
        ((shift, _),) = targets[unet["id"]]
        ((video, socket),) = targets[shift["id"]]
        assert (shift["type"], video["type"]) == ("ModelSamplingSD3", "DRFVideoModelFromComfy")
        loaded = widgets_by_name(unet, specs, tools)
        models[socket] = (loaded["unet_name"], loaded["weight_dtype"], widgets_by_name(shift, specs, tools)["shift"])
    (clip,), (vae,) = nodes_of(workflow, "CLIPLoader"), nodes_of(workflow, "VAELoader")
    (video,), (train,) = nodes_of(workflow, "DRFVideoModelFromComfy"), nodes_of(workflow, "DRFTrainLoRA")
    (reward,) = nodes_of(workflow, "DRFRewardSettings")
    video, train, clip = (widgets_by_name(node, specs, tools) for node in (video, train, clip))
    settings = {
        "models": models,
        "text_encoder": (clip["clip_name"], clip["type"]),
        "vae": widgets_by_name(vae, specs, tools)["vae_name"],
        "sampler": (video["sampler_name"], video["scheduler"]),
        "steps": train["num_inference_steps"],
        "cfg": train["guidance_scale"],
        "video": {k: train[k] for k in ("width", "height", "num_frames")},
        "fps": widgets_by_name(reward, specs, tools)["video_fps"],
    }
    if "model_low_noise" in models:
        settings["low_noise_from"] = video["low_noise_from"]
    return settings


def template_wan22_settings(template: dict) -> dict:
    """TEMPLATE_SETTINGS read from one of ComfyUI's Wan 2.2 templates: followed from its (first) sampler's inputs,
    on the sampler chain whose MODELs come straight from Load Diffusion Model -> ModelSamplingSD3 (the A14B
    template's other group adds the 4-step Lightning LoRA)."""
    nodes = {node["id"]: node for node in template["nodes"]}
    origin = {link[0]: nodes[link[1]] for link in template["links"]}

    def source(node: dict, name: str) -> dict:
        (link,) = [entry["link"] for entry in node["inputs"] if entry["name"] == name]
        return origin[link]

    def model(sampler: dict) -> tuple:
        shift = source(sampler, "model")
        unet = source(shift, "model") if shift["type"] == "ModelSamplingSD3" else shift
        if unet["type"] != "UNETLoader":
            return ()  # through LoraLoaderModelOnly
        # the editor's slider stores 8.000000000000002 for 8 (its step is 0.01)
        return (*unet["widgets_values"], round(float(shift["widgets_values"][0]), 2))

    samplers = [n for n in template["nodes"] if n["type"] in ("KSampler", "KSamplerAdvanced") and model(n)]
    if samplers[0]["type"] == "KSampler":
        (first,) = samplers
        _seed, _control, steps, cfg, sampler_name, scheduler, _denoise = first["widgets_values"]
        chain = {"model": first}
    else:  # two KSamplerAdvanced: the one that adds noise runs the high-noise expert first
        (first,) = [n for n in samplers if n["widgets_values"][0] == "enable"]
        (second,) = [n for n in samplers if source(n, "latent_image") is first]
        _noise, _seed, _control, steps, cfg, sampler_name, scheduler, _start, end, _leftover = first["widgets_values"]
        chain = {"model": first, "model_low_noise": second}
    last = chain.get("model_low_noise", first)
    decode = next(n for n in template["nodes"] if n["type"] == "VAEDecode" and source(n, "samples") is last)
    create = next(n for n in template["nodes"] if n["type"] == "CreateVideo" and source(n, "images") is decode)
    width, height, length, _batch = source(first, "latent_image")["widgets_values"]
    clip = source(source(first, "positive"), "clip")
    settings = {
        "models": {socket: model(sampler) for socket, sampler in chain.items()},
        "text_encoder": tuple(clip["widgets_values"][:2]),
        "vae": source(decode, "vae")["widgets_values"][0],
        "sampler": (sampler_name, scheduler),
        "steps": steps,
        "cfg": float(cfg),
        "video": {"width": width, "height": height, "num_frames": length},
        "fps": float(create["widgets_values"][0]),
    }
    if "model_low_noise" in chain:
        settings["low_noise_from"] = end / steps
    return settings


@pytest.mark.parametrize("name", WAN22)
def test_the_wan22_workflows_load_wan_as_comfyuis_own_templates_do(name, tools, specs):
    """Files, shift per MODEL, sampler, scheduler, steps, cfg, size and fps of the template (TEMPLATE_SETTINGS);
    the A14B experts go high-noise -> model, low-noise -> model_low_noise, and the LoRA trains the low-noise one."""
    workflow = read_workflow(name)
    assert wan22_settings(workflow, specs, tools) == TEMPLATE_SETTINGS[name]
    (video,) = nodes_of(workflow, "DRFVideoModelFromComfy")
    (note,) = nodes_of(workflow, "MarkdownNote")
    text = note["widgets_values"][0]
    for unet in nodes_of(workflow, "UNETLoader"):  # every expert's file, not only the first
        assert f"`{unet['widgets_values'][0]}`" in text, unet["widgets_values"][0]
    for sampler in nodes_of(workflow, "DRFSampleVideo"):  # the before / after samples as the template does
        widgets = widgets_by_name(sampler, specs, tools)
        assert {k: widgets[k] for k in ("width", "height", "num_frames", "steps", "guidance_scale")} == {
            **TEMPLATE_SETTINGS[name]["video"],
            "steps": TEMPLATE_SETTINGS[name]["steps"],
            "guidance_scale": TEMPLATE_SETTINGS[name]["cfg"],
        }
    if name == A14B:
        assert widgets_by_name(video, specs, tools)["trained_expert"] == "low_noise"
        assert "LoraLoaderModelOnly" in text and "**low-noise MODEL only**" in text
        titles = [node.get("title") for node in nodes_of(workflow, "UNETLoader")]
        assert titles == ["Load Diffusion Model: high noise", "Load Diffusion Model: low noise"]
    else:
        assert not nodes_of(workflow, "DRFTrainingOptions"), "the 5B trains with the defaults"
        assert len(nodes_of(workflow, "DRFSampleVideo")) == 2


@pytest.mark.comfyui
def test_the_wan22_workflows_match_the_installed_templates(tools, specs):
    """TEMPLATE_SETTINGS against the templates of the comfyui_workflow_templates package ComfyUI's interpreter has:
    a template that changes its files or settings fails here, not in an artist's queue."""
    from tests.comfy_checkout import comfyui_checkout

    _comfy_dir, python = comfyui_checkout()
    where = "import comfyui_workflow_templates as t, pathlib; print(pathlib.Path(t.__file__).parent / 'templates')"
    folder = Path(subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True).stdout.strip())
    for name, template in TEMPLATES.items():
        found = template_wan22_settings(json.loads((folder / template).read_text(encoding="utf-8")))
        assert found == TEMPLATE_SETTINGS[name], template
        assert wan22_settings(read_workflow(name), specs, tools) == found, name


def test_ti2v_workflow_trains_saves_and_compares(comfy_root, tmp_path, tools, local, pack_nodes, specs):
    """Everything after the video model as in the file (the core loaders swapped for the tiny Wan 2.1, see the
    module docstring): Save LoRA's name, and the before / after shows the base left and the trained LoRA right.
    The A14B file runs only on a real ComfyUI (below): swapped for the tiny Wan it would be the main workflow's run."""
    root = fresh_root(comfy_root, tmp_path)
    prompt, results = run_workflow(TI2V, root, tools, local, pack_nodes, specs)
    (train,), (save,) = ids_of(prompt, "DRFTrainLoRA"), ids_of(prompt, "DRFSaveLoRA")
    metrics = results[train].outputs[3]
    assert [row["step"] for row in metrics] == list(range(1, SHRINK["DRFTrainLoRA"]["steps"] + 1))
    (lora_name,) = results[save].outputs
    assert lora_name == "drf/wan22_ti2v_5b_00001.safetensors"
    assert (root / "models" / "loras" / lora_name).is_file()
    base, tuned = base_and_lora_samplers(prompt)
    assert prompt[tuned]["inputs"]["lora"][0] == train
    (compare,) = ids_of(prompt, "DRFCompareSideBySide")
    left, right = halves(results[compare].outputs[0], SMALL_VIDEO["width"])
    assert (left - results[base].outputs[0][:, LABEL_ROWS:]).abs().max() <= 1 / 255 + 1e-6
    assert (left - right).abs().max() > 1 / 255 + 1e-6, "the freshly trained LoRA changes the video"


@pytest.mark.comfyui
@pytest.mark.parametrize("name", WAN22)
def test_wan22_workflow_trains_and_saves_a_lora_that_core_lora_loader_applies(name, server, pack_nodes, specs, tools):
    """The file unchanged but shrunk (comfy_pack.shrink), queued on a real ComfyUI whose model folders hold tiny
    models under the template's file names (a tiny TI2V-5B with the Wan 2.2 VAE at ComfyUI's size; two tiny Wans
    as the A14B experts): Save LoRA writes the file the note names, the critic is told the model's own frame rate,
    the A14B file names its low-noise expert, and core UNETLoader -> LoraLoaderModelOnly -> ModelSave on the MODEL
    the note names gives exactly base + alpha / rank * up @ down on every trained layer, without "lora key not
    loaded"."""
    from safetensors.torch import load_file

    from tests.comfy_pack import api_prompt, run_ok
    from tests.comfy_pack import shrink as shrink_for_comfyui

    workflow = read_workflow(name)
    (save,) = nodes_of(workflow, "DRFSaveLoRA")
    expert = "_low_noise" if name == A14B else ""  # Save LoRA names the expert a LoRA belongs on
    expected = f"{widgets_by_name(save, specs, tools)['filename_prefix']}{expert}_00001.safetensors"
    trained_model = TEMPLATE_SETTINGS[name]["models"]["model_low_noise" if name == A14B else "model"][0]
    loras = server.models_dir / "loras"
    log_start = len(server.log_text())
    # one optimizer step (and one denoising step per sample): the VAEs at ComfyUI's sizes dominate on the CPU
    entry = run_ok(server, shrink_for_comfyui(api_prompt(WORKFLOW_DIR / name, pack_nodes), steps=1))
    log = server.log_text()[log_start:]
    assert (loras / expected).is_file(), sorted(p.name for p in loras.rglob("*.safetensors"))
    assert expected in json.dumps(entry["outputs"]), "Save LoRA shows the name it wrote"
    assert "this video model makes" not in log, "Reward Settings' video_fps differs from the model's frame rate"
    with safe_open(str(loras / expected), "pt") as f:
        header = f.metadata()
    assert header["family"] == "wan"
    assert header.get("drf_wan_expert") == ("low_noise" if name == A14B else None)
    if name == TI2V:  # the before / after ran: Sample Video and Compare Side by Side showed frames
        images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        assert len(images) >= 3, entry["outputs"]

    check = f"drf_check_{Path(name).stem}"
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": trained_model, "weight_dtype": "default"}},
        "2": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["1", 0], "lora_name": expected, "strength_model": 1.0},
        },
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": f"{check}/patched"}},
    }
    log_start = len(server.log_text())
    run_ok(server, prompt)
    assert "lora key not loaded" not in server.log_text()[log_start:]
    (saved,) = (server.output_dir / check).glob("patched*.safetensors")
    patched = load_file(saved)
    base = load_file(server.models_dir / "diffusion_models" / trained_model)
    lora = load_file(loras / expected)
    modules = sorted(key.removesuffix(".alpha") for key in lora if key.endswith(".alpha"))
    assert len(modules) == 2 * 8, modules  # the tiny models' two blocks, the "attention" preset's 8 layers each
    for module in modules:
        native = module.removeprefix("diffusion_model.")
        down, up = lora[f"{module}.lora_A.weight"], lora[f"{module}.lora_B.weight"]
        assert up.abs().max() > 0, f"{module} was not trained"
        expected_weight = base[f"{native}.weight"] + float(lora[f"{module}.alpha"]) / down.shape[0] * (up @ down)
        assert torch.allclose(patched[f"model.diffusion_model.{native}.weight"], expected_weight, atol=1e-6), native
    assert torch.equal(patched["model.diffusion_model.blocks.0.norm3.weight"], base["blocks.0.norm3.weight"])


# --- check_workflow catches broken files --------------------------------------------------------------------


def _node(workflow: dict, node_type: str) -> dict:
    return nodes_of(workflow, node_type)[0]


def _slot(node: dict, input_name: str) -> int:
    return next(i for i, entry in enumerate(node["inputs"]) if entry["name"] == input_name)


def _link_into(workflow: dict, node_type: str, input_name: str) -> list:
    node = _node(workflow, node_type)
    link_id = node["inputs"][_slot(node, input_name)]["link"]
    return next(link for link in workflow["links"] if link[0] == link_id)


def _set_widget(workflow: dict, node_type: str, name: str, value, control: bool = False, specs=None) -> None:
    node = _node(workflow, node_type)
    widget_slots = pack_module("nodes.workflow").widget_slots
    index = next(i for i, (item, c) in enumerate(widget_slots(specs[node_type])) if item.name == name and c == control)
    node["widgets_values"][index] = value


def _swap_train_sockets(workflow: dict, specs) -> None:
    """Plug the video model into Train LoRA's questions socket and the questions into its video_model socket."""
    train = _node(workflow, "DRFTrainLoRA")
    a, b = _slot(train, "video_model"), _slot(train, "questions")
    link_a, link_b = train["inputs"][a]["link"], train["inputs"][b]["link"]
    train["inputs"][a]["link"], train["inputs"][b]["link"] = link_b, link_a
    for link in workflow["links"]:
        if link[0] == link_a:
            link[4] = b
        elif link[0] == link_b:
            link[4] = a


def _unlisted_link(workflow: dict, specs) -> None:
    link = _link_into(workflow, "DRFSaveLoRA", "lora")
    source = next(n for n in workflow["nodes"] if n["id"] == link[1])
    source["outputs"][link[2]]["links"].remove(link[0])


def _disconnect_critic(workflow: dict, specs) -> None:
    link = _link_into(workflow, "DRFTrainLoRA", "critic")
    train = _node(workflow, "DRFTrainLoRA")
    train["inputs"][_slot(train, "critic")]["link"] = None
    source = next(n for n in workflow["nodes"] if n["id"] == link[1])
    source["outputs"][link[2]]["links"].remove(link[0])
    workflow["links"].remove(link)


def _input_names_foreign_link(workflow: dict, specs) -> None:
    save = _node(workflow, "DRFSaveLoRA")
    save["inputs"][0]["link"] = _link_into(workflow, "DRFTrainLoRA", "critic")[0]


BREAKAGES = {
    "unknown node type": (
        lambda w, s: _node(w, "DRFSaveLoRA").update(type="DRFSaveLoRAv2"),
        "(DRFSaveLoRAv2): not a registered node type",
    ),
    "link type differs from the socket's": (
        lambda w, s: _link_into(w, "DRFTrainLoRA", "critic").__setitem__(5, "DRF_VIDEO_MODEL"),
        "DRF_CRITIC -> DRF_CRITIC (link says DRF_VIDEO_MODEL)",
    ),
    "link plugged into a socket of another type": (_swap_train_sockets, "DRF_VIDEO_MODEL -> DRF_QUESTIONS"),
    "link id not listed at its source": (_unlisted_link, "not listed by its source's output"),
    "input names a link that ends elsewhere": (_input_names_foreign_link, "which does not end here"),
    "one widget value too few": (
        lambda w, s: _node(w, "DRFTrainLoRA")["widgets_values"].pop(),
        "(DRFTrainLoRA): 15 widget values, the node has 16",
    ),
    "text for an INT": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "steps", "300", specs=s),
        "widget steps is not an integer",
    ),
    "float for an INT": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "steps", 300.5, specs=s),
        "widget steps is not an integer",
    ),
    "boolean for a FLOAT": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "learning_rate", True, specs=s),
        "widget learning_rate is not a number",
    ),
    "text for a BOOLEAN": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "resume", "yes", specs=s),
        "widget resume is not true/false",
    ),
    "number for a STRING": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "run_name", 7, specs=s),
        "widget run_name is not text",
    ),
    "INT below its minimum": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "lora_rank", 0, specs=s),
        "widget lora_rank = 0 is outside [1, 256]",
    ),
    "FLOAT above its maximum": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "learning_rate", 0.5, specs=s),
        "widget learning_rate = 0.5 is outside",
    ),
    "bad control after generate": (
        lambda w, s: _set_widget(w, "DRFTrainLoRA", "seed", "sometimes", control=True, specs=s),
        "control after generate of seed = 'sometimes'",
    ),
    "required socket left unconnected": (_disconnect_critic, "required input critic is not connected"),
    "combo value not in its option list": (
        lambda w, s: _set_widget(w, "DRFRewardSettings", "frame_selection", "middle", specs=s),
        "widget frame_selection = 'middle' is not one of",
    ),
    "input socket missing": (
        lambda w, s: _node(w, "DRFRewardCurves").update(inputs=[]),
        "input socket metrics is missing",
    ),
    "outputs that differ from the node's": (
        lambda w, s: _node(w, "DRFSaveLoRA")["outputs"][0].update(type="INT"),
        "outputs ['INT'] differ",
    ),
    "last_link_id smaller than a link id": (
        lambda w, s: w.update(last_link_id=1),
        "last_node_id / last_link_id are smaller than ids in use",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_check_workflow_reports_each_kind_of_breakage(breakage, tools, specs):
    workflow = read_workflow(TRAIN)
    assert tools.check_workflow(workflow, specs) == []
    mutate, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(workflow)
    mutate(broken, specs)
    assert broken != workflow, "the mutation changed nothing"
    problems = tools.check_workflow(broken, specs)
    assert any(expected in problem for problem in problems), f"{breakage}: {problems}"


# --- conversion to API format -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_ui_to_api_matches_the_widgets_and_links(name, tools, specs):
    workflow = read_workflow(name)
    prompt = tools.ui_to_api(workflow, specs)
    json.dumps(prompt)  # what POST /prompt takes must be plain JSON
    links = {link[0]: link for link in workflow["links"]}
    nodes = [n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY]
    assert sorted(prompt, key=int) == [str(n["id"]) for n in nodes], "notes are left out, every node is in"
    for node in nodes:
        spec = specs[node["type"]]
        values = iter(node["widgets_values"])
        expected = {}
        for item in spec.inputs:
            if item.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                expected[item.name] = next(values)
                if item.control_after_generate:
                    assert next(values) == "fixed"
        assert next(values, None) is None, f"node {node['id']} has widget values left over"
        for entry in node["inputs"]:
            if entry["link"] is not None:
                link = links[entry["link"]]
                expected[entry["name"]] = [str(link[1]), link[2]]
                source = prompt[str(link[1])]["class_type"]
                assert specs[source].outputs[link[2]].type == spec.input(entry["name"]).type
        assert prompt[str(node["id"])] == {"class_type": node["type"], "inputs": expected}
    muted = copy.deepcopy(workflow)
    muted["nodes"][-1]["mode"] = 2
    assert str(muted["nodes"][-1]["id"]) not in tools.ui_to_api(muted, specs), "muted nodes are left out"


# --- end to end on tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(comfy_root, tmp_path_factory, tools, local, pack_nodes, specs):
    """The main training workflow, run once on a private root: `(root, prompt, results)`."""
    root = fresh_root(comfy_root, tmp_path_factory.mktemp("workflow_train"))
    prompt, results = run_workflow(TRAIN, root, tools, local, pack_nodes, specs)
    return root, prompt, results


def test_train_workflow_saves_a_comfyui_lora_and_plots_the_reward(trained, tiny_models):
    root, prompt, results = trained
    (train,) = ids_of(prompt, "DRFTrainLoRA")
    (save,) = ids_of(prompt, "DRFSaveLoRA")
    (curves,) = ids_of(prompt, "DRFRewardCurves")
    steps, rank = SHRINK["DRFTrainLoRA"]["steps"], SHRINK["DRFTrainLoRA"]["lora_rank"]
    alpha = SHRINK["DRFTrainLoRA"]["lora_alpha"]

    (lora_name,) = results[save].outputs
    (compare_loader,) = nodes_of(read_workflow(COMPARE), "DRFLoadLoRA")
    assert lora_name == compare_loader["widgets_values"][0] == "drf/wan_drf_00001.safetensors"
    path = root / "models" / "loras" / lora_name
    key_pattern = re.compile(
        r"diffusion_model\.(blocks\.(\d+)\.(self_attn|cross_attn)\.[qkvo])\.(lora_A\.weight|lora_B\.weight|alpha)"
    )
    bases: dict[str, set[str]] = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            match = key_pattern.fullmatch(key)
            assert match, f"{key} is not a key ComfyUI applies to Wan ('attention' preset)"
            bases.setdefault(match.group(1), set()).add(match.group(4))
            tensor = f.get_tensor(key)
            if match.group(4) == "alpha":
                assert tensor.dtype == torch.float32 and tensor.numel() == 1 and tensor.item() == alpha
            elif match.group(4) == "lora_A.weight":
                assert tensor.shape[0] == rank and tensor.dtype == torch.float32
            else:
                assert tensor.shape[1] == rank and tensor.abs().max() > 0, f"{key} was not trained"
    num_blocks = json.loads((tiny_models.wan / "transformer" / "config.json").read_text())["num_layers"]
    assert len(bases) == num_blocks * 8, sorted(bases)
    assert all(suffixes == {"lora_A.weight", "lora_B.weight", "alpha"} for suffixes in bases.values())

    _lora, reward_curve, last_preview, metrics = results[train].outputs
    assert [row["step"] for row in metrics] == list(range(1, steps + 1))
    assert all(isinstance(row["reward"], float) for row in metrics)
    run_dir = root / "output" / "drf_runs" / "wan_drf"
    on_disk = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == metrics
    assert tuple(last_preview.shape[1:]) == (SMALL_VIDEO["height"], SMALL_VIDEO["width"], 3)
    for image in (results[curves].outputs[0], reward_curve):
        assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3 and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.01
    assert results[curves].previews and results[curves].previews[0].frames is results[curves].outputs[0]


def test_critique_workflow_reports_every_aspect_with_heatmaps(comfy_root, tmp_path, tools, local, pack_nodes, specs):
    root = fresh_root(comfy_root, tmp_path)
    prompt, results = run_workflow(CRITIQUE, root, tools, local, pack_nodes, specs)
    (critique,) = ids_of(prompt, "DRFCritiqueVideo")
    (decompose,) = ids_of(prompt, "DRFDecomposePrompt")
    (question_set,) = results[decompose].outputs[0]
    report, chart, heatmaps, total = results[critique].outputs
    assert results[critique].text == report
    for aspect in question_set.aspects:
        assert f"## {aspect.name}:" in report, aspect.name
        for question in aspect.yes_no + aspect.explanations:
            assert question.question in report, question.question
    assert f"{total:.4f}" in report and torch.isfinite(torch.tensor(total))
    num_aspects = len(question_set.aspects)
    expected_width = num_aspects * SMALL_VIDEO["width"] + (num_aspects - 1) * GAP
    assert tuple(heatmaps.shape) == (FRAME_COUNT, SMALL_VIDEO["height"], expected_width, 3)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 and heatmaps.std() > 0
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[3] == 3 and 0 <= chart.min() <= chart.max() <= 1


def test_compare_workflow_shows_the_lora_effect_and_none_at_strength_zero(trained, tools, local, pack_nodes, specs):
    root = trained[0]
    lora_names = specs["DRFLoadLoRA"].input("lora_name").option_list(local.LocalFolders(root))
    (loader,) = nodes_of(read_workflow(COMPARE), "DRFLoadLoRA")
    assert loader["widgets_values"][0] in lora_names, "the LoRA the training workflow saves is the one loaded"
    prompt, results = run_workflow(COMPARE, root, tools, local, pack_nodes, specs)
    base, tuned = base_and_lora_samplers(prompt)
    assert "lora" not in prompt[base]["inputs"] and "lora" in prompt[tuned]["inputs"]
    (compare,) = ids_of(prompt, "DRFCompareSideBySide")
    left, right = halves(results[compare].outputs[0], SMALL_VIDEO["width"])
    quantum = 1 / 255 + 1e-6  # labelled frames pass through 8-bit images
    assert (left - results[base].outputs[0][:, LABEL_ROWS:]).abs().max() <= quantum, "the base is on the left"
    assert (right - results[tuned].outputs[0][:, LABEL_ROWS:]).abs().max() <= quantum, "the LoRA is on the right"
    assert (left - right).abs().max() > 0.02, "the trained LoRA changes the video"

    def strength_zero(prompt):
        prompt[base_and_lora_samplers(prompt)[1]]["inputs"]["lora_strength"] = 0.0

    prompt, results = run_workflow(COMPARE, root, tools, local, pack_nodes, specs, edit=strength_zero)
    base, tuned = base_and_lora_samplers(prompt)
    assert torch.equal(results[base].outputs[0], results[tuned].outputs[0]), "same seed, no LoRA: same video"
    left, right = halves(results[ids_of(prompt, "DRFCompareSideBySide")[0]].outputs[0], SMALL_VIDEO["width"])
    assert torch.equal(left, right)


def test_single_prompt_workflow_trains_saves_and_compares(comfy_root, tmp_path, tools, local, pack_nodes, specs):
    root = fresh_root(comfy_root, tmp_path)
    prompt = shrink(tools.ui_to_api(read_workflow(SINGLE), specs))
    base, tuned = base_and_lora_samplers(prompt)
    base_inputs = {k: v for k, v in prompt[base]["inputs"].items() if k != "video_model"}
    ctx = local.LocalContext(local.LocalFolders(root))
    handle = local.run_node(
        pack_nodes.NODES_BY_ID["DRFLoadVideoModel"], ctx, **prompt[ids_of(prompt, "DRFLoadVideoModel")[0]]["inputs"]
    ).outputs[0]
    (reference,) = local.run_node(
        pack_nodes.NODES_BY_ID["DRFSampleVideo"], ctx, video_model=handle, **base_inputs
    ).outputs

    def options_with_mlps(prompt):  # the Training Options node must reach Train LoRA: its preset shows in the file
        (options,) = ids_of(prompt, "DRFTrainingOptions")
        prompt[options]["inputs"]["target_preset"] = "attention_ffn"

    prompt, results = run_workflow(SINGLE, root, tools, local, pack_nodes, specs, edit=options_with_mlps)
    (train,) = ids_of(prompt, "DRFTrainLoRA")
    (save,) = ids_of(prompt, "DRFSaveLoRA")
    (questions,) = results[ids_of(prompt, "DRFDecomposePrompt")[0]].outputs[0]
    assert questions.prompt == prompt[base]["inputs"]["prompt"] == prompt[tuned]["inputs"]["prompt"]
    metrics = results[train].outputs[3]  # step 0: the held-out evaluation before training
    assert [row["step"] for row in metrics] == list(range(SHRINK["DRFTrainLoRA"]["steps"] + 1))
    assert all("held_out" in row for row in metrics)

    (lora_name,) = results[save].outputs
    assert lora_name == "drf/single_prompt_00001.safetensors"
    with safe_open(str(root / "models" / "loras" / lora_name), "pt") as f:
        keys = set(f.keys())
    assert "diffusion_model.blocks.0.ffn.0.lora_A.weight" in keys and "diffusion_model.blocks.0.ffn.2.alpha" in keys
    assert "diffusion_model.blocks.0.self_attn.q.lora_B.weight" in keys

    assert torch.equal(results[base].outputs[0], reference), "training left its LoRA in the base model"
    (compare,) = ids_of(prompt, "DRFCompareSideBySide")
    left, right = halves(results[compare].outputs[0], SMALL_VIDEO["width"])
    assert (left - reference[:, LABEL_ROWS:]).abs().max() <= 1 / 255 + 1e-6
    # More than one 8-bit level: a change a saved frame shows (two steps on tiny random models move little).
    assert (left - right).abs().max() > 1 / 255 + 1e-6, "the freshly trained LoRA changes the video"

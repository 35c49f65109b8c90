"""What the real-ComfyUI test modules share: a server serving this pack with tiny models, and prompt helpers.

`start_pack_server` starts one headless ComfyUI (`tests/comfy_server.py`) whose model folders hold the tiny
models under the real models' names (`models/diffusers/Wan2.1-T2V-1.3B-Diffusers`,
`models/LLM/Qwen2.5-VL-7B-Instruct`) and a `vlm` folder from `extra_model_paths.yaml`, plus the files ComfyUI's
own Wan 2.1 text-to-video template loads: the tiny Wan in ComfyUI's layout as
`diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`, and (`template_models`) a tiny UMT5 as
`text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` with the Wan 2.1 VAE (its fixed size, random weights) as
`vae/wan_2.1_vae.safetensors`, the files of ComfyUI's Wan 2.2 templates (`WAN22_FILES`: a tiny TI2V-5B as
`wan2.2_ti2v_5B_fp16.safetensors` with the Wan 2.2 VAE at its fixed size and random weights, and two tiny Wans of
different seeds as A14B's high-noise and low-noise `*_fp8_scaled` experts: fp32 weights, what matters is the name),
and the files of ComfyUI's Flux dev template (`FLUX_FILES`: the smallest Flux
ComfyUI loads, Flux's VAE and CLIP-L at their fixed sizes, a tiny T5-XXL). ComfyUI builds UMT5-XXL and T5-XXL at
fixed sizes, so the server also loads the test-only custom nodes `comfy_test_nodes/drf_tiny_umt5` and
`drf_tiny_t5xxl`, which make core Load CLIP / DualCLIPLoader build them tiny.
`shrink` makes a prompt run in seconds; `api_prompt` turns an
example workflow into an API prompt; `drf_node` is one DRF node entry with the editor's defaults; `run_ok`
queues a prompt and asserts it succeeded.

The `server` fixture (one per test module) lives in conftest.py; where ComfyUI is (or why the tests skip)
is `tests/comfy_checkout.py`'s business.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from types import ModuleType

from drf_core.tiny import TinyModelPaths, write_tiny_wan_native, write_tiny_wan_t2v_native, write_tiny_wan_ti2v_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_server import ComfyServer, history_error

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER = "ComfyUI-DiffusionDRF"
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
TRAIN_WORKFLOW = REPO_ROOT / "workflows" / "drf_train_wan_lora.json"
VIDEO_MODEL_NAME = "Wan2.1-T2V-1.3B-Diffusers"
CRITIC_NAME = "Qwen2.5-VL-7B-Instruct"
TINY_UNET = "wan2.1_t2v_1.3B_fp16.safetensors"  # the template's file name
TEXT_ENCODER_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"
# The Flux dev template's files (comfy_scripts/template_models.py writes them; T5-XXL tiny through drf_tiny_t5xxl).
FLUX_FILES = (
    "diffusion_models/flux1-dev.safetensors",
    "vae/ae.safetensors",
    "text_encoders/clip_l.safetensors",
    "text_encoders/t5xxl_fp16.safetensors",
)
# ComfyUI's Wan 2.2 5B and 14B text-to-video templates' files (video_wan2_2_5B_ti2v.json, video_wan2_2_14B_t2v.json).
TI2V_UNET = "wan2.2_ti2v_5B_fp16.safetensors"
WAN22_VAE_FILE = "wan2.2_vae.safetensors"  # comfy_scripts/template_models.py --wan22 writes it
A14B_EXPERTS = {  # expert -> file; tiny Wans of these seeds (drf_core.tiny.write_tiny_wan_t2v_native)
    "high_noise": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", 2),
    "low_noise": ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", 3),
}
TEST_NODES = REPO_ROOT / "tests" / "comfy_test_nodes"
SCRIPTS = REPO_ROOT / "tests" / "comfy_scripts"
EXTRA_CRITIC = "Qwen-from-extra-model-paths"
# Inputs that make a workflow run in seconds on tiny models (names shared by several nodes).
SHRINK = {
    "width": 32,
    "height": 32,
    "num_frames": 5,
    "steps": 2,
    "num_inference_steps": 2,
    "truncated_backprop_steps": 1,
    "lora_rank": 4,
    "lora_alpha": 4.0,
    "learning_rate": 3e-2,
    "critic_width": 28,
    "critic_height": 28,
    "frame_count": 1,
    "max_new_tokens": 4,
    "checkpoint_interval": 0,
    "dtype": "fp32",
    "device": "cpu",
}


def pack_nodes_module() -> ModuleType:
    """The pack's `nodes` package as ComfyUI imports it (conftest.import_pack ran first)."""
    return importlib.import_module("comfyui_diffusiondrf.nodes")


def shrink(prompt: dict, **extra) -> dict:
    """Small values for the inputs named in SHRINK, kept inside each DRF input's own range. One frame stays
    one frame: an image model's workflow (Flux) refuses any other count."""
    nodes = pack_nodes_module()
    values = {**SHRINK, **extra}
    for node in prompt.values():
        spec = nodes.NODES_BY_ID[node["class_type"]].SPEC if node["class_type"] in nodes.NODES_BY_ID else None
        for name in node["inputs"]:
            if name == "num_frames" and node["inputs"][name] == 1 and "num_frames" not in extra:
                continue
            if name in values and not isinstance(node["inputs"][name], list):
                value = values[name]
                item = spec.input(name) if spec is not None else None
                if item is not None and item.min is not None:
                    value = type(item.default)(min(max(value, item.min), item.max))
                node["inputs"][name] = value
    return prompt


def run_comfy_script(script: str, *args: object, pack: bool = True, timeout: float = 1200) -> None:
    """Run `tests/comfy_scripts/<script>` with ComfyUI's interpreter in the ComfyUI folder (skips or fails as
    `comfyui_checkout` says); `--comfyui-dir` (and `--pack-dir`, with `pack`) come first, then `args`."""
    comfy_dir, python = comfyui_checkout()
    command = [str(python), str(SCRIPTS / script), "--comfyui-dir", str(comfy_dir)]
    command += ["--pack-dir", str(REPO_ROOT)] if pack else []
    run = subprocess.run([*command, *map(str, args)], cwd=comfy_dir, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"


def comfy_script_report(script: str, work: Path, *args: object, timeout: float = 1200) -> dict:
    """`run_comfy_script` with `--out-dir work`; the `report.json` the script wrote there."""
    run_comfy_script(script, *args, "--out-dir", work, timeout=timeout)
    return json.loads((work / "report.json").read_text(encoding="utf-8"))


def template_models(out: Path) -> Path:
    """Write the template-named tiny text encoder and VAEs (Wan 2.1's, Wan 2.2's) and the Flux dev template's files
    (`FLUX_FILES`) under `out` with ComfyUI's interpreter; returns `out`."""
    run_comfy_script("template_models.py", "--out", out, "--flux", "yes", "--wan22", "yes", pack=False, timeout=900)
    return out


def start_pack_server(
    work: Path, extra_models: Path, tiny_models: TinyModelPaths, template_dir: Path | None = None
) -> ComfyServer:
    """A started ComfyUI serving this pack, all its state under `work` (skips or fails as `comfyui_checkout` says).

    `template_dir` holds what `template_models` wrote (written under `work` when not given)."""
    comfy_dir, python = comfyui_checkout()
    if template_dir is None:
        template_dir = template_models(work.parent / f"{work.name}_template_models")
    # A `vlm` folder from extra_model_paths.yaml exists before the pack loads; the pack must add to it, not replace it.
    (extra_models / "vlm_extra").mkdir()
    (extra_models / "vlm_extra" / EXTRA_CRITIC).symlink_to(tiny_models.qwen, target_is_directory=True)
    config = extra_models / "extra_model_paths.yaml"
    config.write_text(f"drf_test:\n    base_path: {extra_models}\n    vlm: vlm_extra\n")
    comfy = ComfyServer(
        comfy_dir,
        REPO_ROOT,
        work,
        python=str(python),
        pack_name=PACK_FOLDER,
        extra_args=("--extra-model-paths-config", str(config)),
    )
    models = comfy.models_dir
    for folder in ("diffusers", "LLM", "diffusion_models", "loras", "text_encoders", "vae"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    (models / "diffusers" / VIDEO_MODEL_NAME).symlink_to(tiny_models.wan, target_is_directory=True)
    (models / "LLM" / CRITIC_NAME).symlink_to(tiny_models.qwen, target_is_directory=True)
    write_tiny_wan_native(tiny_models.wan, models / "diffusion_models" / TINY_UNET)
    (models / "text_encoders" / TEXT_ENCODER_FILE).symlink_to(template_dir / "text_encoders" / TEXT_ENCODER_FILE)
    (models / "vae" / VAE_FILE).symlink_to(template_dir / "vae" / VAE_FILE)
    for relative in FLUX_FILES:
        (models / relative).symlink_to(template_dir / relative)
    (models / "vae" / WAN22_VAE_FILE).symlink_to(template_dir / "vae" / WAN22_VAE_FILE)
    write_tiny_wan_ti2v_native(models / "diffusion_models" / TI2V_UNET)
    for file, seed in A14B_EXPERTS.values():
        write_tiny_wan_t2v_native(models / "diffusion_models" / file, seed=seed)
    comfy.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    for test_node in ("drf_tiny_umt5", "drf_tiny_t5xxl"):
        (comfy.custom_nodes_dir / test_node).symlink_to(TEST_NODES / test_node, target_is_directory=True)
    return comfy.start()


def api_prompt(path: Path, pack_nodes) -> dict:
    workflow_tools = importlib.import_module(f"{pack_nodes.__name__}.workflow")
    core = importlib.import_module(f"{pack_nodes.__name__}.core_specs").CORE_SPECS
    specs = {**core, **{node.SPEC.node_id: node.SPEC for node in pack_nodes.NODES}}
    return workflow_tools.ui_to_api(json.loads(path.read_text()), specs)


def run_ok(server: ComfyServer, prompt: dict, timeout: float = 600) -> dict:
    entry = server.wait(server.queue(prompt), timeout=timeout)
    error = history_error(entry)
    assert error is None, f"{error}\n{server.log_tail()}"
    return entry


def drf_node(pack_nodes, class_type: str, **inputs) -> dict:
    """An API-format entry for a DRF node: widget defaults (as the editor would send them), then `inputs`."""
    local = importlib.import_module(f"{pack_nodes.__name__}.local")
    return {"class_type": class_type, "inputs": local.with_defaults(pack_nodes.NODES_BY_ID[class_type].SPEC, inputs)}

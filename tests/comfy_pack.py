"""What the real-ComfyUI test modules share: a server serving this pack with tiny models, and prompt helpers.

`start_pack_server` starts one headless ComfyUI (`tests/comfy_server.py`) whose model folders hold the tiny
models under the real models' names (`models/diffusers/Wan2.1-T2V-1.3B-Diffusers`,
`models/LLM/Qwen2.5-VL-7B-Instruct`, an original-layout Wan checkpoint in `models/diffusion_models`) and a
`vlm` folder from `extra_model_paths.yaml`. `shrink` makes a prompt run in seconds; `api_prompt` turns an
example workflow into an API prompt; `drf_node` is one DRF node entry with the editor's defaults; `run_ok`
queues a prompt and asserts it succeeded.

The `server` fixture (one per test module) lives in conftest.py; where ComfyUI is (or why the tests skip)
is `tests/comfy_checkout.py`'s business.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from drf_core.tiny import TinyModelPaths, write_tiny_wan_native
from tests.comfy_checkout import comfyui_checkout
from tests.comfy_server import ComfyServer, history_error

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER = "ComfyUI-DiffusionDRF"
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
TRAIN_WORKFLOW = REPO_ROOT / "workflows" / "drf_train_wan_lora.json"
VIDEO_MODEL_NAME = "Wan2.1-T2V-1.3B-Diffusers"
CRITIC_NAME = "Qwen2.5-VL-7B-Instruct"
TINY_UNET = "tiny_wan_t2v.safetensors"
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
    """Small values for the inputs named in SHRINK, kept inside each DRF input's own range."""
    nodes = pack_nodes_module()
    values = {**SHRINK, **extra}
    for node in prompt.values():
        spec = nodes.NODES_BY_ID[node["class_type"]].SPEC if node["class_type"] in nodes.NODES_BY_ID else None
        for name in node["inputs"]:
            if name in values and not isinstance(node["inputs"][name], list):
                value = values[name]
                item = spec.input(name) if spec is not None else None
                if item is not None and item.min is not None:
                    value = type(item.default)(min(max(value, item.min), item.max))
                node["inputs"][name] = value
    return prompt


def start_pack_server(work: Path, extra_models: Path, tiny_models: TinyModelPaths) -> ComfyServer:
    """A started ComfyUI serving this pack, all its state under `work` (skips or fails as `comfyui_checkout` says)."""
    comfy_dir, python = comfyui_checkout()
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
    for folder in ("diffusers", "LLM", "diffusion_models", "loras"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    (models / "diffusers" / VIDEO_MODEL_NAME).symlink_to(tiny_models.wan, target_is_directory=True)
    (models / "LLM" / CRITIC_NAME).symlink_to(tiny_models.qwen, target_is_directory=True)
    write_tiny_wan_native(tiny_models.wan, models / "diffusion_models" / TINY_UNET)
    return comfy.start()


def api_prompt(path: Path, pack_nodes) -> dict:
    workflow_tools = importlib.import_module(f"{pack_nodes.__name__}.workflow")
    specs = {node.SPEC.node_id: node.SPEC for node in pack_nodes.NODES}
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

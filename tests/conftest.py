"""Shared fixtures: tiny model folders written once per test session (no network); the pack imported as
ComfyUI imports it; the local host with the tiny models loaded (node tests); the tiny models, questions and a
few-step `TrainConfig` (trainer tests)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from drf_core.tiny import TinyModelPaths, write_tiny_models

torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModelPaths:
    """Tiny Wan and Qwen2.5-VL folders, written by `drf_core.tiny` into a session temp dir."""
    logging.getLogger("drf_core").setLevel(logging.INFO)
    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A tiny random Qwen2 causal LM with the tiny Qwen tokenizer, saved as an ordinary folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from drf_core.tiny import build_tiny_qwen_tokenizer

    folder = tmp_path_factory.mktemp("tiny_qwen2_lm")
    tokenizer = build_tiny_qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(tiny_models):
    return tiny_models.qwen


@pytest.fixture(scope="module")
def critic(qwen_dir):
    from drf_core.critics import load_critic

    return load_critic(qwen_dir, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def processor(qwen_dir):
    """The official Qwen2.5-VL processor of the tiny folder (the reference our preprocessing must equal)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen_dir, local_files_only=True)


@pytest.fixture
def float64_throughout(monkeypatch):
    """transformers rounds RMS norms and the vision rotary embedding to float32 even in a float64 model, which
    buries central differences in rounding noise; keep those two spots in the input dtype for the check."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling

    def rms_norm(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    def rotary(q, k, cos, sin):
        cos, sin = cos.unsqueeze(-2).to(q.dtype), sin.unsqueeze(-2).to(q.dtype)
        return q * cos + modeling.rotate_half(q) * sin, k * cos + modeling.rotate_half(k) * sin

    monkeypatch.setattr(modeling.Qwen2_5_VLRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb_vision", rotary)


REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_diffusiondrf"


def import_pack():
    """The repository imported as one package, the way ComfyUI imports a node pack folder.

    The nodes reach the engine with relative imports (`from ..drf_core import api`), so they need
    the pack as their parent package. Returns `(pack, nodes)` modules; the engine is then also
    `comfyui_diffusiondrf.drf_core` (a second copy beside the top-level `drf_core` other tests use).
    """
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME], importlib.import_module(f"{PACK_NAME}.nodes")


@pytest.fixture(scope="session")
def pack_nodes():
    """The `nodes` package of this pack (see `import_pack`)."""
    logging.getLogger(PACK_NAME).setLevel(logging.INFO)
    return import_pack()[1]


@pytest.fixture(scope="session")
def comfy_root(tiny_models, tmp_path_factory) -> Path:
    """A ComfyUI-like folder tree whose models are the tiny ones under the real models' names.

    `models/diffusers/Wan2.1-T2V-1.3B-Diffusers` and `models/LLM/Qwen2.5-VL-7B-Instruct` link to
    the tiny folders, so the example workflows run unchanged apart from their sizes.
    """
    root = tmp_path_factory.mktemp("comfy_root")
    (root / "models" / "diffusers").mkdir(parents=True)
    (root / "models" / "LLM").mkdir(parents=True)
    (root / "models" / "loras").mkdir(parents=True)
    (root / "models" / "diffusers" / "Wan2.1-T2V-1.3B-Diffusers").symlink_to(tiny_models.wan, target_is_directory=True)
    (root / "models" / "LLM" / "Qwen2.5-VL-7B-Instruct").symlink_to(tiny_models.qwen, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def comfy_template_models(tmp_path_factory) -> Path:
    """The tiny text encoder and the Wan VAE under the names ComfyUI's Wan template loads (written once)."""
    from tests.comfy_pack import template_models

    return template_models(tmp_path_factory.mktemp("template_models"))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, tiny_models, pack_nodes):
    """One real ComfyUI per test module, serving this pack with the tiny models (skipped without COMFYUI_DIR)."""
    from tests.comfy_pack import start_pack_server

    template_dir = request.getfixturevalue("comfy_template_models")
    comfy = start_pack_server(
        tmp_path_factory.mktemp("comfyui"), tmp_path_factory.mktemp("extra_models"), tiny_models, template_dir
    )
    yield comfy
    comfy.stop()


# --- the pack's nodes run through the local host (tests/test_nodes*.py) --------------------------------------------
NODE_PROMPT = "a red ball rolls across green grass"


@pytest.fixture(scope="module")
def local(pack_nodes):
    """`nodes.local`: the host that runs the pack's nodes without ComfyUI."""
    return importlib.import_module(f"{PACK_NAME}.nodes.local")


@pytest.fixture()
def root(comfy_root, tmp_path):
    """A private copy of the ComfyUI-like tree (models stay links), so written files never collide."""
    copy = tmp_path / "comfy"
    shutil.copytree(comfy_root, copy, symlinks=True)
    return copy


@pytest.fixture()
def ctx(local, root):
    return local.LocalContext(local.LocalFolders(root))


def run_node(pack_nodes, local, ctx, node_id: str, **inputs):
    """Run one of the pack's nodes by id through the local host."""
    return local.run_node(pack_nodes.NODES_BY_ID[node_id], ctx, **inputs)


@pytest.fixture()
def loaded(pack_nodes, local, ctx):
    """Handles for the tiny video model and critic (fp32, CPU), questions for NODE_PROMPT, small reward settings."""
    video = run_node(
        pack_nodes, local, ctx, "DRFLoadVideoModel", model="Wan2.1-T2V-1.3B-Diffusers", dtype="fp32", device="cpu"
    )
    critic = run_node(
        pack_nodes, local, ctx, "DRFLoadVLMCritic", model="Qwen2.5-VL-7B-Instruct", dtype="fp32", device="cpu"
    )
    questions = run_node(pack_nodes, local, ctx, "DRFDecomposePrompt", prompts=NODE_PROMPT)
    reward = run_node(pack_nodes, local, ctx, "DRFRewardSettings", critic_width=28, critic_height=28, frame_count=1)
    return {
        "video_model": video.outputs[0],
        "critic": critic.outputs[0],
        "questions": questions.outputs[0],
        "reward": reward.outputs[0],
    }


# --- the engine's trainer on the tiny models (tests/test_trainer.py, test_guards.py) ------------------------------
TRAIN_PROMPT = "two red apples on a wooden table, the camera slowly pans left"


@pytest.fixture(scope="module")
def models(tiny_models):
    """The tiny video model and critic (fp32, CPU), shared by one test module."""
    from drf_core.critics import load_critic
    from drf_core.models import load_video_backend

    return load_video_backend(tiny_models.wan, "fp32", "cpu"), load_critic(tiny_models.qwen, "fp32", "cpu")


@pytest.fixture()
def fresh(models):
    """The shared models with any adapter from a previous test removed (before and after)."""
    from drf_core.lora import remove_lora

    backend, critic = models
    remove_lora(backend.denoiser)
    yield backend, critic
    remove_lora(backend.denoiser)


@pytest.fixture(scope="module")
def questions():
    from drf_core.decompose import decompose

    return decompose(TRAIN_PROMPT)


def small_train_config(**overrides):
    """A `TrainConfig` for a few steps on the tiny models (32x32x5, T=4, K=2, rank 4)."""
    from drf_core.config import (
        CriticInputConfig,
        DecodeConfig,
        LoRAConfig,
        OptimizerConfig,
        SamplerConfig,
        TrainConfig,
        VideoSpec,
    )

    values = dict(
        prompts=[TRAIN_PROMPT],
        steps=4,
        seed=0,
        video=VideoSpec(32, 32, 5),
        sampler=SamplerConfig(num_inference_steps=4, truncated_backprop_steps=2, guidance_scale=3.0),
        decode=DecodeConfig("all", 1, True),
        critic_input=CriticInputConfig(height=28, width=28),
        lora=LoRAConfig(rank=4, alpha=4.0, target_preset="attention_ffn"),
        optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=2),
        checkpoint_interval=2,
    )
    values.update(overrides)
    return TrainConfig(**values)

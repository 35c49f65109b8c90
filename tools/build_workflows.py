"""Write the example workflows in `workflows/` (ComfyUI UI format 0.4) from the nodes' own specs.

    python tools/build_workflows.py            # (re)write every workflow file
    python tools/build_workflows.py --check    # exit 1 when a file differs from what would be written

Every workflow is built with `nodes.workflow.WorkflowBuilder`, so widget order and count, the seeds'
"control after generate" values and link types always match the node specs. Run this again after
changing a node's inputs: tests/test_workflows.py fails until the files are regenerated. Nodes sit in
columns from left to right, spaced by their sizes (plus room for multiline text boxes and previews);
a Markdown note in each workflow tells an artist what to do.

Three workflows load Wan with ComfyUI's core loaders under the file names of ComfyUI's own Wan 2.1
text-to-video template (`load_comfy_models`), two load Wan 2.2 (TI2V-5B; A14B's two experts) with the files
and settings of ComfyUI's own Wan 2.2 templates (`ComfyWanTemplate`), one loads Flux dev as its template does;
the main training workflow keeps the diffusers loader, so it is the same run as the command line's. Knows the
seven example graphs and their real-GPU settings; nothing about running them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger("build_workflows")

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO_ROOT / "workflows"
PACK_NAME = "comfyui_diffusiondrf"  # the name tests/conftest.py imports the pack under


def import_pack() -> ModuleType:
    """The pack's `nodes` package, imported the way ComfyUI imports a node pack folder (as conftest does).

    The nodes reach the engine with relative imports (`from ..drf_core import api`), so they need the
    repository as their parent package.
    """
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_NAME}.nodes")


_WORKFLOW_TOOLS = importlib.import_module(f"{import_pack().__name__}.workflow")
WorkflowBuilder = _WORKFLOW_TOOLS.WorkflowBuilder
check_workflow = _WORKFLOW_TOOLS.check_workflow

# --- settings shared by the examples (a real GPU; the tests shrink them) --------------------------------
VIDEO_MODEL_NAME = "Wan2.1-T2V-1.3B-Diffusers"
# The files ComfyUI's own Wan 2.1 text-to-video template loads, and its shift.
COMFY_DIFFUSION_MODEL = "wan2.1_t2v_1.3B_fp16.safetensors"
COMFY_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
COMFY_VAE = "wan_2.1_vae.safetensors"
COMFY_SHIFT = 8.0


@dataclass(frozen=True)
class ComfyWanTemplate:
    """The files and sampling settings of one of ComfyUI's own Wan templates (package comfyui_workflow_templates)."""

    diffusion_models: tuple[str, ...]  # one MODEL, or Wan 2.2 A14B's high-noise and low-noise experts
    vae: str
    shift: float  # ModelSamplingSD3, on every MODEL
    sampler_name: str
    scheduler: str
    steps: int
    cfg: float
    video: dict[str, int]  # the template's empty latent: width, height, num_frames
    fps: float  # its CreateVideo
    low_noise_from: float | None = None  # A14B: the share of the steps the high-noise expert runs
    text_encoder: str = COMFY_TEXT_ENCODER

    def video_model_widgets(self) -> dict[str, Any]:
        widgets: dict[str, Any] = {"sampler_name": self.sampler_name, "scheduler": self.scheduler}
        if self.low_noise_from is not None:  # the expert the LoRA trains: the one to apply it to
            widgets.update(low_noise_from=self.low_noise_from, trained_expert="low_noise")
        return widgets


# Wan 2.1 text-to-video (text_to_video_wan.json): the files, shift, sampler and scheduler of the three Wan 2.1
# core-loader workflows (which sample with their own DENOISING_STEPS, GUIDANCE_SCALE and VIDEO_SIZE).
WAN21_TEMPLATE = ComfyWanTemplate(
    (COMFY_DIFFUSION_MODEL,),
    COMFY_VAE,
    COMFY_SHIFT,
    "uni_pc",
    "simple",
    30,
    6.0,
    {"width": 832, "height": 480, "num_frames": 33},
    16.0,
)
# Wan 2.2 TI2V-5B (video_wan2_2_5B_ti2v.json): KSampler 20 steps, cfg 5, uni_pc, simple; ModelSamplingSD3 8;
# Wan22ImageToVideoLatent 1280 x 704 x 121 (no start image: text to video); CreateVideo 24 fps.
TI2V_TEMPLATE = ComfyWanTemplate(
    ("wan2.2_ti2v_5B_fp16.safetensors",),
    "wan2.2_vae.safetensors",
    8.0,
    "uni_pc",
    "simple",
    20,
    5.0,
    {"width": 1280, "height": 704, "num_frames": 121},
    24.0,
)
# Wan 2.2 A14B text-to-video (video_wan2_2_14B_t2v.json), its group without the 4-step Lightning LoRA: the two
# fp8_scaled experts each through ModelSamplingSD3 8, two KSamplerAdvanced (euler, simple, 20 steps, cfg 3.5) with
# the high-noise expert on steps 0-10 and the low-noise one from 10: low_noise_from 0.5; 640 x 640 x 81, 16 fps.
A14B_TEMPLATE = ComfyWanTemplate(
    ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
    COMFY_VAE,
    8.0,
    "euler",
    "simple",
    20,
    3.5,
    {"width": 640, "height": 640, "num_frames": 81},
    16.0,
    low_noise_from=10 / 20,
)
EXPERT_TITLES = ("high noise", "low noise")

# The files ComfyUI's own Flux dev text-to-image template loads, and its sampling (euler, simple, cfg 1,
# guidance 3.5: Flux's default when the conditioning names none, which Video Model from ComfyUI's CLIP gives).
FLUX_DIFFUSION_MODEL = "flux1-dev.safetensors"
FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
FLUX_VAE = "ae.safetensors"
FLUX_RUN_NAME = "flux_drf"
FLUX_LORA_PREFIX = "drf/flux_drf"
FLUX_PROMPT = "two red apples and a glass of water on a wooden table, soft morning light"
IMAGE_SIZE = {"width": 1024, "height": 1024, "num_frames": 1}
CRITIC_NAME = "Qwen2.5-VL-7B-Instruct"
VIDEO_SIZE = {"width": 832, "height": 480, "num_frames": 33}
DENOISING_STEPS = 20
GUIDANCE_SCALE = 5.0
SEED = 42
TRAINING = {
    "learning_rate": 1e-4,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "truncated_backprop_steps": 1,
    "checkpoint_interval": 50,
    "guidance_scale": GUIDANCE_SCALE,
    "seed": SEED,
    "resume": True,
    **VIDEO_SIZE,
    "num_inference_steps": DENOISING_STEPS,
}
SAMPLING = {**VIDEO_SIZE, "steps": DENOISING_STEPS, "guidance_scale": GUIDANCE_SCALE, "seed": SEED}
MAIN_RUN_NAME = "wan_drf"
MAIN_LORA_PREFIX = "drf/wan_drf"
MAIN_LORA_FILE = f"{MAIN_LORA_PREFIX}_00001.safetensors"  # what Save LoRA writes first
SINGLE_RUN_NAME = "single_prompt"
SINGLE_LORA_PREFIX = "drf/single_prompt"
TRAINING_PROMPTS = (
    "a red fox runs across a snowy field at sunrise",
    "a glass of water tips over and the water spills across a wooden table",
    "two dogs play tug of war with a rope on a sandy beach",
)
TI2V_PROMPT = "a street musician plays guitar in a dim subway station while commuters hurry past"
TI2V_RUN_NAME = "wan22_ti2v_5b"
TI2V_LORA_PREFIX = "drf/wan22_ti2v_5b"
A14B_RUN_NAME = "wan22_a14b_low_noise"
A14B_LORA_PREFIX = "drf/wan22_a14b"  # Save LoRA adds the expert: drf/wan22_a14b_low_noise_00001
TEMPLATE_TRAINING_STEPS = 200
CRITIQUE_PROMPT = "a basketball bounces three times on a wooden gym floor"
SINGLE_PROMPT = "a paper boat floats down a small stream in the rain"

# --- layout ----------------------------------------------------------------------------------------------
COLUMN_GAP = 80  # between columns
ROW_GAP = 70  # between nodes in a column (the title bar sits above a node's pos)
MULTILINE_HEIGHT = 60  # extra height per multiline text box
PREVIEW_HEIGHT = 240  # room for the images or video a node shows once it ran
WIDE_NODE = 560  # nodes that show side-by-side videos
NOTE_SIZE = (420, 330)

MODEL_FOLDERS_MD = (
    f"Put **{VIDEO_MODEL_NAME}** (the whole diffusers folder) in `models/diffusers/` and "
    f"**{CRITIC_NAME}** in `models/vlm/` or `models/LLM/`, then press **R** to refresh the lists."
)
COMFY_MODEL_FOLDERS_MD = (
    f"The Wan files of ComfyUI's own Wan 2.1 text-to-video template: `{COMFY_DIFFUSION_MODEL}` in "
    f"`models/diffusion_models/`, `{COMFY_TEXT_ENCODER}` in `models/text_encoders/`, `{COMFY_VAE}` in "
    f"`models/vae/`. Add **{CRITIC_NAME}** (the whole folder) in `models/vlm/` or `models/LLM/`, then press "
    "**R** to refresh the lists."
)


@dataclass
class ColumnLayout:
    """Places nodes top to bottom in a column; `next_column()` starts the next one to the right."""

    builder: Any  # WorkflowBuilder
    x: int = 0
    y: int = 0
    column_width: int = 0

    def next_column(self) -> None:
        self.x += self.column_width + COLUMN_GAP
        self.y = 0
        self.column_width = 0

    def add(
        self,
        node_id: str,
        widgets: Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        preview: bool = False,
        node_width: int | None = None,
    ) -> int:
        """Place `node_id` below the column's last node. Widget values come as a dict, so widgets named like
        layout settings (`width`, `height`) can never be taken for them."""
        number = self.builder.add(node_id, (self.x, self.y), widgets, title)
        node = self.builder.nodes[number - 1]
        spec = self.builder.specs[node_id]
        multiline = sum(1 for item in spec.inputs if item.is_widget and item.multiline)
        node["size"][1] += MULTILINE_HEIGHT * multiline + (PREVIEW_HEIGHT if preview else 0)
        if node_width is not None:
            node["size"][0] = node_width
        return self._placed(node)

    def note(self, text: str, size: tuple[int, int] = NOTE_SIZE) -> int:
        number = self.builder.note((self.x, self.y), text, size)
        return self._placed(self.builder.nodes[number - 1])

    def _placed(self, node: dict[str, Any]) -> int:
        self.y += node["size"][1] + ROW_GAP
        self.column_width = max(self.column_width, node["size"][0])
        return node["id"]


def load_models(layout: ColumnLayout, critic: bool = True) -> tuple[int, int | None]:
    """Load Video Model (a diffusers folder) and Load VLM Critic, in the current column."""
    video = layout.add("DRFLoadVideoModel", {"model": VIDEO_MODEL_NAME, "dtype": "auto", "device": "auto"})
    if not critic:
        return video, None
    return video, layout.add("DRFLoadVLMCritic", {"model": CRITIC_NAME, "dtype": "auto", "device": "auto"})


def load_comfy_models(
    layout: ColumnLayout, critic: bool = True, template: ComfyWanTemplate | None = None
) -> tuple[int, int | None]:
    """Core Load Diffusion Model -> ModelSamplingSD3 (one pair per expert), Load CLIP and Load VAE, as one of
    ComfyUI's Wan templates sets them (default: Wan 2.1's), into Video Model from ComfyUI, and Load VLM Critic: the
    loaders in the current column, the shifts (and the critic) in the next, Video Model from ComfyUI in the one
    after, where the caller goes on. With two experts the first is the high-noise one (`model`), the second the
    low-noise one (`model_low_noise`)."""
    template = WAN21_TEMPLATE if template is None else template
    experts = len(template.diffusion_models) == 2
    titles = EXPERT_TITLES if experts else (None,)
    unets = [
        layout.add(
            "UNETLoader", {"unet_name": name, "weight_dtype": "default"}, title=_titled("Load Diffusion Model", t)
        )
        for name, t in zip(template.diffusion_models, titles, strict=True)
    ]
    clip = layout.add("CLIPLoader", {"clip_name": template.text_encoder, "type": "wan", "device": "default"})
    vae = layout.add("VAELoader", {"vae_name": template.vae})
    layout.next_column()
    shifts = [
        layout.add("ModelSamplingSD3", {"shift": template.shift}, title=_titled("ModelSamplingSD3", t)) for t in titles
    ]
    critic_node = None
    if critic:
        critic_node = layout.add("DRFLoadVLMCritic", {"model": CRITIC_NAME, "dtype": "auto", "device": "auto"})
    layout.next_column()
    video = layout.add("DRFVideoModelFromComfy", template.video_model_widgets())
    connect = layout.builder.connect
    for unet, shift, model_input in zip(unets, shifts, ("model", "model_low_noise"), strict=False):
        connect(unet, "MODEL", shift, "model")
        connect(shift, "MODEL", video, model_input)
    connect(clip, "CLIP", video, "clip")
    connect(vae, "VAE", video, "vae")
    return video, critic_node


def _titled(node_name: str, expert: str | None) -> str | None:
    return None if expert is None else f"{node_name}: {expert}"


def questions_and_reward(
    layout: ColumnLayout, prompts: str, critic: int, reward_widgets: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """Decompose Prompt over Reward Settings, in the current column. The connected critic writes the
    questions ("llm"); the node falls back to the rules' questions, and says why, when its reply is unusable."""
    questions = layout.add("DRFDecomposePrompt", {"prompts": prompts, "method": "llm"})
    layout.builder.connect(critic, "critic", questions, "critic")
    return questions, layout.add("DRFRewardSettings", reward_widgets)


def connect_training(layout: ColumnLayout, video: int, critic: int, questions: int, reward: int, train: int) -> None:
    for source, output, name in (
        (video, "video_model", "video_model"),
        (critic, "critic", "critic"),
        (questions, "questions", "questions"),
        (reward, "reward", "reward"),
    ):
        layout.builder.connect(source, output, train, name)


def before_after(layout: ColumnLayout, video: int, lora: int, sampling: dict[str, Any]) -> None:
    """Base and LoRA Sample Video (same widgets, so the same noise) and Compare Side by Side, column by column;
    the base sampler goes into the current column."""
    base = layout.add("DRFSampleVideo", sampling, title="Sample Video: base", preview=True)
    layout.next_column()
    tuned = layout.add("DRFSampleVideo", sampling, title="Sample Video: LoRA", preview=True)
    layout.next_column()
    widgets = {"left_label": "base", "right_label": "LoRA"}
    compare = layout.add("DRFCompareSideBySide", widgets, preview=True, node_width=WIDE_NODE)
    connect = layout.builder.connect
    connect(video, "video_model", base, "video_model")
    connect(video, "video_model", tuned, "video_model")
    connect(lora, "lora", tuned, "lora")
    connect(base, "frames", compare, "left")
    connect(tuned, "frames", compare, "right")


def load_flux_models(layout: ColumnLayout) -> tuple[int, int]:
    """Core Load Diffusion Model, DualCLIPLoader and Load VAE with the Flux dev template's files into Video
    Model from ComfyUI (euler, simple), and Load VLM Critic: loaders in the current column, the rest in the next."""
    unet = layout.add("UNETLoader", {"unet_name": FLUX_DIFFUSION_MODEL, "weight_dtype": "default"})
    clip_l, t5 = FLUX_TEXT_ENCODERS
    clip = layout.add("DualCLIPLoader", {"clip_name1": clip_l, "clip_name2": t5, "type": "flux", "device": "default"})
    vae = layout.add("VAELoader", {"vae_name": FLUX_VAE})
    layout.next_column()
    video = layout.add("DRFVideoModelFromComfy", {"sampler_name": "euler", "scheduler": "simple"})
    critic = layout.add("DRFLoadVLMCritic", {"model": CRITIC_NAME, "dtype": "auto", "device": "auto"})
    connect = layout.builder.connect
    connect(unet, "MODEL", video, "model")
    connect(clip, "CLIP", video, "clip")
    connect(vae, "VAE", video, "vae")
    return video, critic


# --- the workflows -----------------------------------------------------------------------------------------
WorkflowRecipe = Callable[[ColumnLayout], None]
WORKFLOWS: dict[str, WorkflowRecipe] = {}


def workflow(filename: str) -> Callable[[WorkflowRecipe], WorkflowRecipe]:
    def register(recipe: WorkflowRecipe) -> WorkflowRecipe:
        if filename in WORKFLOWS:
            raise ValueError(f"workflow {filename} is defined twice")
        WORKFLOWS[filename] = recipe
        return recipe

    return register


@workflow("drf_train_wan_lora.json")
def train_wan_lora(layout: ColumnLayout) -> None:
    layout.note(
        "## Fine-tune Wan 2.1 with a VLM critic (Diffusion-DRF)\n"
        f"1. {MODEL_FOLDERS_MD}\n"
        "2. Write your prompts in **Decompose Prompt**, one per line: the critic writes yes/no questions about "
        "each (checked, repaired, or replaced by the rule-based ones; the node says which) and rewards them.\n"
        "3. Queue. **Train LoRA** shows each step's reward per aspect and a frame of the video it scored; "
        f"a checkpoint is saved every 50 steps in `output/drf_runs/{MAIN_RUN_NAME}`.\n"
        "4. **Interrupt** at any time saves a checkpoint; **queue again** (resume on) to continue from it.\n"
        f"5. At the end **Save LoRA** writes `models/loras/{MAIN_LORA_FILE}` (ComfyUI's LoraLoaderModelOnly "
        "applies it) and **Reward Curves** should go up."
    )
    video, critic = load_models(layout)
    layout.next_column()
    questions, reward = questions_and_reward(layout, "\n".join(TRAINING_PROMPTS), critic)
    layout.next_column()
    train = layout.add("DRFTrainLoRA", {"run_name": MAIN_RUN_NAME, "steps": 300, **TRAINING}, preview=True)
    layout.next_column()
    save = layout.add("DRFSaveLoRA", {"filename_prefix": MAIN_LORA_PREFIX, "format": "comfyui", "dtype": "fp32"})
    curves = layout.add("DRFRewardCurves", {"title": "Diffusion-DRF reward"}, preview=True, node_width=WIDE_NODE)
    connect_training(layout, video, critic, questions, reward, train)
    layout.builder.connect(train, "lora", save, "lora")
    layout.builder.connect(train, "metrics", curves, "metrics")


@workflow("drf_critique_video.json")
def critique_video(layout: ColumnLayout) -> None:
    layout.note(
        "## Ask the critic what is wrong with a video\n"
        f"1. {COMFY_MODEL_FOLDERS_MD}\n"
        "2. Write the same prompt in **Sample Video** and **Decompose Prompt**.\n"
        "3. Queue. **Critique Video** shows a report (every question, its score and the critic's own words), "
        "a score chart, and heatmaps of where each aspect's reward would rise most if the pixels changed.\n"
        "4. The reward here is the one Train LoRA maximises: low-scoring questions show what a fine-tune will fix."
    )
    video, critic = load_comfy_models(layout)
    layout.next_column()
    questions, reward = questions_and_reward(layout, CRITIQUE_PROMPT, critic)
    layout.next_column()
    sample = layout.add("DRFSampleVideo", {"prompt": CRITIQUE_PROMPT, **SAMPLING}, preview=True)
    layout.next_column()
    critique_widgets = {"explain": True, "heatmaps": True, "max_new_tokens": 64}
    critique = layout.add("DRFCritiqueVideo", critique_widgets, preview=True, node_width=WIDE_NODE)
    connect = layout.builder.connect
    connect(video, "video_model", sample, "video_model")
    connect(critic, "critic", critique, "critic")
    connect(sample, "frames", critique, "frames")
    connect(questions, "questions", critique, "questions")
    connect(reward, "reward", critique, "reward")


@workflow("drf_compare_base_vs_lora.json")
def compare_base_vs_lora(layout: ColumnLayout) -> None:
    layout.note(
        "## Before / after: the base model next to your LoRA\n"
        f"1. The Wan files of ComfyUI's own Wan 2.1 text-to-video template (`{COMFY_DIFFUSION_MODEL}`, "
        f"`{COMFY_TEXT_ENCODER}`, `{COMFY_VAE}`); the LoRA comes from a training workflow "
        f"(`models/loras/{MAIN_LORA_FILE}`). Press **R** and pick it in **Load LoRA**.\n"
        "2. Both **Sample Video** nodes use the same prompt and seed, so they start from the same noise: "
        "every difference comes from the LoRA.\n"
        "3. Queue. **Compare Side by Side** plays base (left) and LoRA (right) together.\n"
        "4. Try lora_strength between 0.5 and 1.5, or a prompt the LoRA was not trained on. In your own graphs, "
        "core **LoraLoaderModelOnly** applies the same file to the MODEL and **KSampler** gives the same video."
    )
    video, _ = load_comfy_models(layout, critic=False)
    lora = layout.add("DRFLoadLoRA", {"lora_name": MAIN_LORA_FILE, "family": "wan"})
    layout.next_column()
    before_after(layout, video, lora, {"prompt": TRAINING_PROMPTS[0], "lora_strength": 1.0, **SAMPLING})


@workflow("drf_single_prompt_finetune.json")
def single_prompt_finetune(layout: ColumnLayout) -> None:
    layout.note(
        "## Single-prompt fine-tuning, with before / after\n"
        f"1. {COMFY_MODEL_FOLDERS_MD}\n"
        "2. Write one prompt in **Decompose Prompt** and the same prompt in both **Sample Video** nodes.\n"
        "3. Queue. **Train LoRA** fine-tunes on that prompt only (200 steps; progress, reward and a preview frame "
        "on the node); **Save LoRA** keeps the result in `models/loras/drf/`.\n"
        "4. **Compare Side by Side** then shows the base model (left) and the trained LoRA (right) from the same "
        "noise.\n"
        "5. **Interrupt** saves a checkpoint; **queue again** to resume. **Training Options** holds the advanced "
        "settings."
    )
    video, critic = load_comfy_models(layout)
    layout.next_column()
    questions, reward = questions_and_reward(layout, SINGLE_PROMPT, critic)
    options_widgets = {
        "target_preset": "attention",
        "warmup_steps": 10,
        "release_text_encoder": False,
        "held_out_every": 20,
        "early_stop_patience": 5,
    }
    options = layout.add("DRFTrainingOptions", options_widgets)
    layout.next_column()
    train = layout.add("DRFTrainLoRA", {"run_name": SINGLE_RUN_NAME, "steps": 200, **TRAINING}, preview=True)
    layout.next_column()
    save = layout.add("DRFSaveLoRA", {"filename_prefix": SINGLE_LORA_PREFIX, "format": "comfyui", "dtype": "fp32"})
    connect_training(layout, video, critic, questions, reward, train)
    layout.builder.connect(options, "options", train, "options")
    layout.builder.connect(train, "lora", save, "lora")
    before_after(layout, video, train, {"prompt": SINGLE_PROMPT, **SAMPLING})


@workflow("drf_flux_image_finetune.json")
def flux_image_finetune(layout: ColumnLayout) -> None:
    layout.note(
        "## Fine-tune Flux dev on images (Diffusion-DRF)\n"
        f"1. The files of ComfyUI's own Flux dev template: `{FLUX_DIFFUSION_MODEL}` in `models/diffusion_models/`, "
        f"`{FLUX_TEXT_ENCODERS[0]}` and `{FLUX_TEXT_ENCODERS[1]}` in `models/text_encoders/`, `{FLUX_VAE}` in "
        f"`models/vae/`. Add **{CRITIC_NAME}** in `models/vlm/` or `models/LLM/`, then press **R**.\n"
        "2. Sampling is the template's: euler, simple, cfg 1.0, guidance 3.5. Each sample is one image: the "
        "critic looks at a picture and questions about motion are left out.\n"
        "3. Queue. **Train LoRA** shows each step's reward and the image it scored. **Interrupt** saves a "
        "checkpoint; **queue again** to resume.\n"
        f"4. **Save LoRA** writes `models/loras/{FLUX_LORA_PREFIX}_00001.safetensors`: core LoraLoaderModelOnly "
        "applies it to the Flux MODEL."
    )
    video, critic = load_flux_models(layout)
    layout.next_column()
    questions, reward = questions_and_reward(layout, FLUX_PROMPT, critic)
    layout.next_column()
    widgets = {**TRAINING, **IMAGE_SIZE, "guidance_scale": 1.0, "run_name": FLUX_RUN_NAME, "steps": 200}
    train = layout.add("DRFTrainLoRA", widgets, preview=True)
    layout.next_column()
    save = layout.add("DRFSaveLoRA", {"filename_prefix": FLUX_LORA_PREFIX, "format": "comfyui", "dtype": "fp32"})
    connect_training(layout, video, critic, questions, reward, train)
    layout.builder.connect(train, "lora", save, "lora")


def template_files_md(template: ComfyWanTemplate, name: str) -> str:
    """Where each file of `template` goes, and the critic, for a note's first step."""
    models = " and ".join(f"`{file}`" for file in template.diffusion_models)
    return (
        f"The files of ComfyUI's own {name} template: {models} in `models/diffusion_models/`, "
        f"`{template.text_encoder}` in `models/text_encoders/`, `{template.vae}` in `models/vae/`. Add "
        f"**{CRITIC_NAME}** in `models/vlm/` or `models/LLM/`, then press **R**."
    )


def template_training(template: ComfyWanTemplate, run_name: str) -> dict[str, Any]:
    """Train LoRA's widgets: the shared settings at the template's size, steps and cfg."""
    return {
        **TRAINING,
        **template.video,
        "num_inference_steps": template.steps,
        "guidance_scale": template.cfg,
        "run_name": run_name,
        "steps": TEMPLATE_TRAINING_STEPS,
    }


@workflow("drf_wan22_ti2v_5b_finetune.json")
def wan22_ti2v_5b_finetune(layout: ColumnLayout) -> None:
    t = TI2V_TEMPLATE
    size = f"{t.video['width']} x {t.video['height']}, {t.video['num_frames']} frames"
    layout.note(
        "## Fine-tune Wan 2.2 TI2V-5B (text to video), with before / after\n"
        f"1. {template_files_md(t, 'Wan 2.2 5B')}\n"
        f"2. The template's settings: {t.sampler_name}, {t.scheduler}, {t.steps} steps, cfg {t.cfg:g}, shift "
        f"{t.shift:g}, {size}; **Reward Settings** tells the critic {t.fps:g} fps. Write one prompt in "
        "**Decompose Prompt** and the same prompt in both **Sample Video** nodes.\n"
        f"3. Queue. **Train LoRA** fine-tunes on it ({TEMPLATE_TRAINING_STEPS} steps; reward and a preview frame "
        f"on the node); **Save LoRA** writes `models/loras/{TI2V_LORA_PREFIX}_00001.safetensors`: core "
        "LoraLoaderModelOnly applies it to the 5B MODEL.\n"
        "4. **Compare Side by Side** then shows the base model (left) and the LoRA (right) from the same noise.\n"
        "5. **Interrupt** saves a checkpoint; **queue again** to resume."
    )
    video, critic = load_comfy_models(layout, template=t)
    layout.next_column()
    questions, reward = questions_and_reward(layout, TI2V_PROMPT, critic, {"video_fps": t.fps})
    layout.next_column()
    train = layout.add("DRFTrainLoRA", template_training(t, TI2V_RUN_NAME), preview=True)
    layout.next_column()
    save = layout.add("DRFSaveLoRA", {"filename_prefix": TI2V_LORA_PREFIX, "format": "comfyui", "dtype": "fp32"})
    connect_training(layout, video, critic, questions, reward, train)
    layout.builder.connect(train, "lora", save, "lora")
    sampling = {"prompt": TI2V_PROMPT, **t.video, "steps": t.steps, "guidance_scale": t.cfg, "seed": SEED}
    before_after(layout, video, train, sampling)


@workflow("drf_wan22_a14b_finetune.json")
def wan22_a14b_finetune(layout: ColumnLayout) -> None:
    t = A14B_TEMPLATE
    high_steps = round(t.low_noise_from * t.steps)
    layout.note(
        "## Fine-tune Wan 2.2 A14B's low-noise expert (Diffusion-DRF)\n"
        f"1. {template_files_md(t, 'Wan 2.2 14B text-to-video')}\n"
        f"2. The template's settings (without the 4-step LoRA): shift {t.shift:g} on each expert, "
        f"{t.sampler_name}, {t.scheduler}, {t.steps} steps, cfg {t.cfg:g}, the high-noise expert for the first "
        f"{high_steps} steps (`low_noise_from` {t.low_noise_from:g}), {t.video['width']} x {t.video['height']}, "
        f"{t.video['num_frames']} frames, {t.fps:g} fps.\n"
        "3. Queue. **Train LoRA** trains the **low-noise** expert (`trained_expert`) on your prompts and shows each "
        "step's reward and a preview frame. **Interrupt** saves a checkpoint; **queue again** to resume.\n"
        f"4. **Save LoRA** writes `models/loras/{A14B_LORA_PREFIX}_low_noise_00001.safetensors`. Apply it with core "
        "**LoraLoaderModelOnly** on the **low-noise MODEL only** (after its Load Diffusion Model); leave the "
        "high-noise MODEL as it is. (`trained_expert` both trains a LoRA per expert: Save LoRA then writes a "
        "`_high_noise_` file too, for the high-noise MODEL; it needs `truncated_backprop_steps` above the "
        "low-noise expert's steps and much more memory.)"
    )
    video, critic = load_comfy_models(layout, template=t)
    layout.next_column()
    questions, reward = questions_and_reward(layout, "\n".join(TRAINING_PROMPTS), critic, {"video_fps": t.fps})
    layout.next_column()
    train = layout.add("DRFTrainLoRA", template_training(t, A14B_RUN_NAME), preview=True)
    layout.next_column()
    save = layout.add("DRFSaveLoRA", {"filename_prefix": A14B_LORA_PREFIX, "format": "comfyui", "dtype": "fp32"})
    connect_training(layout, video, critic, questions, reward, train)
    layout.builder.connect(train, "lora", save, "lora")


# --- building and writing ----------------------------------------------------------------------------------
def node_specs() -> dict[str, Any]:
    """Node id -> `NodeSpec` of every node of the pack and of the ComfyUI core nodes the workflows use."""
    core = importlib.import_module(f"{import_pack().__name__}.core_specs").CORE_SPECS
    return {**core, **{node_id: node.SPEC for node_id, node in import_pack().NODES_BY_ID.items()}}


def build_workflow(recipe: WorkflowRecipe, specs: Mapping[str, Any]) -> dict[str, Any]:
    builder = WorkflowBuilder(specs)
    recipe(ColumnLayout(builder))
    return builder.build()


def build_all(specs: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """File name -> workflow, every one checked against the specs (a problem raises, nothing is written)."""
    specs = node_specs() if specs is None else specs
    workflows = {name: build_workflow(recipe, specs) for name, recipe in WORKFLOWS.items()}
    for name, built in workflows.items():
        problems = check_workflow(built, specs)
        if problems:
            raise ValueError(f"{name} does not fit the node specs:\n  " + "\n  ".join(problems))
    return workflows


def render(built: dict[str, Any]) -> str:
    """The file text: JSON, indent 2, trailing newline."""
    return json.dumps(built, indent=2, ensure_ascii=False) + "\n"


def stale_files(folder: Path, workflows: Mapping[str, dict[str, Any]]) -> list[str]:
    """Workflow files in `folder` that are missing or differ from `workflows`."""
    stale = []
    for name, built in workflows.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(built):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WORKFLOW_DIR, help="folder to write to (default: workflows/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workflows = build_all()
    if args.check:
        stale = stale_files(args.out, workflows)
        for name in stale:
            logger.error("%s is out of date: run python tools/build_workflows.py", args.out / name)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, built in workflows.items():
        (args.out / name).write_text(render(built), encoding="utf-8")
        logger.info("wrote %s (%d nodes, %d links)", args.out / name, len(built["nodes"]), len(built["links"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

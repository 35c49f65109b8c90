"""Save LoRA and Load LoRA: LoRA files in ComfyUI's `models/loras`.

Save writes ComfyUI's key layout by default (core LoraLoaderModelOnly applies it), atomically, under
a name that cannot leave the loras folder, and never over an existing file (a counter is added).
Load reads any layout this pack writes (and diffusers/kohya ones) for previews or to continue training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..drf_core import api
from ..drf_core.errors import DRFInputError
from ..drf_core.io import safe_child_path
from ..drf_core.lora import LORA_FORMATS, SAVE_DTYPES, LoRAWeights, read_lora_header
from ..drf_core.models import MODULE_NAME_MAPS
from .spec import LORA, Combo, DRFNode, NodeContext, NodeResult, NodeSpec, OutputSpec, Socket, String, category

LORA_FOLDER = "loras"
LORA_SUFFIX = ".safetensors"
COUNTER_DIGITS = 5


@dataclass(frozen=True)
class TrainedLoRAWire:
    """A LoRA on the wires: the weights (CPU), the model family they fit, where they came from."""

    weights: LoRAWeights
    family: str
    source: str

    def __str__(self) -> str:
        return f"LoRA rank {self.weights.rank} on {len(self.weights.modules)} layers ({self.family}, {self.source})"


def next_free_name(folder: Path, prefix: str) -> Path:
    """`folder/prefix_00001.safetensors`, one past the highest counter taken (ComfyUI's save-node habit).

    Names are compared without regard to case, so on Windows and macOS (case-insensitive file systems)
    `WAN_drf_00001` counts as taken for the prefix `wan_drf` and is never overwritten.
    """
    base = safe_child_path(folder, prefix, "")  # refuses names that leave the folder
    counter = re.compile(rf"{re.escape(base.name)}_(\d{{{COUNTER_DIGITS}}}){re.escape(LORA_SUFFIX)}", re.IGNORECASE)
    siblings = base.parent.iterdir() if base.parent.is_dir() else ()
    taken = [int(match.group(1)) for path in siblings if (match := counter.fullmatch(path.name))]
    return base.with_name(f"{base.name}_{max(taken, default=0) + 1:0{COUNTER_DIGITS}d}{LORA_SUFFIX}")


class SaveLoRA(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFSaveLoRA",
        display_name="Save LoRA (DRF)",
        category=category("lora"),
        description=(
            "Writes the trained LoRA into models/loras. The default 'comfyui' format is applied by ComfyUI's own "
            "LoraLoaderModelOnly (for Wan 2.2 A14B: on the low-noise model). Existing files are never overwritten."
        ),
        inputs=(
            Socket("lora", LORA, "The LoRA from Train LoRA (or Load LoRA, to convert it)."),
            String(
                "filename_prefix",
                "drf/wan_drf",
                "Name under models/loras; subfolders with '/'. A counter is added: drf/wan_drf_00001.safetensors.",
            ),
            Combo(
                "format",
                LORA_FORMATS.names(),
                "comfyui: keys ComfyUI's LoRA loaders apply. diffusers: for diffusers' load_lora_weights.",
                "comfyui",
            ),
            Combo(
                "dtype",
                SAVE_DTYPES.names(),
                "Precision of the saved weights (fp32 is exact; bf16 halves size).",
                "fp32",
            ),
        ),
        outputs=(OutputSpec("STRING", "lora_name", "The saved file's name as LoRA loaders list it."),),
        is_output_node=True,
    )

    @classmethod
    def run(cls, ctx: NodeContext, lora: TrainedLoRAWire, filename_prefix: str, format: str, dtype: str) -> NodeResult:
        if not filename_prefix.strip():
            raise DRFInputError("filename_prefix is empty; give a name such as drf/my_style")
        folder = ctx.folders.save_dir(LORA_FOLDER)
        path = next_free_name(folder, filename_prefix.strip())
        path.parent.mkdir(parents=True, exist_ok=True)
        api.save_trained_lora(lora.weights, path, lora.family, format, dtype)
        name = path.relative_to(folder).as_posix()
        return NodeResult((name,), text=f"saved {name} ({format}, {dtype}) in {folder}")


class LoadLoRA(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFLoadLoRA",
        display_name="Load LoRA (DRF)",
        category=category("lora"),
        description=(
            "Reads a LoRA from models/loras, to preview it with Sample Video or to continue training it "
            "(Train LoRA's initial_lora)."
        ),
        inputs=(
            Combo("lora_name", lambda folders: folders.list_files(LORA_FOLDER, (LORA_SUFFIX,)), "A .safetensors LoRA."),
            Combo(
                "family",
                MODULE_NAME_MAPS.names(),
                "The model family the LoRA is for, when its file does not say (files from this pack do).",
                "wan",
            ),
        ),
        outputs=(OutputSpec(LORA, "lora", "The LoRA, for Sample Video, Train LoRA or Save LoRA."),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, lora_name: str, family: str) -> NodeResult:
        path = ctx.folders.resolve(LORA_FOLDER, lora_name)
        if path.suffix != LORA_SUFFIX:
            raise DRFInputError(f"{lora_name}: only {LORA_SUFFIX} LoRA files can be read; convert it first")
        family = read_lora_header(path).get("family") or family
        weights = api.load_lora(path, family)
        wire = TrainedLoRAWire(weights, family, lora_name)
        return NodeResult((wire,), text=str(wire))

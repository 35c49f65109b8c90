"""Save LoRA and Load LoRA: LoRA files in ComfyUI's `models/loras`.

Save writes ComfyUI's key layout by default (core LoraLoaderModelOnly applies it), atomically, under
a name that cannot leave the loras folder, and never over an existing file (a counter is added).
Load reads any layout this pack writes (and diffusers/kohya ones) for previews or to continue training.
A LoRA trained on both Wan 2.2 A14B experts is saved as two files under one counter, one per expert, each
naming its partner; loading either file brings back both (`wan_experts.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..drf_core import api
from ..drf_core.errors import DRFInputError
from ..drf_core.io import safe_child_path
from ..drf_core.lora import LORA_FORMATS, SAVE_DTYPES, LoRAWeights, read_lora_header
from ..drf_core.models import MODULE_NAME_MAPS
from .spec import LORA, Combo, DRFNode, NodeContext, NodeResult, NodeSpec, OutputSpec, Socket, String, category
from .wan_experts import EXPERT_KEY, PAIR_KEY, join_experts, split_experts

logger = logging.getLogger(__name__)

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


def next_free_names(folder: Path, prefixes: Sequence[str]) -> list[Path]:
    """`folder/prefix_00001.safetensors` for each prefix, all with one counter, one past the highest any of
    them has taken (ComfyUI's save-node habit; a pair of files shares its number).

    Names are compared without regard to case, so on Windows and macOS (case-insensitive file systems)
    `WAN_drf_00001` counts as taken for the prefix `wan_drf` and is never overwritten.
    """
    bases = [safe_child_path(folder, prefix, "") for prefix in prefixes]  # refuses names that leave the folder
    taken = [0]
    for base in bases:
        counter = re.compile(rf"{re.escape(base.name)}_(\d{{{COUNTER_DIGITS}}}){re.escape(LORA_SUFFIX)}", re.IGNORECASE)
        siblings = base.parent.iterdir() if base.parent.is_dir() else ()
        taken += [int(match.group(1)) for path in siblings if (match := counter.fullmatch(path.name))]
    return [base.with_name(f"{base.name}_{max(taken) + 1:0{COUNTER_DIGITS}d}{LORA_SUFFIX}") for base in bases]


def next_free_name(folder: Path, prefix: str) -> Path:
    """`folder/prefix_00001.safetensors`, one past the highest counter taken (see `next_free_names`)."""
    return next_free_names(folder, [prefix])[0]


class SaveLoRA(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFSaveLoRA",
        display_name="Save LoRA (DRF)",
        category=category("lora"),
        description=(
            "Writes the trained LoRA into models/loras. The default 'comfyui' format is applied by ComfyUI's own "
            "LoraLoaderModelOnly (for Wan 2.2 A14B: on the expert it was trained on, which the file name, e.g. "
            "wan_drf_low_noise_00001, and its header say; a LoRA on both experts is two such files, one per MODEL). "
            "Existing files are never overwritten."
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
        outputs=(
            OutputSpec(
                "STRING",
                "lora_name",
                "The saved file's name as LoRA loaders list it (both A14B experts: the two names, one per line).",
            ),
        ),
        is_output_node=True,
    )

    @classmethod
    def run(cls, ctx: NodeContext, lora: TrainedLoRAWire, filename_prefix: str, format: str, dtype: str) -> NodeResult:
        if not filename_prefix.strip():
            raise DRFInputError("filename_prefix is empty; give a name such as drf/my_style")
        folder = ctx.folders.save_dir(LORA_FOLDER)
        prefix = filename_prefix.strip()
        parts = split_experts(lora.weights)  # by Wan 2.2 A14B expert (its name goes into the file name)
        paths = next_free_names(folder, [f"{prefix}_{expert}" if expert else prefix for expert in parts])
        names = [path.relative_to(folder).as_posix() for path in paths]
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for (expert, part), path, name in zip(parts.items(), paths, names, strict=True):
            if len(parts) > 1:  # each file of a pair names the other, so Load LoRA brings back both
                partner = next(other for other in names if other != name)
                part = dataclasses.replace(part, metadata={**part.metadata, PAIR_KEY: partner})
            api.save_trained_lora(part, path, lora.family, format, dtype)
            on = f" (apply on Wan 2.2 A14B's {expert} MODEL)" if expert else ""
            lines.append(f"saved {name}{on} ({format}, {dtype}) in {folder}")
        return NodeResult(("\n".join(names),), text="\n".join(lines))


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
        MODULE_NAME_MAPS.get(family)  # an unknown family is refused even when the file names its own
        path = ctx.folders.resolve(LORA_FOLDER, lora_name)
        if path.suffix != LORA_SUFFIX:
            raise DRFInputError(f"{lora_name}: only {LORA_SUFFIX} LoRA files can be read; convert it first")
        family = read_lora_header(path).get("family") or family
        if family not in MODULE_NAME_MAPS:
            raise DRFInputError(
                f"{lora_name} is a LoRA for {family} models, and this pack works on "
                f"{', '.join(MODULE_NAME_MAPS.names())} models only; apply it to a {family} model with ComfyUI's own "
                "LoRA loader"
            )
        weights = api.load_lora(path, family)
        partner_name = weights.metadata.get(PAIR_KEY)
        if partner_name:  # one file of a LoRA trained on both Wan 2.2 A14B experts: bring back the other
            weights, lora_name = _with_partner(ctx, weights, lora_name, partner_name, family)
        wire = TrainedLoRAWire(weights, family, lora_name)
        return NodeResult((wire,), text=str(wire))


def _with_partner(
    ctx: NodeContext, weights: LoRAWeights, lora_name: str, partner_name: str, family: str
) -> tuple[LoRAWeights, str]:
    """The two-expert LoRA of `weights` and the file it names; `weights` alone (with a warning) when that
    file is gone."""
    try:
        partner_path = ctx.folders.resolve(LORA_FOLDER, partner_name)
    except DRFInputError:
        logger.warning(
            "%s was saved with %s (a LoRA on both Wan 2.2 A14B experts), which is not in models/loras; only %s "
            "is loaded, for its own expert",
            lora_name,
            partner_name,
            lora_name,
        )
        return weights, lora_name
    partner = api.load_lora(partner_path, family)
    experts = (weights.metadata.get(EXPERT_KEY), partner.metadata.get(EXPERT_KEY))
    if None in experts or experts[0] == experts[1] or partner.metadata.get(PAIR_KEY) != lora_name:
        raise DRFInputError(
            f"{lora_name} names {partner_name} as its other Wan 2.2 A14B expert's file, but that file is for the "
            f"{experts[1]} expert and names {partner.metadata.get(PAIR_KEY)!r}; the pair was renamed or mixed up: "
            "give both files their saved names again"
        )
    joined = join_experts({experts[0]: weights, experts[1]: partner})
    return joined, f"{lora_name} + {partner_name}"

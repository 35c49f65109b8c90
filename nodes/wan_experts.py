"""Wan 2.2 A14B's two experts: their names, and LoRAs that cover one or both of them.

A14B is two MODELs (the high-noise and the low-noise expert). A LoRA trained here belongs on one of
them, and its header says which (`drf_wan_expert`). A LoRA trained on both at once travels between
nodes as one `LoRAWeights` whose module names carry their expert (`high_noise/blocks.0.attn1.to_q`),
with the header `drf_wan_expert: both`. On disk it is two ordinary files, one per expert, each
applied by core LoraLoaderModelOnly on its own MODEL. Each file names its partner
(`drf_wan_expert_pair`), so Load LoRA can bring both back as one.

Knows LoRA weights and headers; nothing of ComfyUI's objects, files or nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..drf_core.errors import DRFInputError
from ..drf_core.lora import LoRAModuleWeights, LoRAWeights

# The experts as Video Model from ComfyUI names them; the first is trained by default.
WAN_EXPERTS = ("low_noise", "high_noise")
BOTH = "both"
TRAINED_EXPERT_CHOICES = (*WAN_EXPERTS, BOTH)
EXPERT_KEY = "drf_wan_expert"  # header entry: the MODEL a LoRA file belongs on
PAIR_KEY = "drf_wan_expert_pair"  # header entry: the other expert's file of a pair, as LoRA loaders list it
SEPARATOR = "/"


def experts_trained(trained_expert: str) -> tuple[str, ...]:
    """The experts a `trained_expert` choice puts the LoRA on."""
    if trained_expert not in TRAINED_EXPERT_CHOICES:
        raise DRFInputError(
            f"unknown trained_expert {trained_expert!r}; choose one of {', '.join(TRAINED_EXPERT_CHOICES)}"
        )
    return WAN_EXPERTS if trained_expert == BOTH else (trained_expert,)


def expert_of(lora: LoRAWeights) -> str | None:
    """The expert the LoRA's header names (`both` for a two-expert LoRA), or None."""
    return (lora.metadata or {}).get(EXPERT_KEY)


def module_name(expert: str, module: str) -> str:
    """A module's name inside a two-expert LoRA."""
    return f"{expert}{SEPARATOR}{module}"


def split_experts(lora: LoRAWeights) -> dict[str | None, LoRAWeights]:
    """A LoRA by the expert each part belongs on: a two-expert LoRA splits into one LoRA per expert (its header
    naming that expert); any other LoRA is one part, under the expert its header names (None: unnamed)."""
    expert = expert_of(lora)
    if expert != BOTH:
        return {expert: lora}
    modules: dict[str, dict[str, LoRAModuleWeights]] = {}
    for name, weights in lora.modules.items():
        part, separator, module = name.partition(SEPARATOR)
        if not separator or part not in WAN_EXPERTS:
            raise DRFInputError(
                f"this LoRA says it covers both Wan 2.2 A14B experts, but its layer {name!r} names neither "
                f"({' or '.join(WAN_EXPERTS)}); it is damaged: train it again"
            )
        modules.setdefault(part, {})[module] = weights
    return {
        part: LoRAWeights(lora.path, lora.key_layout, modules[part], {**lora.metadata, EXPERT_KEY: part})
        for part in WAN_EXPERTS
        if part in modules
    }


def join_experts(parts: Mapping[str, LoRAWeights]) -> LoRAWeights:
    """One LoRA holding each expert's part (`split_experts` undoes it); the header is the low-noise part's
    (without the pair entry), naming both experts."""
    unknown = sorted(set(parts) - set(WAN_EXPERTS))
    if unknown or len(parts) != len(WAN_EXPERTS):
        raise DRFInputError(
            f"a two-expert LoRA needs one part per expert ({', '.join(WAN_EXPERTS)}); got {sorted(parts)}"
        )
    first = parts[WAN_EXPERTS[0]]
    header = {k: v for k, v in first.metadata.items() if k != PAIR_KEY}
    modules = {module_name(expert, name): w for expert, part in parts.items() for name, w in part.modules.items()}
    return LoRAWeights(None, first.key_layout, modules, {**header, EXPERT_KEY: BOTH})

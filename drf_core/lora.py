"""LoRA on the video model's denoiser: injection, export for ComfyUI and diffusers, loading back.

- `add_lora` puts a peft LoRA adapter on the denoiser's target layers; only the LoRA weights train,
  and they are kept in float32 whatever the model's dtype (peft casts a layer's input to the LoRA
  weights' dtype and the layer's output back to the base dtype).
- `save_lora` writes the adapter as safetensors in a format of `LORA_FORMATS`:
  - "comfyui": `diffusion_model.<original module name>.lora_A.weight / .lora_B.weight / .alpha` for
    every trained layer. ComfyUI scales a LoRA by `alpha / rank` and by 1.0 when `.alpha` is absent,
    so the alpha is always written. ComfyUI's loader also accepts `lora_down` / `lora_up` and
    `lora_A.default` spellings; this exporter writes `lora_A` / `lora_B` + `alpha`.
  - "diffusers": `transformer.<module>.lora_A.weight` plus diffusers' `lora_adapter_metadata`
    header (the peft config), which `WanPipeline.load_lora_weights` reads to restore rank and alpha.
    (Diffusers' Wan loader reads the "comfyui" file as well, through its own original-name converter.)
  The header also carries training facts (base model, steps, questions, prompts, version), all as
  strings.
- `read_lora_file` reads any of the supported key layouts (`KEY_LAYOUTS`: ComfyUI / original names,
  kohya `lora_unet_`, diffusers `transformer.`, bare peft names) into the denoiser's own module
  names; `apply_lora` recreates the adapter from it exactly (preview) or trainable (resume).
- `adapters_disabled` switches every peft adapter inside a module off and back on (the base model's
  prediction, for the drift penalty).

Model families enter only through two name maps passed in by the caller (the denoiser's module
name <-> the original checkpoint's module name), so this module knows no model family. Files are
read with safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import __version__
from .config import LoRAConfig
from .errors import DRFInputError
from .io import atomic_write
from .registry import Registry

logger = logging.getLogger(__name__)

NameMap = Callable[[str], str]

# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY: the header entry holding the peft config.
DIFFUSERS_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# The pipeline component a diffusers LoRA file addresses (`transformer.<module>...`).
DIFFUSERS_COMPONENT = "transformer"
# ComfyUI's prefix for the diffusion model's weights.
COMFYUI_PREFIX = "diffusion_model."

# Layers peft LoRA can wrap and that the exported formats describe (weight = B @ A reshaped).
_LORA_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

SAVE_DTYPES: Registry[torch.dtype] = Registry("LoRA save dtype")
SAVE_DTYPES.add("fp32", torch.float32)
SAVE_DTYPES.add("bf16", torch.bfloat16)
SAVE_DTYPES.add("fp16", torch.float16)


@dataclass
class LoRAModuleWeights:
    """One adapted layer: `weight += (alpha / rank) * up @ down` (ComfyUI's convention)."""

    down: torch.Tensor  # lora_A: [rank, in_features] (convs: [rank, in_channels, *kernel])
    up: torch.Tensor  # lora_B: [out_features, rank] (convs: [out_channels, rank, 1, ...])
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class LoRAWeights:
    """A LoRA in the denoiser's own module names: read from a file, or a snapshot of a trained adapter."""

    path: Path | None
    key_layout: str
    modules: dict[str, LoRAModuleWeights]
    metadata: dict[str, str]

    @property
    def rank(self) -> int:
        """The most common rank (`modules[...].rank` has each layer's own)."""
        return _most_common([w.rank for w in self.modules.values()])

    @property
    def alpha(self) -> float:
        return _most_common([w.alpha for w in self.modules.values()])

    @property
    def target_modules(self) -> list[str]:
        return list(self.modules)


# --- Injection and access --------------------------------------------------------------------------------


def _lora_layers(denoiser: nn.Module, adapter_name: str) -> dict[str, Any]:
    """Module name -> peft LoRA layer holding `adapter_name`."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module
        for name, module in denoiser.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    }


def has_lora(denoiser: nn.Module, adapter_name: str = "drf") -> bool:
    return bool(_lora_layers(denoiser, adapter_name))


def _require_layers(denoiser: nn.Module, adapter_name: str) -> dict[str, Any]:
    layers = _lora_layers(denoiser, adapter_name)
    if not layers:
        raise DRFInputError(
            f"the model has no LoRA adapter named {adapter_name!r}; add one with add_lora() or apply_lora()"
        )
    return layers


def _matches_target(name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of target names: the module name equals a target or ends with `.target`."""
    return any(name == target or name.endswith("." + target) for target in targets)


def _refuse_existing(denoiser: nn.Module, adapter_name: str) -> None:
    if has_lora(denoiser, adapter_name):
        raise DRFInputError(
            f"the model already has a LoRA adapter named {adapter_name!r}; "
            "remove it with remove_lora() or use another adapter name"
        )


def _inject(denoiser: nn.Module, peft_config: Any, adapter_name: str) -> None:
    add_adapter = getattr(denoiser, "add_adapter", None)
    if callable(add_adapter):  # diffusers / transformers models keep their peft bookkeeping this way
        add_adapter(peft_config, adapter_name)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(peft_config, denoiser, adapter_name)


def _finish_adapter(denoiser: nn.Module, adapter_name: str, trainable: bool) -> list[nn.Parameter]:
    """Cast the adapter's weights to float32, freeze the base weights, set the adapter trainable or not.

    Other adapters' weights are frozen only when this one trains (one adapter trains at a time).
    """
    own: list[nn.Parameter] = []
    for layer in _lora_layers(denoiser, adapter_name).values():
        for part in (layer.lora_A[adapter_name], layer.lora_B[adapter_name]):
            part.to(dtype=torch.float32)
            own.extend(part.parameters())
    own_ids = {id(p) for p in own}
    for name, param in denoiser.named_parameters():
        if id(param) in own_ids:
            param.requires_grad_(trainable)
        elif trainable or not (".lora_A." in name or ".lora_B." in name):
            param.requires_grad_(False)
    return own if trainable else []


def add_lora(
    denoiser: nn.Module, config: LoRAConfig, target_modules: Sequence[str], adapter_name: str = "drf"
) -> list[nn.Parameter]:
    """Add a LoRA adapter (B initialised to zero) to every layer named by `target_modules`.

    `target_modules` are module names or name suffixes of `denoiser` ("attn1.to_q" matches
    "blocks.3.attn1.to_q"). Returns the trainable parameters (float32); all others are frozen.
    """
    from peft import LoraConfig

    config.validate()
    _refuse_existing(denoiser, adapter_name)
    targets = list(target_modules)
    matched = {name: m for name, m in denoiser.named_modules() if targets and _matches_target(name, targets)}
    if not matched:
        examples = [name for name, m in denoiser.named_modules() if isinstance(m, _LORA_LAYER_TYPES)][:5]
        raise DRFInputError(
            f"no layer of the model matches the LoRA targets {targets}; target names or name suffixes of "
            f"Linear/Conv layers, e.g. {examples}"
        )
    unsupported = sorted(
        name for name, m in matched.items() if not isinstance(getattr(m, "base_layer", m), _LORA_LAYER_TYPES)
    )
    if unsupported:
        raise DRFInputError(
            f"LoRA targets match layers that are not Linear/Conv: {unsupported[:5]}; name the Linear layers inside them"
        )
    peft_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets
    )
    _inject(denoiser, peft_config, adapter_name)  # init_lora_weights default: A random, B zero
    params = _finish_adapter(denoiser, adapter_name, trainable=True)
    count = sum(p.numel() for p in params)
    logger.info(
        "LoRA %r: rank %d, alpha %g, %d layers, %d parameters",
        adapter_name,
        config.rank,
        config.alpha,
        len(matched),
        count,
    )
    return params


def remove_lora(denoiser: nn.Module, adapter_name: str = "drf") -> None:
    """Take the adapter off the model (nothing happens when it has none)."""
    if not has_lora(denoiser, adapter_name):
        return
    peft_configs = getattr(denoiser, "peft_config", None) or {}
    delete_adapters = getattr(denoiser, "delete_adapters", None)
    if callable(delete_adapters) and adapter_name in peft_configs:
        delete_adapters(adapter_name)
        return
    for layer in _lora_layers(denoiser, adapter_name).values():
        layer.delete_adapter(adapter_name)
    if isinstance(peft_configs, dict):
        peft_configs.pop(adapter_name, None)


@contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Every peft adapter layer inside `module` runs as its base layer until the block ends."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    were_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(layers, were_disabled, strict=True):
            layer.enable_adapters(not disabled)


def lora_parameters(denoiser: nn.Module, adapter_name: str = "drf") -> list[nn.Parameter]:
    """The adapter's lora_A / lora_B parameters, in module order."""
    return [
        param
        for layer in _require_layers(denoiser, adapter_name).values()
        for part in (layer.lora_A[adapter_name], layer.lora_B[adapter_name])
        for param in part.parameters()
    ]


def _module_state(modules: Mapping[str, LoRAModuleWeights]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, weights in modules.items():
        state[f"{name}.lora_A.weight"] = weights.down
        state[f"{name}.lora_B.weight"] = weights.up
    return state


def lora_state_dict(denoiser: nn.Module, adapter_name: str = "drf") -> dict[str, torch.Tensor]:
    """`{"<module>.lora_A.weight": A, "<module>.lora_B.weight": B}` in the denoiser's own module names."""
    return _module_state(lora_module_weights(denoiser, adapter_name))


def lora_module_weights(denoiser: nn.Module, adapter_name: str = "drf") -> dict[str, LoRAModuleWeights]:
    """Module name -> the adapter's weights and alpha (detached, on the model's device)."""
    result = {}
    for name, layer in _require_layers(denoiser, adapter_name).items():
        rank = layer.r[adapter_name]
        alpha = float(layer.lora_alpha[adapter_name])
        if layer.use_rslora.get(adapter_name, False):  # scale alpha / sqrt(r), written as (alpha * sqrt(r)) / r
            alpha = alpha * math.sqrt(rank)
        result[name] = LoRAModuleWeights(
            down=layer.lora_A[adapter_name].weight.detach(),
            up=layer.lora_B[adapter_name].weight.detach(),
            alpha=alpha,
        )
    return result


# --- Export ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAExportFormat:
    """How a file of one format names the tensors, and what it adds to the header."""

    description: str
    # (module weights, denoiser name -> original name or None) -> tensors as stored (any device/dtype).
    tensors: Callable[[Mapping[str, LoRAModuleWeights], NameMap | None], dict[str, torch.Tensor]]
    # (module weights, dropout) -> format-specific header entries.
    header: Callable[[Mapping[str, LoRAModuleWeights], float], dict[str, str]]


LORA_FORMATS: Registry[LoRAExportFormat] = Registry("LoRA export format")


def _comfyui_tensors(modules: Mapping[str, LoRAModuleWeights], native_name: NameMap | None) -> dict[str, torch.Tensor]:
    if native_name is None:
        raise DRFInputError("the 'comfyui' LoRA format needs the model family's original module names (native_name)")
    tensors: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    for name, weights in modules.items():
        native = native_name(name)
        if native in owner:
            raise DRFInputError(f"layers {owner[native]!r} and {name!r} both map to {native!r}; fix the name map")
        owner[native] = name
        base = COMFYUI_PREFIX + native
        tensors[f"{base}.lora_A.weight"] = weights.down
        tensors[f"{base}.lora_B.weight"] = weights.up
        tensors[f"{base}.alpha"] = torch.tensor(weights.alpha, dtype=torch.float32)
    return tensors


def _diffusers_tensors(modules: Mapping[str, LoRAModuleWeights], _: NameMap | None) -> dict[str, torch.Tensor]:
    return {f"{DIFFUSERS_COMPONENT}.{key}": value for key, value in _module_state(modules).items()}


def _most_common(values: Sequence[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def peft_config_for(modules: Mapping[str, LoRAModuleWeights], dropout: float = 0.0) -> Any:
    """A peft `LoraConfig` that recreates exactly these layers' ranks and alphas (exact module names)."""
    from peft import LoraConfig

    rank = _most_common([w.rank for w in modules.values()])
    alpha = _most_common([w.alpha for w in modules.values()])
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=sorted(modules),
        rank_pattern={re.escape(n): w.rank for n, w in modules.items() if w.rank != rank},
        alpha_pattern={re.escape(n): w.alpha for n, w in modules.items() if w.alpha != alpha},
        init_lora_weights=True,
    )


def _diffusers_header(modules: Mapping[str, LoRAModuleWeights], dropout: float) -> dict[str, str]:
    config = peft_config_for(modules, dropout).to_dict()
    config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    packed = {f"{DIFFUSERS_COMPONENT}.{key}": value for key, value in config.items()}
    return {DIFFUSERS_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


LORA_FORMATS.add(
    "comfyui",
    LoRAExportFormat(
        "ComfyUI LoraLoader / LoraLoaderModelOnly: diffusion_model.<original name>.lora_A/lora_B/alpha",
        _comfyui_tensors,
        lambda modules, dropout: {},
    ),
)
LORA_FORMATS.add(
    "diffusers",
    LoRAExportFormat(
        "diffusers pipe.load_lora_weights: transformer.<module>.lora_A/lora_B + peft config header",
        _diffusers_tensors,
        _diffusers_header,
    ),
)


def _header_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def save_lora_weights(
    path: str | Path,
    lora: LoRAWeights,
    fmt: str = "comfyui",
    native_name: NameMap | None = None,
    metadata: Mapping[str, Any] | None = None,
    dropout: float = 0.0,
    dtype: str = "fp32",
) -> Path:
    """Write `lora` to `path` (safetensors, atomically) in format `fmt` of `LORA_FORMATS`.

    `native_name` maps the denoiser's module names to the original checkpoint's (needed by
    "comfyui"). The header carries `lora.metadata`, then `metadata` (non-string values as JSON),
    then the entries that describe the file itself. Callers usually pass base_model, family,
    training_steps, questions, prompts and target_preset. `dtype` ("fp32", "bf16", "fp16") is the
    storage type of lora_A / lora_B; alphas stay float32.
    """
    export = LORA_FORMATS.get(fmt)
    save_dtype = SAVE_DTYPES.get(dtype)
    modules = lora.modules
    tensors = {
        key: (tensor.to(save_dtype) if tensor.dim() > 0 else tensor).detach().to("cpu").contiguous()
        for key, tensor in export.tensors(modules, native_name).items()
    }
    header = {str(key): _header_text(value) for key, value in {**lora.metadata, **(metadata or {})}.items()}
    for stale in (DIFFUSERS_ADAPTER_METADATA_KEY, "lora_format"):  # describe the source file, not this one
        header.pop(stale, None)
    header.update(  # these describe the file itself; they replace caller entries of the same name
        {
            "format": "pt",  # the safetensors convention for torch files
            "lora_format": fmt,
            "rank": json.dumps(lora.rank),
            "alpha": json.dumps(lora.alpha),
            "dropout": json.dumps(dropout),
            "target_modules": json.dumps(sorted(modules)),
            "dtype": dtype,
            "drf_version": __version__,
        }
    )
    header.update(export.header(modules, dropout))
    path = Path(path)
    with atomic_write(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=header)
    logger.info("saved %s LoRA (%d layers) to %s", fmt, len(modules), path)
    return path


def save_lora(
    path: str | Path,
    denoiser: nn.Module,
    lora_config: LoRAConfig,
    fmt: str = "comfyui",
    native_name: NameMap | None = None,
    metadata: Mapping[str, Any] | None = None,
    adapter_name: str = "drf",
    dtype: str = "fp32",
) -> Path:
    """Write the denoiser's adapter `adapter_name` to `path` (see `save_lora_weights`)."""
    return save_lora_weights(
        path, snapshot_lora(denoiser, adapter_name), fmt, native_name, metadata, lora_config.dropout, dtype
    )


def snapshot_lora(
    denoiser: nn.Module, adapter_name: str = "drf", metadata: Mapping[str, Any] | None = None
) -> LoRAWeights:
    """A detached CPU copy of the adapter's weights, independent of later training or removal."""
    modules = {
        name: LoRAModuleWeights(w.down.detach().to("cpu", copy=True), w.up.detach().to("cpu", copy=True), w.alpha)
        for name, w in lora_module_weights(denoiser, adapter_name).items()
    }
    header = {str(key): _header_text(value) for key, value in (metadata or {}).items()}
    return LoRAWeights(path=None, key_layout="peft", modules=modules, metadata=header)


# --- Reading back ----------------------------------------------------------------------------------------

# Key suffix -> which part of a LoRA layer it holds.
_KEY_SUFFIXES = {
    "lora_A.weight": "down",
    "lora_down.weight": "down",
    "lora_A.default.weight": "down",
    "lora_B.weight": "up",
    "lora_up.weight": "up",
    "lora_B.default.weight": "up",
    "alpha": "alpha",
}
# More underscores than this in a kohya name would make the dot/underscore search too large.
_MAX_KOHYA_UNDERSCORES = 14


def _resolve_kohya(base: str, native_to_module: NameMap) -> str:
    """`blocks_0_self_attn_q` -> the one module whose original name, with '.' -> '_', spells it."""
    pieces = base.split("_")
    if len(pieces) - 1 > _MAX_KOHYA_UNDERSCORES:
        raise DRFInputError(f"kohya LoRA key {base!r} has too many underscores to resolve")
    found = set()
    for joins in itertools.product("._", repeat=len(pieces) - 1):
        candidate = pieces[0] + "".join(j + p for j, p in zip(joins, pieces[1:], strict=True))
        try:
            found.add(native_to_module(candidate))
        except DRFInputError:
            continue
    if len(found) != 1:
        problem = "names no layer of this model family" if not found else f"is ambiguous ({sorted(found)})"
        raise DRFInputError(f"kohya LoRA key 'lora_unet_{base}' {problem}")
    return found.pop()


@dataclass(frozen=True)
class LoRAKeyLayout:
    """A way LoRA files name layers: a key prefix and how the rest becomes a denoiser module name."""

    prefix: str
    description: str
    # (name after the prefix, original name -> denoiser name) -> denoiser module name
    resolve: Callable[[str, NameMap], str]


KEY_LAYOUTS: Registry[LoRAKeyLayout] = Registry("LoRA key layout")
KEY_LAYOUTS.add("comfyui", LoRAKeyLayout(COMFYUI_PREFIX, "ComfyUI / original names", lambda base, native: native(base)))
KEY_LAYOUTS.add("kohya", LoRAKeyLayout("lora_unet_", "kohya / musubi: original names with '_'", _resolve_kohya))
KEY_LAYOUTS.add("diffusers", LoRAKeyLayout(f"{DIFFUSERS_COMPONENT}.", "diffusers pipeline", lambda base, _: base))
# Registered last: it matches every key, so prefixed layouts are tried first.
KEY_LAYOUTS.add("peft", LoRAKeyLayout("", "bare module names (peft save_lora_adapter)", lambda base, _: base))


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise DRFInputError(f"LoRA file {path} {where}; give the path of a .safetensors LoRA file")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises several types for a damaged or foreign file
        raise DRFInputError(
            f"{path} is not a readable safetensors file ({error}); LoRAs are read from .safetensors files only"
        ) from error
    return tensors, header


def read_lora_header(path: str | Path) -> dict[str, str]:
    """The safetensors header of a LoRA file (training facts, format, family), without its tensors."""
    path = Path(path)
    if not path.is_file():
        raise DRFInputError(f"LoRA file {path} does not exist; give the path of a .safetensors LoRA file")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise DRFInputError(f"{path} is not a readable safetensors file ({error})") from error


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _KEY_SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    return None


def _layout_of(base: str) -> str:
    """The first layout whose prefix `base` carries (the unprefixed "peft" layout is registered last)."""
    return next(name for name in KEY_LAYOUTS if base.startswith(KEY_LAYOUTS.get(name).prefix))


def _detect_layout(bases: Sequence[str], path: Path) -> str:
    layouts = {_layout_of(base) for base in bases}
    if len(layouts) > 1:
        raise DRFInputError(
            f"{path} mixes LoRA key layouts {sorted(layouts)} (e.g. {sorted(bases)[:2]}); export it again in one format"
        )
    return layouts.pop()


def _diffusers_adapter_config(header: Mapping[str, str], layout: str, path: Path) -> dict[str, Any] | None:
    raw = header.get(DIFFUSERS_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DRFInputError(f"{path}: header entry {DIFFUSERS_ADAPTER_METADATA_KEY!r} is not JSON ({error})") from None
    prefix = f"{DIFFUSERS_COMPONENT}."
    if layout == "diffusers":
        config = {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}
    return config


def _alpha_from_adapter_config(config: Mapping[str, Any], module: str, rank: int) -> float:
    """The alpha diffusers/peft would use for `module`, in ComfyUI's convention (scale = alpha / rank)."""
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return float(alpha) * math.sqrt(rank) if config.get("use_rslora") else float(alpha)


def _exact_alpha(stored: float, header: Mapping[str, str]) -> float:
    """The header's exact alpha when the float32 `.alpha` tensor is that value rounded."""
    try:
        exact = float(json.loads(header.get("alpha", "null")))
    except (TypeError, ValueError):
        return stored
    return exact if torch.tensor(exact, dtype=torch.float32).item() == stored else stored


def read_lora_file(path: str | Path, native_to_module: NameMap, family: str | None = None) -> LoRAWeights:
    """Read a LoRA safetensors file into the denoiser's module names.

    `native_to_module` maps the original checkpoint's module names (ComfyUI / kohya keys) to the
    denoiser's; it must raise `DRFInputError` for names it does not know. With `family`, a file
    whose header names another family is refused.
    """
    path = Path(path)
    tensors, header = _load_safetensors(path)
    if family and header.get("family") and header["family"] != family:
        raise DRFInputError(
            f"{path} is a LoRA for the {header['family']!r} model family, not {family!r}; load it with that model"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = []
    for key, tensor in tensors.items():
        split = _split_key(key)
        if split is None:
            unsupported.append(key)
        else:
            parts.setdefault(split[0], {})[split[1]] = tensor
    if not any("down" in p or "up" in p for p in parts.values()):
        raise DRFInputError(
            f"{path} holds no LoRA weights (no '.lora_A/.lora_B' or '.lora_down/.lora_up' keys; "
            f"found e.g. {sorted(tensors)[:3]}); choose a LoRA file"
        )
    if unsupported:
        raise DRFInputError(
            f"{path} holds tensors this reader cannot apply (e.g. {sorted(unsupported)[:3]}: DoRA scales, "
            "biases or full-weight patches); only plain LoRA (lora_A/lora_B or lora_down/lora_up, alpha) is supported"
        )
    layout_name = _detect_layout(list(parts), path)
    layout = KEY_LAYOUTS.get(layout_name)
    adapter_config = _diffusers_adapter_config(header, layout_name, path)
    modules: dict[str, LoRAModuleWeights] = {}
    for base, part in parts.items():
        if "down" not in part or "up" not in part:
            raise DRFInputError(f"{path}: layer {base!r} lacks its lora_A/lora_down or lora_B/lora_up tensor")
        down, up = part["down"], part["up"]
        if down.dim() < 2 or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
            raise DRFInputError(
                f"{path}: layer {base!r} has mismatched LoRA shapes down {tuple(down.shape)} / up {tuple(up.shape)}"
            )
        try:
            module = layout.resolve(base[len(layout.prefix) :], native_to_module)
        except DRFInputError as error:
            raise DRFInputError(
                f"{path} names a layer that is not part of this model ({error}); the LoRA was probably made for "
                "another model family"
            ) from None
        if module in modules:
            raise DRFInputError(f"{path} holds two LoRAs for layer {module!r}")
        rank = int(down.shape[0])
        if "alpha" in part:
            alpha = _exact_alpha(float(part["alpha"].float().item()), header)
        elif adapter_config is not None:
            alpha = _alpha_from_adapter_config(adapter_config, module, rank)
        else:
            alpha = float(rank)  # no alpha anywhere: ComfyUI and diffusers both use scale 1.0
        modules[module] = LoRAModuleWeights(down=down, up=up, alpha=alpha)
    ranks = sorted({w.rank for w in modules.values()})
    logger.info("read %s LoRA %s: %d layers, rank %s", layout_name, path, len(modules), ranks)
    return LoRAWeights(path=path, key_layout=layout_name, modules=modules, metadata=header)


def _check_fits(denoiser: nn.Module, lora: LoRAWeights) -> None:
    """Every layer exists, is Linear/Conv, and `up @ down` has the layer's weight shape."""
    missing, mismatched = [], []
    for name, weights in lora.modules.items():
        try:
            layer = denoiser.get_submodule(name)
        except AttributeError:
            missing.append(name)
            continue
        base = getattr(layer, "base_layer", layer)
        if not isinstance(base, _LORA_LAYER_TYPES):
            mismatched.append(f"{name} is a {type(base).__name__}, not a Linear/Conv layer")
            continue
        weight_shape = tuple(base.weight.shape)
        want_down = (weights.rank, *weight_shape[1:])
        want_up = (weight_shape[0], weights.rank, *([1] * (len(weight_shape) - 2)))
        if tuple(weights.down.shape) != want_down or tuple(weights.up.shape) != want_up:
            mismatched.append(
                f"{name}: LoRA {tuple(weights.up.shape)} @ {tuple(weights.down.shape)} vs layer {weight_shape}"
            )
    if missing:
        raise DRFInputError(
            f"{lora.path} has LoRA weights for {len(missing)} layer(s) this model does not have "
            f"(e.g. {missing[:3]}); it was made for another model or model size"
        )
    if mismatched:
        raise DRFInputError(
            f"{lora.path} does not fit this model ({'; '.join(mismatched[:3])}); it was made for another model size"
        )


def apply_lora(
    denoiser: nn.Module,
    lora: LoRAWeights,
    adapter_name: str = "drf",
    strength: float = 1.0,
    trainable: bool = False,
    dropout: float = 0.0,
) -> list[nn.Parameter]:
    """Recreate the file's adapter on `denoiser` with its exact weights, ranks and alphas.

    For previews leave `trainable=False` (the base and this adapter frozen; `strength` scales the
    LoRA). For resuming training pass `trainable=True`: the LoRA weights come back as float32
    parameters with gradients (strength must be 1.0) and are returned. On diffusers models the new
    adapter becomes the only active one (`denoiser.set_adapter` switches back).
    """
    if trainable and strength != 1.0:
        raise DRFInputError(f"resuming training needs strength 1.0, got {strength}; strength is for previews only")
    _refuse_existing(denoiser, adapter_name)
    _check_fits(denoiser, lora)
    _inject(denoiser, peft_config_for(lora.modules, dropout), adapter_name)
    params = _finish_adapter(denoiser, adapter_name, trainable)
    layers = _lora_layers(denoiser, adapter_name)
    with torch.no_grad():
        for name, weights in lora.modules.items():
            layer = layers[name]
            layer.lora_A[adapter_name].weight.copy_(weights.down)
            layer.lora_B[adapter_name].weight.copy_(weights.up)
            if strength != 1.0:
                layer.set_scale(adapter_name, strength)
    source = lora.path or "in-memory LoRA"
    logger.info("applied %s as %r on %d layers (strength %g)", source, adapter_name, len(layers), strength)
    return params

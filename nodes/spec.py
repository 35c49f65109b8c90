"""What a node is, as plain data: its schema, what it returns, and what it may ask of its host.

Every node in this pack is a `DRFNode` subclass with a declarative `SPEC` (id,
category, description, inputs with tooltips and ranges, outputs with tooltips) and a `run(ctx,
**inputs)` class method that reads its inputs, builds one config, calls one `drf_core` function
and returns a `NodeResult`. The host is reached only through `ctx` (a `NodeContext`): progress,
interrupts, live text on the node, model folders and where files go.

Two hosts exist: `_comfy.py` turns each spec into a ComfyUI V3 `io.ComfyNode` class and gives
`run` a context backed by ComfyUI; `local.py` runs the same nodes without ComfyUI (tests,
scripts). This module knows neither of them, nor any model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from ..drf_core.errors import DRFInputError
from ..drf_core.io import safe_child_path

# Types ComfyUI itself draws as widgets (the rest are sockets).
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# ComfyUI's own socket types this pack uses.
CORE_SOCKET_TYPES = ("IMAGE", "MODEL", "CLIP", "VAE", "CONDITIONING")

# This pack's wire types (any upper-case name carries any Python object; the editor links equal names).
VIDEO_MODEL = "DRF_VIDEO_MODEL"
CRITIC = "DRF_CRITIC"
QUESTIONS = "DRF_QUESTIONS"
REWARD = "DRF_REWARD"
LORA = "DRF_LORA"
METRICS = "DRF_METRICS"
TRAINING_OPTIONS = "DRF_TRAINING_OPTIONS"
CUSTOM_TYPES = (VIDEO_MODEL, CRITIC, QUESTIONS, REWARD, LORA, METRICS, TRAINING_OPTIONS)

CATEGORY_ROOT = "DiffusionDRF"


class ModelFolders:
    """Where models live and where files go. A host says which folders each kind has (`bases`) and where
    output and temporary files go; listing and finding models work the same for every host."""

    # What the user does to see a newly added model, for "not found" errors.
    refresh_hint = "pick one the list shows"

    def bases(self, kind: str) -> list[Path]:
        """The folders holding models of `kind`, in search order (the first receives new files)."""
        raise NotImplementedError

    def output_dir(self) -> Path:
        """The host's output folder (training runs go under it)."""
        raise NotImplementedError

    def temp_dir(self) -> Path:
        """The host's temporary folder (previews)."""
        raise NotImplementedError

    def _walk(self, kind: str):
        for base in self.bases(kind):
            if base.is_dir():
                for root, _dirs, files in os.walk(base, followlinks=True):
                    yield base, Path(root), files

    def list_folders(self, kind: str, marker: str) -> list[str]:
        """Names (relative, `/`-separated, links followed) of folders of `kind` that hold a file `marker`."""
        return sorted(
            {
                root.relative_to(base).as_posix()
                for base, root, files in self._walk(kind)
                if marker in files and root != base
            }
        )

    def list_files(self, kind: str, suffixes: Sequence[str]) -> list[str]:
        """Names (relative) of files of `kind` ending in one of `suffixes`."""
        found = {(root / f).relative_to(base).as_posix() for base, root, files in self._walk(kind) for f in files}
        return sorted(name for name in found if name.endswith(tuple(suffixes)))

    def resolve(self, kind: str, name: str) -> Path:
        """The path of the listed `name` of `kind` (links kept); a clear error when it is not there."""
        where = ", ".join(str(b) for b in self.bases(kind)) or f"models/{kind}"
        if not isinstance(name, str):
            raise DRFInputError(f"a {kind} model is chosen by its name (text), got {name!r}; pick one from the list")
        if not name.strip():
            raise DRFInputError(
                f"no {kind} model chosen (the name is empty, or the list was); put one in {where} and "
                f"{self.refresh_hint}"
            )
        for base in self.bases(kind):
            path = safe_child_path(base, name, "", follow_symlinks=True)
            if path.exists():
                return path
        raise DRFInputError(f"{name!r} is not in {where}; put it there and {self.refresh_hint}")

    def save_dir(self, kind: str) -> Path:
        """The folder new files of `kind` are written to (e.g. the first `loras` folder)."""
        return self.bases(kind)[0]


class NodeContext(Protocol):
    """What a running node may ask of its host."""

    folders: ModelFolders

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        """Move the node's progress bar (and show `preview` on it)."""

    def show_text(self, text: str) -> None:
        """Replace the live text shown on the running node."""

    def interrupted(self) -> bool:
        """Has the user asked to stop? (Reads the flag; never raises.)"""

    def raise_if_interrupted(self) -> None:
        """Stop the graph the host's way when the user asked to stop."""


OptionsSource = Sequence[str] | Callable[[ModelFolders], Sequence[str]]


@dataclass(frozen=True)
class InputSpec:
    """One input: a widget (INT, FLOAT, STRING, BOOLEAN, COMBO) or a socket of a wire type."""

    name: str
    type: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: OptionsSource | None = None
    multiline: bool = False
    optional: bool = False
    # INT seeds: the editor adds a "control after generate" widget value right after this one.
    control_after_generate: bool = False
    display_name: str | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def option_list(self, folders: ModelFolders | None) -> list[str]:
        """The combo's choices now (folder listings are read again on every call)."""
        if self.options is None:
            return []
        if callable(self.options):
            return list(self.options(folders)) if folders is not None else []
        return list(self.options)


def Int(name: str, default: int, min: int, max: int, tooltip: str, step: int = 1, **extra: Any) -> InputSpec:
    return InputSpec(name, "INT", tooltip, default=default, min=min, max=max, step=step, **extra)


def Float(
    name: str, default: float, min: float, max: float, tooltip: str, step: float = 0.01, **extra: Any
) -> InputSpec:
    return InputSpec(name, "FLOAT", tooltip, default=default, min=min, max=max, step=step, **extra)


def String(name: str, default: str, tooltip: str, multiline: bool = False, **extra: Any) -> InputSpec:
    return InputSpec(name, "STRING", tooltip, default=default, multiline=multiline, **extra)


def Boolean(name: str, default: bool, tooltip: str, **extra: Any) -> InputSpec:
    return InputSpec(name, "BOOLEAN", tooltip, default=default, **extra)


def Combo(name: str, options: OptionsSource, tooltip: str, default: str | None = None, **extra: Any) -> InputSpec:
    return InputSpec(name, "COMBO", tooltip, default=default, options=options, **extra)


def Socket(name: str, type: str, tooltip: str, optional: bool = False) -> InputSpec:
    return InputSpec(name, type, tooltip, optional=optional)


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    category: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...] = ()
    is_output_node: bool = False

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.node_id} has no input {name!r}")


@dataclass
class Preview:
    """Frames shown on the node: `[F, H, W, C]` in 0..1; `animated` plays them as one clip."""

    frames: torch.Tensor
    animated: bool = False
    fps: float = 8.0


@dataclass
class NodeResult:
    """What `run` returns: the output values (in `SPEC.outputs` order) and what the node shows."""

    outputs: tuple[Any, ...] = ()
    previews: list[Preview] = field(default_factory=list)
    text: str | None = None


class DRFNode:
    """Base class: a spec and a `run`; the host turns it into a node of its own kind."""

    SPEC: ClassVar[NodeSpec]

    @classmethod
    def run(cls, ctx: NodeContext, **inputs: Any) -> NodeResult:
        raise NotImplementedError


def category(name: str) -> str:
    return f"{CATEGORY_ROOT}/{name}"


def comfy_image(frames: torch.Tensor) -> torch.Tensor:
    """`[F, 3, H, W]` (the engine's layout) -> ComfyUI's IMAGE `[F, H, W, 3]` float32 on the CPU."""
    return frames.detach().float().cpu().permute(0, 2, 3, 1).contiguous().clamp(0, 1)


def engine_frames(image: torch.Tensor, what: str = "frames") -> torch.Tensor:
    """ComfyUI's IMAGE `[F, H, W, C]` -> `[F, 3, H, W]` float32, a copy (inputs are never changed)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DRFInputError(f"{what}: expected an IMAGE batch [frames, height, width, channels], got {shape}")
    image = image[..., :3] if image.shape[-1] == 4 else image.expand(-1, -1, -1, 3)
    return image.detach().float().clone().permute(0, 3, 1, 2).contiguous()


def parse_weights(text: str, what: str) -> dict[str, float]:
    """`"TA=0.5, PHY=0.25"` -> `{"TA": 0.5, "PHY": 0.25}`; empty text -> `{}`."""
    weights: dict[str, float] = {}
    for item in (part.strip() for part in text.replace("\n", ",").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name or not number >= 0 or number == float("inf"):
            raise DRFInputError(f"{what}: {item!r} is not NAME=weight with a weight >= 0; write e.g. TA=0.5, PHY=0.25")
        if name in weights:
            raise DRFInputError(f"{what}: {name} is listed twice; list each aspect once")
        weights[name] = number
    return weights

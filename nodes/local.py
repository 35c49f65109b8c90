"""Run this pack's nodes without ComfyUI: local model folders, a recording context, API prompts.

`LocalFolders(root)` mirrors ComfyUI's layout (`root/models/<kind>`, `root/output`, `root/temp`;
the `vlm` kind also lists `models/LLM`). `LocalContext` records progress and text and can be told
to interrupt. `run_prompt` executes an API-format prompt (`{"id": {"class_type", "inputs"}}`) in
dependency order, the way ComfyUI does, and returns every node's `NodeResult`. Used by the tests
and by anyone scripting the nodes; knows nothing about ComfyUI itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..drf_core.errors import DRFInputError
from .spec import DRFNode, ModelFolders, NodeResult, NodeSpec

logger = logging.getLogger(__name__)

# Folder kinds that also list other folders (ComfyUI's `vlm` is merged with `LLM` the same way).
FOLDER_ALIASES = {"vlm": ("vlm", "LLM")}


class Interrupted(Exception):
    """The local host's "the user pressed Interrupt"."""


class LocalFolders(ModelFolders):
    """ComfyUI's folder layout under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def bases(self, kind: str) -> list[Path]:
        return [self.root / "models" / name for name in FOLDER_ALIASES.get(kind, (kind,))]

    def output_dir(self) -> Path:
        return self.root / "output"

    def temp_dir(self) -> Path:
        return self.root / "temp"


@dataclass
class LocalContext:
    """A `NodeContext` that records what a node shows; `stop_when(progress_calls)` interrupts."""

    folders: LocalFolders
    progress_calls: list[tuple[int, int, Image.Image | None]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    interrupt_after: Callable[[LocalContext], bool] | None = None
    stop_requested: bool = False

    def progress(self, value: int, total: int, preview: Image.Image | None = None) -> None:
        self.progress_calls.append((value, total, preview))
        if self.interrupt_after is not None and self.interrupt_after(self):
            self.stop_requested = True

    def show_text(self, text: str) -> None:
        self.texts.append(text)

    def interrupted(self) -> bool:
        return self.stop_requested

    def raise_if_interrupted(self) -> None:
        if self.stop_requested:
            raise Interrupted("interrupted")


def with_defaults(spec: NodeSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs a host passes to `run`: given values, widget defaults for missing ones."""
    known = {i.name for i in spec.inputs}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise DRFInputError(f"{spec.node_id} has no input(s) {unknown}; it has {sorted(known)}")
    values = {}
    for item in spec.inputs:
        if item.name in inputs:
            values[item.name] = inputs[item.name]
        elif item.is_widget and item.default is not None:
            values[item.name] = item.default
        elif not item.optional:
            raise DRFInputError(f"{spec.node_id}: required input {item.name!r} is missing")
    return values


def run_node(node: type[DRFNode], ctx: LocalContext, **inputs: Any) -> NodeResult:
    result = node.run(ctx, **with_defaults(node.SPEC, inputs))
    if len(result.outputs) != len(node.SPEC.outputs):
        raise RuntimeError(
            f"{node.SPEC.node_id} returned {len(result.outputs)} outputs, its spec has {len(node.SPEC.outputs)}"
        )
    return result


def execution_order(prompt: dict[str, dict[str, Any]]) -> list[str]:
    """Node ids so that every node comes after the nodes it takes inputs from."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "active":
            raise DRFInputError(f"the prompt has a cycle through node {node_id}")
        if node_id not in prompt:
            raise DRFInputError(f"a link points to node {node_id}, which is not in the prompt")
        state[node_id] = "active"
        for value in prompt[node_id]["inputs"].values():
            if _is_link(value):
                visit(str(value[0]))
        state[node_id] = "done"
        order.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return order


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def run_prompt(
    prompt: dict[str, dict[str, Any]],
    nodes: dict[str, type[DRFNode]],
    ctx_for: Callable[[str], LocalContext],
) -> dict[str, NodeResult]:
    """Execute an API-format prompt of this pack's nodes; `ctx_for(node_id)` gives each node's context."""
    results: dict[str, NodeResult] = {}
    for node_id in execution_order(prompt):
        entry = prompt[node_id]
        node = nodes.get(entry["class_type"])
        if node is None:
            raise DRFInputError(f"node {node_id}: {entry['class_type']!r} is not a node of this pack")
        inputs = {
            name: results[str(value[0])].outputs[value[1]] if _is_link(value) else value
            for name, value in entry["inputs"].items()
        }
        logger.info("running node %s (%s)", node_id, entry["class_type"])
        results[node_id] = run_node(node, ctx_for(node_id), **inputs)
    return results

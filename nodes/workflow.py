"""ComfyUI workflow files (UI format 0.4): build them from node specs, check them, convert to API format.

- `WorkflowBuilder` writes a workflow the editor opens: nodes with every widget value in input
  order (a seed's "control after generate" value after it), sockets, links typed at both ends.
- `check_workflow` lists what is wrong with a workflow file: unknown node types, links whose types
  differ at their ends or whose ids disagree, widget values that do not fit the inputs in number,
  order, type or range, required sockets left open.
- `ui_to_api` turns a workflow into the prompt `POST /prompt` takes (what the editor sends).

Frontend-only nodes (notes) are kept in files and skipped by checks and conversion. Knows node
specs; nothing about ComfyUI's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import InputSpec, ModelFolders, NodeSpec

UI_FORMAT_VERSION = 0.4
CONTROL_AFTER_GENERATE = ("fixed", "increment", "decrement", "randomize")
FRONTEND_ONLY_TYPES = ("Note", "MarkdownNote")
NODE_WIDTH = 320
WIDGET_HEIGHT = 26
SOCKET_HEIGHT = 22


def widget_slots(spec: NodeSpec) -> list[tuple[InputSpec, bool]]:
    """`(input, is_control_value)` for every entry of `widgets_values`, in order."""
    slots: list[tuple[InputSpec, bool]] = []
    for item in spec.inputs:
        if item.is_widget:
            slots.append((item, False))
            if item.control_after_generate:
                slots.append((item, True))
    return slots


def socket_inputs(spec: NodeSpec) -> list[InputSpec]:
    return [item for item in spec.inputs if not item.is_widget]


@dataclass
class WorkflowBuilder:
    """Place nodes, set widgets, connect outputs to inputs; `build()` gives the UI-format dict."""

    specs: Mapping[str, NodeSpec]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    links: list[list[Any]] = field(default_factory=list)

    def add(
        self,
        node_id: str,
        pos: tuple[float, float],
        widgets: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> int:
        """Place a node; `widgets` (a dict, so widget names never clash with these parameters) overrides defaults."""
        widgets = dict(widgets or {})
        spec = self.specs[node_id]
        unknown = set(widgets) - {i.name for i in spec.inputs if i.is_widget}
        if unknown:
            raise KeyError(f"{node_id} has no widget(s) {sorted(unknown)}")
        values: list[Any] = []
        for item, is_control in widget_slots(spec):
            if is_control:
                values.append("fixed")
            else:
                values.append(widgets.get(item.name, item.default))
        sockets = socket_inputs(spec)
        height = 40 + SOCKET_HEIGHT * max(len(sockets), len(spec.outputs)) + WIDGET_HEIGHT * len(values)
        node = {
            "id": len(self.nodes) + 1,
            "type": node_id,
            "pos": [pos[0], pos[1]],
            "size": [NODE_WIDTH, height],
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": [{"name": s.name, "type": s.type, "link": None} for s in sockets],
            "outputs": [
                {"name": o.name, "type": o.type, "links": [], "slot_index": i} for i, o in enumerate(spec.outputs)
            ],
            "properties": {"Node name for S&R": node_id},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node["id"]

    def note(self, pos: tuple[float, float], text: str, size: tuple[float, float] = (400, 200)) -> int:
        node = {
            "id": len(self.nodes) + 1,
            "type": "MarkdownNote",
            "pos": [pos[0], pos[1]],
            "size": [size[0], size[1]],
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {},
            "widgets_values": [text],
        }
        self.nodes.append(node)
        return node["id"]

    def _node(self, node_number: int) -> dict[str, Any]:
        return self.nodes[node_number - 1]

    def connect(self, source: int, output: str, target: int, input_name: str) -> None:
        src, dst = self._node(source), self._node(target)
        slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == output)
        dst_slot = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == input_name)
        link_id = len(self.links) + 1
        link_type = src["outputs"][slot]["type"]
        self.links.append([link_id, source, slot, target, dst_slot, link_type])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][dst_slot]["link"] = link_id

    def build(self) -> dict[str, Any]:
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": UI_FORMAT_VERSION,
        }


def _value_problem(item: InputSpec, value: Any, folders: ModelFolders | None) -> str | None:
    kind = item.type
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else "is not true/false"
    if kind in ("INT", "FLOAT"):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind == "INT" and not isinstance(value, int))
        ):
            return f"is not {'an integer' if kind == 'INT' else 'a number'}"
        if (item.min is not None and value < item.min) or (item.max is not None and value > item.max):
            return f"= {value} is outside [{item.min}, {item.max}]"
        return None
    if not isinstance(value, str):
        return "is not text"
    if kind == "COMBO" and not callable(item.options) and value not in item.option_list(folders):
        return f"= {value!r} is not one of {item.option_list(folders)}"
    return None


def check_workflow(
    workflow: dict[str, Any], specs: Mapping[str, NodeSpec], folders: ModelFolders | None = None
) -> list[str]:
    """Every problem found, as readable lines (empty: the workflow fits these node specs)."""
    problems: list[str] = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        spec = specs.get(node["type"])
        if spec is None:
            problems.append(f"{where}: not a registered node type")
            continue
        slots = widget_slots(spec)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widget values, the node has {len(slots)}")
        for (item, is_control), value in zip(slots, values, strict=False):
            if is_control:
                if value not in CONTROL_AFTER_GENERATE:
                    problems.append(f"{where}: control after generate of {item.name} = {value!r}")
            elif (problem := _value_problem(item, value, folders)) is not None:
                problems.append(f"{where}: widget {item.name} {problem}")
        sockets = {s.name: s for s in socket_inputs(spec)}
        given = {s["name"]: s for s in node.get("inputs", [])}
        for name, item in sockets.items():
            if name not in given:
                problems.append(f"{where}: input socket {name} is missing")
            elif given[name].get("link") is None and not item.optional:
                problems.append(f"{where}: required input {name} is not connected")
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry["name"] not in sockets and "widget" not in entry:
                problems.append(f"{where}: unknown input {entry['name']}")
            link = links.get(entry.get("link")) if entry.get("link") is not None else None
            if entry.get("link") is not None and (link is None or link[3] != node["id"] or link[4] != slot):
                problems.append(f"{where}: input {entry['name']} names link {entry['link']}, which does not end here")
        if [o["type"] for o in node.get("outputs", [])] != [o.type for o in spec.outputs]:
            problems.append(f"{where}: outputs {[o['type'] for o in node.get('outputs', [])]} differ from the node's")
    for link_id, source, slot, target, target_slot, link_type in links.values():
        where = f"link {link_id}"
        if source not in nodes or target not in nodes:
            problems.append(f"{where}: joins missing node {source if source not in nodes else target}")
            continue
        src_spec, dst_spec = specs.get(nodes[source]["type"]), specs.get(nodes[target]["type"])
        if src_spec is None or dst_spec is None:
            continue
        if slot >= len(src_spec.outputs) or target_slot >= len(nodes[target].get("inputs", [])):
            problems.append(f"{where}: slot out of range")
            continue
        out_type = src_spec.outputs[slot].type
        input_name = nodes[target]["inputs"][target_slot]["name"]
        in_spec = next((i for i in dst_spec.inputs if i.name == input_name), None)
        in_type = in_spec.type if in_spec is not None else None
        if not (out_type == in_type == link_type):
            problems.append(f"{where}: {out_type} -> {in_type} (link says {link_type})")
        if link_id not in (nodes[source]["outputs"][slot].get("links") or []):
            problems.append(f"{where}: not listed by its source's output")
    if workflow.get("last_node_id", 0) < max(nodes, default=0) or workflow.get("last_link_id", 0) < max(
        links, default=0
    ):
        problems.append("last_node_id / last_link_id are smaller than ids in use")
    return problems


def ui_to_api(workflow: dict[str, Any], specs: Mapping[str, NodeSpec]) -> dict[str, dict[str, Any]]:
    """The API-format prompt for a (checked) workflow; muted/bypassed nodes and notes are left out."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES or node.get("mode", 0) in (2, 4):
            continue
        spec = specs[node["type"]]
        inputs: dict[str, Any] = {}
        for (item, is_control), value in zip(widget_slots(spec), node.get("widgets_values", []), strict=True):
            if not is_control:
                inputs[item.name] = value
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                inputs[entry["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt

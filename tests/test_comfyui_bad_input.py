"""Bad input through a real ComfyUI server (set COMFYUI_DIR; skipped otherwise).

For every node in `nodes.NODES` a valid prompt is built from the node specs alone (`build_graph`): the node,
a producer for each required socket (another DRF node, or core EmptyImage for IMAGE) and, unless the node is
an output node, a consumer down to an output node (core PreviewImage for IMAGE). Helpers that train or write
into `models/` are used only when nothing else fits. That prompt must run; then every widget gets bad values
and every socket a link of the wrong type, each queued through `POST /prompt`:

- INT / FLOAT below min, above max, empty, not a number: ComfyUI's validation must refuse them (`node_errors`
  naming the node and the input: HTTP 400, or 200 when another output of the prompt is valid and still runs).
- COMBO not in the list, empty, a number: ComfyUI's validation error or the node's own clear error (0.3.64
  does not check a V3 combo's value against its list, so the node must).
- STRING empty: the node's own clear error naming the input, unless the tooltip says what empty means
  (then it must run). STRING / BOOLEAN of the wrong type: ComfyUI converts any value with `str()` / `bool()`
  before a node sees it, so the converted value must either run or get the node's clear error.
- Missing model files, folders of the wrong kind, LoRAs of another model family and malformed question
  JSON: ComfyUI's validation error, or the node's own error (a `DRFInputError`) in the history entry.

"Clear" means: a `DRFInputError` (or subclass) whose message names the input or the file it is about. After
every case the server still answers `/system_stats`; no file under `models/` or in a run folder that existed
before is changed or lost (new files, e.g. from Save LoRA, are fine). Last, two training prompts queued back
to back with the same run_name continue one run in order (resume on) or start `<run_name>_2` and leave the
first run untouched (resume off).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy_pack import TEXT_ENCODER_FILE, TINY_UNET, VAE_FILE, run_ok, shrink
from tests.comfy_server import ComfyPromptError, ComfyServer
from tests.conftest import import_pack

pytestmark = pytest.mark.comfyui

NODES = import_pack()[1].NODES
SPECS = {node.SPEC.node_id: node.SPEC for node in NODES}
RUN_NAME = "bad_input"  # every Train LoRA of the matrix: trained once (1 step), later prompts resume it at once
# Helpers avoided when another node fits (they are still tested as targets themselves).
AVOID_AS_HELPER = {"DRFTrainLoRA": "trains", "DRFSaveLoRA": "writes into models/loras"}
# Core nodes standing in for ComfyUI types (the model files are the server's template-named tiny ones).
CORE_PRODUCERS = {
    "IMAGE": ("EmptyImage", {"width": 32, "height": 32, "batch_size": 5, "color": 0}),
    "MODEL": ("UNETLoader", {"unet_name": TINY_UNET, "weight_dtype": "default"}),
    "VAE": ("VAELoader", {"vae_name": VAE_FILE}),
    "CLIP": ("CLIPLoader", {"clip_name": TEXT_ENCODER_FILE, "type": "wan", "device": "default"}),
}
# Optional sockets a node cannot run without in this matrix (it needs a CLIP or encoded prompts).
NEEDED_OPTIONAL = {("DRFVideoModelFromComfy", "clip")}
CORE_CONSUMERS = {"IMAGE": ("PreviewImage", "images")}
GOOD_LORA_PREFIX = "drf_test/good"
PROMPT = "a red ball rolls across green grass"
CASE_TIMEOUT_S = 300
# Known-good values where a widget's default is not one (a node whose default is invalid must be listed here).
CLEAR_ERROR_TYPES = ("DRFInputError", "ModelFolderError")


def good_values(pack_nodes) -> dict[tuple[str, str], Any]:
    prompts = importlib.import_module(f"{pack_nodes.__name__}.prompts")
    decompose = importlib.import_module(f"{pack_nodes.__name__.rsplit('.', 1)[0]}.drf_core.decompose").decompose
    return {("DRFQuestionsFromJSON", "questions_json"): prompts.questions_json((decompose(PROMPT),))}


# --- building prompts from the specs ------------------------------------------------------------------------------


def _sockets(spec, required_only: bool = True) -> list:
    return [i for i in spec.inputs if not i.is_widget and not (required_only and i.optional)]


def _settings_only(spec) -> bool:
    """A node of fixed widgets only (no sockets, no model or file lists): Reward Settings, Training Options."""
    return not _sockets(spec, required_only=False) and not any(callable(i.options) for i in spec.inputs)


def _settings_producer(kind: str) -> str | None:
    return next((n for n, spec in SPECS.items() if _settings_only(spec) and spec.outputs[0].type == kind), None)


def _producer(kind: str, exclude: set[str]) -> str:
    """The node that makes a `kind` value most cheaply: a core node, else a DRF node with the fewest sockets."""
    if kind in CORE_PRODUCERS:
        return CORE_PRODUCERS[kind][0]
    candidates = [
        (node_id in AVOID_AS_HELPER, len(_sockets(spec)), index, node_id)
        for index, (node_id, spec) in enumerate(SPECS.items())
        if node_id not in exclude and kind in [o.type for o in spec.outputs]
    ]
    assert candidates, f"no node outputs {kind}: the matrix cannot build a prompt that needs one"
    return min(candidates)[-1]


def _consumer(spec) -> tuple[str, str, int]:
    """(node, its socket, which output of `spec`) that leads most cheaply to an output node."""
    candidates = []
    for position, output in enumerate(spec.outputs):
        if output.type in CORE_CONSUMERS:
            core, socket_name = CORE_CONSUMERS[output.type]
            candidates.append(((False, False, 0, False, -1), core, socket_name, position))
        for index, (node_id, other) in enumerate(SPECS.items()):
            for socket in _sockets(other, required_only=False):
                if socket.type == output.type and node_id != spec.node_id:
                    others = len([s for s in _sockets(other) if s.name != socket.name])
                    key = (node_id in AVOID_AS_HELPER, socket.optional, others, not other.is_output_node, index)
                    candidates.append((key, node_id, socket.name, position))
    assert candidates, f"nothing consumes an output of {spec.node_id}: it cannot be part of a runnable prompt"
    best = min(candidates, key=lambda c: c[0])
    return best[1], best[2], best[3]


class GraphBuilder:
    """An API prompt grown node by node; one producer per socket type is shared by the nodes that need it."""

    def __init__(self, served: dict, good: dict) -> None:
        self.served = served
        self.good = good
        self.prompt: dict[str, dict] = {}
        self.made: dict[str, list] = {}

    def widgets(self, node_id: str) -> dict[str, Any]:
        values = {}
        listed = {**self.served[node_id]["input"]["required"], **self.served[node_id]["input"].get("optional", {})}
        for item in SPECS[node_id].inputs:
            if not item.is_widget:
                continue
            if (node_id, item.name) in self.good:
                values[item.name] = self.good[(node_id, item.name)]
            elif item.type == "COMBO":
                options = listed[item.name][1]
                values[item.name] = options.get("default") or options["options"][0]
            else:
                values[item.name] = item.default
        return values

    def add(self, node_id: str, chain: frozenset = frozenset()) -> str:
        key = str(len(self.prompt) + 1)
        if node_id not in SPECS:  # a core node
            widgets = next(values for core, values in CORE_PRODUCERS.values() if core == node_id)
            self.prompt[key] = {"class_type": node_id, "inputs": dict(widgets)}
            return key
        self.prompt[key] = {"class_type": node_id, "inputs": self.widgets(node_id)}

        # Required sockets get a producer; optional ones a settings node, so the shrunk sizes reach every node.
        def needed(socket) -> bool:
            return not socket.optional or (node_id, socket.name) in NEEDED_OPTIONAL

        wanted = [s for s in _sockets(SPECS[node_id], required_only=False) if needed(s) or _settings_producer(s.type)]
        for socket in wanted:
            if socket.type not in self.made:
                maker = _producer(socket.type, chain | {node_id}) if needed(socket) else _settings_producer(socket.type)
                self.made[socket.type] = [self.add(maker, chain | {node_id}), 0]
                producer = self.prompt[self.made[socket.type][0]]["class_type"]
                if producer in SPECS:
                    outputs = [o.type for o in SPECS[producer].outputs]
                    self.made[socket.type][1] = outputs.index(socket.type)
            self.prompt[key]["inputs"][socket.name] = list(self.made[socket.type])
        return key

    def finish(self, key: str) -> None:
        """Make `key` run: hang consumers on it until an output node is reached."""
        node_id = self.prompt[key]["class_type"]
        while node_id in SPECS and not SPECS[node_id].is_output_node:
            consumer, socket, position = _consumer(SPECS[node_id])
            self.made.setdefault(SPECS[node_id].outputs[position].type, [key, position])
            if consumer in SPECS:
                consumer_key = self.add(consumer, frozenset({node_id}))
            else:
                consumer_key = str(len(self.prompt) + 1)
                self.prompt[consumer_key] = {"class_type": consumer, "inputs": {}}
            self.prompt[consumer_key]["inputs"][socket] = [key, position]
            key, node_id = consumer_key, consumer


def build_graph(target: str, served: dict, good: dict, **extra: Any) -> tuple[dict, str]:
    """A runnable, shrunk prompt around `target`; returns it and the target's key."""
    builder = GraphBuilder(served, good)
    key = builder.add(target)
    builder.finish(key)
    return shrink(builder.prompt, **{"steps": 1, "run_name": RUN_NAME, **extra}), key


# --- outcomes ------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rejected: dict | None = None  # the 400 answer's node_errors
    error: dict | None = None  # the history entry's execution_error
    entry: dict | None = None

    def describe(self) -> str:
        if self.rejected is not None:
            return f"rejected: {json.dumps(self.rejected)[:600]}"
        if self.error is not None:
            return f"failed in {self.error.get('node_type')}: {self.error.get('exception_type')}: " + str(
                self.error.get("exception_message")
            )
        return "ran"


def queue(server: ComfyServer, prompt: dict) -> Outcome:
    """Queue `prompt`; its validation errors (HTTP 400, or 200 when other outputs stay valid) or its run."""
    try:
        answer = server.submit(prompt)
    except ComfyPromptError as rejected:
        assert isinstance(rejected.body, dict) and rejected.body.get("node_errors"), rejected.body
        outcome = Outcome(rejected=rejected.body["node_errors"])
    else:
        entry = server.wait(answer["prompt_id"], timeout=CASE_TIMEOUT_S)  # the valid outputs run
        messages = (entry.get("status") or {}).get("messages", [])
        errors = [data for name, data in messages if name == "execution_error"]
        assert not [m for m, _ in messages if m == "execution_interrupted"], entry["status"]
        outcome = Outcome(rejected=answer.get("node_errors") or None, error=errors[0] if errors else None, entry=entry)
    assert server.is_alive() and "system" in server.get("/system_stats"), server.log_tail()
    return outcome


def assert_rejected(outcome: Outcome, key: str, input_name: str, what: str) -> None:
    assert outcome.rejected is not None, f"{what}: ComfyUI should refuse it, but it {outcome.describe()}"
    errors = outcome.rejected.get(key, {}).get("errors", [])
    names = [e.get("extra_info", {}).get("input_name") for e in errors]
    assert input_name in names, f"{what}: node {key}'s errors do not name {input_name}: {outcome.describe()}"


def assert_clear_error(outcome: Outcome, what: str, node_type: str, *mentions: str | tuple[str, ...]) -> None:
    """The node's own error, of a clear kind, mentioning each of `mentions` (a tuple: one of its spellings)."""
    assert outcome.error is not None, f"{what}: expected {node_type}'s own error, but it {outcome.describe()}"
    error = outcome.error
    assert error["node_type"] == node_type, f"{what}: {outcome.describe()}"
    assert error["exception_type"].rsplit(".", 1)[-1] in CLEAR_ERROR_TYPES, f"{what}: {outcome.describe()}"
    message = error["exception_message"]
    spellings = [(m,) if isinstance(m, str) else m for m in mentions]
    missing = [m for m in spellings if not any(s.lower() in message.lower() for s in m)]
    assert not missing, f"{what}: the message does not mention {missing}: {message}"


# --- the server, its files, and the tree snapshots ------------------------------------------------------------------


def _tree(folder: Path, content: bool) -> dict[str, Any]:
    """Every file under `folder` (links followed): its sha256 (`content`) or its (size, mtime)."""
    found = {}
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(root) / name
            if content:
                found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                stat = path.stat()
                found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


def _changed_or_lost(before: dict, after: dict) -> list[str]:
    return sorted(name for name, value in before.items() if after.get(name) != value)


def _link_all_but(source: Path, target: Path, leave_out: str, keep: tuple[str, ...] = ()) -> None:
    """`target` as a copy of folder `source` made of links, without `leave_out` (or only its `keep` files)."""
    target.mkdir(parents=True)
    for child in source.iterdir():
        if child.name != leave_out:
            (target / child.name).symlink_to(child)
        elif keep:
            (target / child.name).mkdir()
            for name in keep:
                (target / child.name / name).symlink_to(child / name)


def _sdxl_lora(path: Path, layout: str, header: dict[str, str] | None = None) -> None:
    """A rank-4 LoRA on one SDXL UNet attention layer, in kohya ('lora_unet_...') or peft ('unet....') keys."""
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    if layout == "kohya":
        base = "lora_unet_" + layer.replace(".", "_")
        tensors = {f"{base}.lora_down.weight": torch.zeros(4, 640), f"{base}.lora_up.weight": torch.zeros(640, 4)}
        tensors[f"{base}.alpha"] = torch.tensor(4.0)
    else:
        tensors = {
            f"unet.{layer}.lora_A.weight": torch.zeros(4, 640),
            f"unet.{layer}.lora_B.weight": torch.zeros(640, 4),
        }
    save_file(tensors, str(path), metadata=header)


@pytest.fixture(scope="module")
def bad_env(server, tiny_models, pack_nodes):
    """Wrong and broken model files in place, a good LoRA trained, the served schemas; then the snapshots."""
    models = server.models_dir
    (models / "diffusers" / "zz_qwen_vl").symlink_to(tiny_models.qwen, target_is_directory=True)
    qwen_image = models / "diffusers" / "zz_qwen_image"
    qwen_image.mkdir()
    (qwen_image / "model_index.json").write_text(
        json.dumps({"_class_name": "QwenImagePipeline", "transformer": ["diffusers", "QwenImageTransformer2DModel"]})
    )
    _link_all_but(tiny_models.wan, models / "diffusers" / "zz_wan_no_vae", "vae")
    _link_all_but(tiny_models.wan, models / "diffusers" / "zz_wan_no_weights", "transformer", keep=("config.json",))
    (models / "vlm").mkdir(exist_ok=True)
    (models / "vlm" / "zz_wan_parts").symlink_to(tiny_models.wan, target_is_directory=True)
    qwen_files = [p.name for p in tiny_models.qwen.iterdir() if p.suffix != ".safetensors"]
    (models / "vlm" / "zz_qwen_no_weights").mkdir()
    for name in qwen_files:
        (models / "vlm" / "zz_qwen_no_weights" / name).symlink_to(tiny_models.qwen / name)
    _sdxl_lora(models / "loras" / "zz_sdxl_kohya.safetensors", "kohya")
    _sdxl_lora(models / "loras" / "zz_sdxl_peft.safetensors", "peft")
    _sdxl_lora(models / "loras" / "zz_sdxl_header.safetensors", "kohya", {"family": "sdxl"})

    served = server.object_info()
    good = good_values(pack_nodes)
    # Load LoRA (the cheapest LoRA producer) needs a file: train one (Train LoRA -> Save LoRA) first.
    builder = GraphBuilder(served, good)
    train = builder.add("DRFTrainLoRA")
    builder.prompt["save"] = {
        "class_type": "DRFSaveLoRA",
        "inputs": {**builder.widgets("DRFSaveLoRA"), "lora": [train, 0], "filename_prefix": GOOD_LORA_PREFIX},
    }
    run_ok(server, shrink(builder.prompt, steps=1, run_name=RUN_NAME))
    (saved,) = (models / "loras").glob(f"{GOOD_LORA_PREFIX}_*.safetensors")
    good[("DRFLoadLoRA", "lora_name")] = saved.relative_to(models / "loras").as_posix()
    return {
        "served": served,
        "good": good,
        "models": _tree(models, content=True),
        "models_stat": _tree(models, content=False),
        "runs": _tree(server.output_dir / "drf_runs", content=True),
    }


def assert_files_kept(server: ComfyServer, env: dict) -> None:
    lost = _changed_or_lost(env["models_stat"], _tree(server.models_dir, content=False))
    assert not lost, f"files under models/ changed or lost: {lost}"
    lost = _changed_or_lost(env["runs"], _tree(server.output_dir / "drf_runs", content=True))
    assert not lost, f"files of an earlier run changed or lost: {lost}"


# --- the matrix -----------------------------------------------------------------------------------------------------

REJECT, CLEAR, RUNS = "rejected by ComfyUI", "the node's clear error", "runs"
REJECT_OR_CLEAR, CLEAR_OR_RUNS = "rejected, or the node's clear error", "runs, or the node's clear error"
WIDGETS = [(node_id, item.name) for node_id, spec in SPECS.items() for item in spec.inputs if item.is_widget]
SOCKETS = [(node_id, item.name) for node_id, spec in SPECS.items() for item in spec.inputs if not item.is_widget]


def bad_values(item) -> list[tuple[str, Any, str]]:
    """(label, value, what must happen) for one widget."""
    if item.type in ("INT", "FLOAT"):
        one = 1 if item.type == "INT" else 1.0
        return [
            ("below min", item.min - one, REJECT),
            ("above max", item.max + one, REJECT),
            ("empty string", "", REJECT),
            ("not a number", "many", REJECT),
        ]
    if item.type == "COMBO":
        # ComfyUI 0.3.64 checks the choice of a V1 combo only (a V3 combo's type is "COMBO", not the list)
        choice = REJECT_OR_CLEAR
        return [("not in the list", "zz-no-such-choice", choice), ("empty string", "", choice), ("a number", 7, choice)]
    if item.type == "STRING":  # ComfyUI passes str(value) on: a number arrives as text
        return [
            # "(empty: none)", "Empty keeps ...": the tooltip says what empty means, so it must run
            ("empty string", "", RUNS if re.search(r"\bempty(:| keeps)", item.tooltip, re.IGNORECASE) else CLEAR),
            ("a number", 7, CLEAR_OR_RUNS),
        ]
    if item.type == "BOOLEAN":  # ComfyUI passes bool(value) on: any value arrives as True or False
        return [("a word", "no", CLEAR_OR_RUNS)]
    raise AssertionError(f"no bad values known for widget type {item.type}: add them here")


def check(outcome: Outcome, expect: str, key: str, node_id: str, name: str, value: Any, what: str) -> None:
    if expect == REJECT or (expect == REJECT_OR_CLEAR and outcome.rejected is not None):
        assert_rejected(outcome, key, name, what)
    elif expect in (CLEAR, REJECT_OR_CLEAR) or outcome.error is not None or outcome.rejected is not None:
        assert expect != RUNS, f"{what}: the tooltip says what empty means, so it must run; it {outcome.describe()}"
        about = (name, name.replace("_", " "), *((str(value),) if value != "" else ("empty", "''")))
        assert_clear_error(outcome, what, node_id, about)


@pytest.mark.parametrize("node_id", list(SPECS))
def test_every_node_runs_in_a_prompt_built_from_its_spec(server, bad_env, node_id):
    prompt, _ = build_graph(node_id, bad_env["served"], bad_env["good"])
    run_ok(server, prompt, timeout=CASE_TIMEOUT_S)


@pytest.mark.parametrize(("node_id", "name"), WIDGETS, ids=[f"{n}.{i}" for n, i in WIDGETS])
def test_bad_widget_values_get_a_validation_error_or_a_clear_message(server, bad_env, node_id, name):
    item = SPECS[node_id].input(name)
    for label, value, expect in bad_values(item):
        prompt, key = build_graph(node_id, bad_env["served"], bad_env["good"])
        prompt[key]["inputs"][name] = value
        outcome = queue(server, prompt)
        check(outcome, expect, key, node_id, name, value, f"{node_id}.{name} = {value!r} ({label})")
    assert_files_kept(server, bad_env)


@pytest.mark.parametrize(("node_id", "name"), SOCKETS, ids=[f"{n}.{i}" for n, i in SOCKETS])
def test_a_link_of_the_wrong_type_is_refused(server, bad_env, node_id, name):
    prompt, key = build_graph(node_id, bad_env["served"], bad_env["good"])
    kind = SPECS[node_id].input(name).type
    if kind != "IMAGE":
        source = {"class_type": CORE_PRODUCERS["IMAGE"][0], "inputs": dict(CORE_PRODUCERS["IMAGE"][1])}
    else:  # a DRF node that needs no socket and makes something else
        other = next(n for n, spec in SPECS.items() if not _sockets(spec) and spec.outputs[0].type != "IMAGE")
        source = {"class_type": other, "inputs": GraphBuilder(bad_env["served"], bad_env["good"]).widgets(other)}
    prompt["wrong"] = source
    prompt[key]["inputs"][name] = ["wrong", 0]
    assert_rejected(queue(server, prompt), key, name, f"{node_id}.{name} linked to {source['class_type']}")


# (what, loader, value, what must happen, the node that reports it (None: any), words the message must contain)
MODEL_CASES = [
    ("a video model that is not there", "DRFLoadVideoModel", "Wan2.2-not-downloaded", REJECT_OR_CLEAR,
     "DRFLoadVideoModel", ("Wan2.2-not-downloaded", "press R")),
    ("a Qwen2.5-VL folder in models/diffusers", "DRFLoadVideoModel", "zz_qwen_vl", REJECT_OR_CLEAR,
     "DRFLoadVideoModel", ("zz_qwen_vl", "no model_index.json", "critic")),
    ("a Qwen-Image pipeline as video model", "DRFLoadVideoModel", "zz_qwen_image", CLEAR, "DRFLoadVideoModel",
     ("zz_qwen_image", "QwenImagePipeline", "text-to-video")),
    ("a video model without its vae", "DRFLoadVideoModel", "zz_wan_no_vae", CLEAR, "DRFLoadVideoModel",
     ("zz_wan_no_vae", "vae", "download")),
    ("a video model without its weights", "DRFLoadVideoModel", "zz_wan_no_weights", CLEAR, None,
     ("zz_wan_no_weights", "download")),
    ("a critic that is not there", "DRFLoadVLMCritic", "Qwen2.5-VL-72B-not-downloaded", REJECT_OR_CLEAR,
     "DRFLoadVLMCritic", ("Qwen2.5-VL-72B-not-downloaded", "press R")),
    ("a Wan transformer as critic", "DRFLoadVLMCritic", "zz_wan_parts/transformer", CLEAR, "DRFLoadVLMCritic",
     ("zz_wan_parts", "diffusers component", "Qwen2.5-VL")),
    ("a Wan text encoder as critic", "DRFLoadVLMCritic", "zz_wan_parts/text_encoder", CLEAR, "DRFLoadVLMCritic",
     ("umt5", "not a supported critic")),
    ("a critic without its weights", "DRFLoadVLMCritic", "zz_qwen_no_weights", CLEAR, None,
     ("zz_qwen_no_weights", "download")),
    ("a LoRA that is not there", "DRFLoadLoRA", "drf/not_saved_yet.safetensors", REJECT_OR_CLEAR, "DRFLoadLoRA",
     ("not_saved_yet", "press R")),
    ("an SDXL LoRA (kohya keys)", "DRFLoadLoRA", "zz_sdxl_kohya.safetensors", CLEAR, "DRFLoadLoRA",
     ("zz_sdxl_kohya", "another model family")),
    ("an SDXL LoRA (peft keys)", "DRFLoadLoRA", "zz_sdxl_peft.safetensors", CLEAR, "DRFLoadLoRA",
     ("zz_sdxl_peft", "another model family")),
    ("a LoRA whose header says sdxl", "DRFLoadLoRA", "zz_sdxl_header.safetensors", CLEAR, "DRFLoadLoRA",
     ("sdxl models", "LoRA loader")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "loader", "value", "expect", "reporter", "words"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES]
)
def test_missing_or_wrong_model_files_get_a_clear_message(
    server, bad_env, what, loader, value, expect, reporter, words
):
    prompt, key = build_graph(loader, bad_env["served"], bad_env["good"])
    name = next(i.name for i in SPECS[loader].inputs if i.type == "COMBO" and callable(i.options))  # the file list
    prompt[key]["inputs"][name] = value
    outcome = queue(server, prompt)
    if expect == REJECT_OR_CLEAR and outcome.rejected is not None:
        assert_rejected(outcome, key, name, what)
    else:
        reported_by = reporter or (outcome.error or {}).get("node_type")
        assert reported_by in SPECS, f"{what}: {outcome.describe()}"
        assert_clear_error(outcome, what, reported_by, *words)
    assert_files_kept(server, bad_env)


QUESTION_JSON_CASES = [
    ('{"prompt": "a ball", "aspects": [', ("not valid JSON", "line 1, column")),
    ("{'prompt': 'a ball'}", ("not valid JSON", "double quotes")),
    ("12345", ("expected an object",)),
    ("[]", ("empty",)),
    ('{"prompt": 5}', ("prompt", "expected a string")),
    ('{"prompt": "a ball", "aspects": {"TA": 1}}', ("aspects", "expected a list")),
    ('{"prompt": "a ball", "aspects": [], "colour": "red"}', ("unknown field", "colour")),
]


@pytest.mark.parametrize(("text", "words"), QUESTION_JSON_CASES, ids=[t for t, _ in QUESTION_JSON_CASES])
def test_malformed_question_json_gets_a_located_message(server, bad_env, text, words):
    node_id = "DRFQuestionsFromJSON"
    prompt, key = build_graph(node_id, bad_env["served"], bad_env["good"])
    prompt[key]["inputs"]["questions_json"] = text
    assert_clear_error(queue(server, prompt), f"questions_json {text!r}", node_id, "questions JSON", *words)


def test_a_duplicated_question_set_and_a_bad_weight_are_named(server, bad_env):
    node_id = "DRFQuestionsFromJSON"
    good = json.loads(bad_env["good"][(node_id, "questions_json")])
    bad_weight = {**good, "aspects": [{**good["aspects"][0], "weight": "heavy"}, *good["aspects"][1:]]}
    for data, words in (([good, good], ("more than one set",)), (bad_weight, ("aspects[0].weight", "number"))):
        prompt, key = build_graph(node_id, bad_env["served"], bad_env["good"])
        prompt[key]["inputs"]["questions_json"] = json.dumps(data)
        assert_clear_error(queue(server, prompt), f"questions_json {words}", node_id, *words)


# --- training runs queued back to back --------------------------------------------------------------------------


def _train_prompt(bad_env, run_name: str, **inputs) -> tuple[dict, str]:
    prompt, key = build_graph("DRFTrainLoRA", bad_env["served"], bad_env["good"], run_name=run_name)
    prompt[key]["inputs"].update(inputs)
    return prompt, key


def _metrics(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_seed(run: Path) -> int:
    (checkpoint,) = sorted((run / "checkpoints").iterdir())[-1:]
    return json.loads((checkpoint / "state.json").read_text())["config"]["seed"]


def test_resume_on_continues_one_run_in_order(server, bad_env):
    first, _ = _train_prompt(bad_env, "queued_resume", steps=1, resume=True)
    second, key = _train_prompt(bad_env, "queued_resume", steps=2, resume=True)
    ids = [server.queue(first), server.queue(second)]  # back to back: the second waits in the queue
    entries = [server.wait(prompt_id, timeout=CASE_TIMEOUT_S, check=True) for prompt_id in ids]
    run = server.output_dir / "drf_runs" / "queued_resume"
    assert _metrics(run) == [1, 2]
    assert f"resumed from {run / 'checkpoints' / 'step_000001'}" in server.log_text()
    assert entries[1]["outputs"][key]["text"][0].startswith(f"finished 2/2 steps in {run}")
    assert not (run.parent / "queued_resume_2").exists()


def test_resume_off_starts_a_new_run_folder_and_keeps_the_first(server, bad_env):
    first, _ = _train_prompt(bad_env, "queued_fresh", steps=1, seed=1, resume=False)
    second, key = _train_prompt(bad_env, "queued_fresh", steps=1, seed=2, resume=False)
    ids = [server.queue(first), server.queue(second)]
    entries = [server.wait(prompt_id, timeout=CASE_TIMEOUT_S, check=True) for prompt_id in ids]
    runs = server.output_dir / "drf_runs"
    # The first run's files are its own (its seed), not overwritten by the second, which has a folder of its own.
    assert _metrics(runs / "queued_fresh") == [1] and _checkpoint_seed(runs / "queued_fresh") == 1
    assert _metrics(runs / "queued_fresh_2") == [1] and _checkpoint_seed(runs / "queued_fresh_2") == 2
    text = entries[1]["outputs"][key]["text"][0]
    assert "queued_fresh already holds a run and resume is off" in text and "set run_name to queued_fresh_2" in text


def test_no_model_file_or_earlier_run_file_changed_or_was_lost(server, bad_env):
    lost = _changed_or_lost(bad_env["models"], _tree(server.models_dir, content=True))
    assert not lost, f"files under models/ changed or lost: {lost}"
    assert_files_kept(server, bad_env)
    assert server.is_alive()

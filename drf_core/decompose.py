"""Prompt -> `QuestionSet`: rule-based, language-model and Vanilla-DRF decomposers (a registry).

`decompose(prompt, method, aspects, chat)` dispatches through `DECOMPOSERS`:
- "rules": deterministic; a small hand-written lexicon and patterns find entities, counts,
  colours, materials, sizes, actions, spatial relations, camera motion, style, time and weather,
  and write TA / PHY / VQ questions tailored to them (no NLP library, nothing to download);
- "llm": asks a language model (any `chat` callable, e.g. a critic's text-only `chat`, or
  `CausalLMChat` over a local instruct LLM) with the fixed `LM_INSTRUCTION_TEMPLATE` for strict JSON,
  repairs common faults, fills missing aspects from the rules, and falls back to the rules with a
  WARNING when the reply is unusable. Model garbage never raises;
- "vanilla": the paper's Vanilla-DRF baseline, one TA yes/no question and nothing else.

The rules are a heuristic, not a parser: they cover common text-to-video prompt shapes and always
produce something sensible (a whole-prompt TA question, generic PHY and VQ questions) for the rest.
Knows nothing about critics, rewards or training: it only writes questions.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .config import resolve_device, resolve_dtype
from .decompose_rules import normalize_prompt, rule_question_set, vanilla_question
from .errors import DRFInputError, ModelFolderError
from .questions import (
    DEFAULT_ASPECTS,
    DEFAULT_ASPECTS_BY_NAME,
    Aspect,
    AspectSpec,
    QuestionSet,
    YesNoQuestion,
)
from .registry import Registry

logger = logging.getLogger(__name__)


class ChatModel(Protocol):
    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int = 512) -> str: ...


Chat = Callable[[str], str] | ChatModel
AspectsArg = Mapping[str, float] | Sequence[AspectSpec | str] | None
Decomposer = Callable[[str, list[AspectSpec], "Chat | None", int], QuestionSet]
DECOMPOSERS: Registry[Decomposer] = Registry("decomposer")

DEFAULT_LM_MAX_NEW_TOKENS = 1024


def decompose(
    prompt: str,
    method: str = "rules",
    aspects: AspectsArg = None,
    chat: Chat | None = None,
    max_new_tokens: int = DEFAULT_LM_MAX_NEW_TOKENS,
) -> QuestionSet:
    """Decompose `prompt` into a validated `QuestionSet` with the decomposer named `method`.

    The set's `prompt` is `prompt` verbatim (the trainer matches sets to prompts by it); the
    questions are written from it with runs of whitespace collapsed.

    `aspects`: None (TA 0.5, PHY 0.25, VQ 0.25), `{name: weight}`, or a list of `AspectSpec` / names.
    `chat`: for "llm", a `str -> str` callable or an object with `.chat(prompt, system, max_new_tokens)`.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise DRFInputError("the prompt is empty; write what the video should show, e.g. 'a red car drives at sunset'")
    decomposer = DECOMPOSERS.get(method)
    return decomposer(prompt, resolve_aspects(aspects), chat, max_new_tokens).validate()


def resolve_aspects(aspects: AspectsArg) -> list[AspectSpec]:
    """Turn the `aspects` argument into specs; default descriptions/weights come from `DEFAULT_ASPECTS`."""
    if aspects is None:
        return list(DEFAULT_ASPECTS)
    if isinstance(aspects, str):
        aspects = [aspects]
    if isinstance(aspects, Mapping):
        given = [(str(name), weight, None) for name, weight in aspects.items()]
    else:
        given = []
        for item in aspects:
            if isinstance(item, AspectSpec):
                given.append((item.name, item.weight, item.description))
            else:
                known = DEFAULT_ASPECTS_BY_NAME.get(str(item))
                given.append((str(item), known.weight if known else 1.0, None))
    specs: list[AspectSpec] = []
    for name, weight, description in given:
        if not name.strip():
            raise DRFInputError("aspects: an aspect name is empty; use names such as TA, PHY, VQ")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise DRFInputError(f"aspects[{name!r}]: weight must be a finite number >= 0, got {weight!r}")
        if any(spec.name == name for spec in specs):
            raise DRFInputError(f"aspects: {name!r} is listed twice; list each aspect once")
        known = DEFAULT_ASPECTS_BY_NAME.get(name)
        if description is None:
            description = known.description if known else ""
        specs.append(AspectSpec(name, description, float(weight)))
    if not specs:
        raise DRFInputError("aspects: the list is empty; give at least one aspect (e.g. TA)")
    if not any(spec.weight > 0 for spec in specs):
        raise DRFInputError("aspects: every weight is 0; give at least one aspect a positive weight")
    return specs


# =============================================================================================
# Vanilla-DRF
# =============================================================================================


@DECOMPOSERS.register("vanilla")
def decompose_vanilla(prompt: str, aspects: list[AspectSpec], chat: Chat | None, max_new_tokens: int) -> QuestionSet:
    """Vanilla-DRF: one TA yes/no question on the whole prompt; `aspects` and `chat` are ignored."""
    spec = DEFAULT_ASPECTS_BY_NAME["TA"]
    question = YesNoQuestion(vanilla_question(prompt), "yes", "overall")
    return QuestionSet(prompt, [Aspect("TA", spec.description, 1.0, [question], [])])


@DECOMPOSERS.register("rules")
def decompose_with_rules(prompt: str, aspects: list[AspectSpec], chat: Chat | None, max_new_tokens: int) -> QuestionSet:
    """Deterministic decomposition from a hand-written lexicon (`chat` is ignored)."""
    return rule_question_set(prompt, aspects)


# =============================================================================================
# Language-model decomposer
# =============================================================================================

LM_SYSTEM_PROMPT = (
    "You turn a text-to-video prompt into questions that check whether a generated video is faithful to it. "
    "You reply with one strict JSON object and nothing else."
)
_LM_EXAMPLE = {
    "prompt": "two red apples on a wooden table, the camera slowly pans left",
    "version": 1,
    "aspects": [
        {"name": "TA", "description": "Text-video alignment.", "weight": 0.5,
         "yes_no": [{"question": "Are there exactly two apples?", "expected": "yes", "tag": "count", "weight": 1.0},
                    {"question": "Are the apples red?", "expected": "yes", "tag": "color", "weight": 1.0},
                    {"question": "Is the table made of wood?", "expected": "yes", "tag": "material", "weight": 1.0},
                    {"question": "Are the apples on the table?", "expected": "yes", "tag": "relation", "weight": 1.0},
                    {"question": "Does the camera pan to the left?", "expected": "yes", "tag": "camera",
                     "weight": 1.0}],
         "explanations": [{"question": "Describe the apples in the video.",
                           "target": "Two red apples on a wooden table.", "tag": "object", "weight": 1.0}]},
        {"name": "PHY", "description": "Physical fidelity and commonsense.", "weight": 0.25,
         "yes_no": [{"question": "Do the apples keep their shape across frames?", "expected": "yes", "tag": "shape",
                     "weight": 1.0},
                    {"question": "Do the apples float above the table?", "expected": "no", "tag": "contact",
                     "weight": 1.0}],
         "explanations": [{"question": "Describe how the apples rest on the table.",
                           "target": "The apples rest on the table and keep their shape.", "tag": "contact",
                           "weight": 1.0}]},
        {"name": "VQ", "description": "Visual quality.", "weight": 0.25,
         "yes_no": [{"question": "Is the video sharp and free of artifacts?", "expected": "yes", "tag": "sharpness",
                     "weight": 1.0},
                    {"question": "Is there flicker between frames?", "expected": "no", "tag": "flicker",
                     "weight": 1.0}],
         "explanations": [{"question": "Describe the visual quality of the video.",
                           "target": "A sharp, clear video of two red apples on a wooden table, without flicker.",
                           "tag": "quality", "weight": 1.0}]},
    ],
}  # fmt: skip
LM_INSTRUCTION_TEMPLATE = (
    "Decompose the text-to-video prompt below into aspect-structured questions that a vision-language model "
    "answers by watching a generated video.\n\n"
    "Aspects (name, weight: meaning):\n<ASPECTS>\n\n"
    "Rules:\n"
    '- For every aspect write 2 to 8 yes/no questions in "yes_no" and 1 to 3 open questions in "explanations".\n'
    "- A yes/no question checks ONE thing: an entity, count, colour, material, size, action, spatial relation, "
    "camera motion, style, time or weather named in the prompt (TA); plausible motion, gravity, contact, object "
    "permanence or consistent shapes of the prompt's subjects (PHY); sharpness, artifacts, flicker, exposure or "
    "composition (VQ).\n"
    '- "expected" is the answer a video faithful to the prompt gives: "yes" or "no" '
    '("Is there flicker?" expects "no").\n'
    '- "tag" is one lowercase word saying what is checked (object, count, color, action, relation, camera, ...).\n'
    '- An explanation has a "question" ("Describe the apples in the video.") and a "target": the answer a '
    "faithful video gives, written from the prompt only. Do not invent details.\n"
    "- Reply with ONE JSON object in exactly the schema of the example: double quotes, no comments, no trailing "
    "commas, no code fences, no text before or after it.\n\n"
    "Example:\n<EXAMPLE>\n\n"
    'Prompt: "<PROMPT>"\nJSON:'
).replace("<EXAMPLE>", json.dumps(_LM_EXAMPLE, indent=1))


def build_lm_instruction(prompt: str, aspects: Sequence[AspectSpec]) -> str:
    lines = "\n".join(f"- {spec.name}, {spec.weight:g}: {spec.description or spec.name}" for spec in aspects)
    return LM_INSTRUCTION_TEMPLATE.replace("<ASPECTS>", lines).replace("<PROMPT>", prompt.replace('"', "'"))


def _call_chat(chat: Chat, text: str, max_new_tokens: int) -> Any:
    method = getattr(chat, "chat", None)
    if callable(method):
        return method(text, system=LM_SYSTEM_PROMPT, max_new_tokens=max_new_tokens)
    if callable(chat):
        return chat(f"{LM_SYSTEM_PROMPT}\n\n{text}")
    raise DRFInputError(
        f"chat must be a function str -> str or an object with a .chat() method, got {type(chat).__name__}"
    )


@DECOMPOSERS.register("llm")
def decompose_with_language_model(
    prompt: str, aspects: list[AspectSpec], chat: Chat | None, max_new_tokens: int
) -> QuestionSet:
    """Ask `chat` for the QuestionSet JSON; repair it; fall back to the rules when it is unusable."""
    if chat is None:
        raise DRFInputError(
            "the 'llm' decomposer needs a language model: pass chat= (a critic, a CausalLMChat over a local "
            "instruct LLM folder, or a function str -> str), or use method='rules'"
        )
    rules = decompose_with_rules(prompt, aspects, None, max_new_tokens)
    reply = _call_chat(chat, build_lm_instruction(normalize_prompt(prompt), aspects), max_new_tokens)
    try:
        repaired, notes = repair_question_set(reply, prompt, aspects, rules)
    except DRFInputError as error:
        logger.warning("language-model decomposition unusable (%s); using the rule-based decomposer instead", error)
        return rules
    except (RecursionError, MemoryError, ValueError, TypeError) as error:  # pathological replies (deep nesting)
        logger.warning(
            "language-model decomposition unusable (%s: %s); using the rule-based decomposer instead",
            type(error).__name__,
            str(error)[:200],
        )
        return rules
    if notes:
        logger.info("repaired the language model's question set: %s", "; ".join(notes))
    return repaired


def repair_question_set(
    reply: Any, prompt: str, aspects: Sequence[AspectSpec], rules: QuestionSet
) -> tuple[QuestionSet, list[str]]:
    """Turn a model's reply into a valid QuestionSet, or raise `DRFInputError` saying why it cannot.

    Fixes: JSON in code fences or prose, trailing commas, single quotes, Python literals, aspects
    given as a mapping, missing optional fields, "Yes"/"No" casing, alternative key names; aspects
    the caller asked for that are missing or empty are filled from `rules`; unknown aspects are kept.
    """
    notes: list[str] = []
    if not isinstance(reply, str):
        raise DRFInputError(f"the model returned {type(reply).__name__}, not text")
    if not reply.strip():
        raise DRFInputError("the model returned no text")
    data = _loads_lenient(_json_span(reply), notes)
    raw_aspects = _raw_aspects(data, notes)
    requested = {spec.name: spec for spec in aspects}
    by_casefold = {name.casefold(): name for name in requested}
    kept: dict[str, dict[str, Any]] = {}
    for index, raw in enumerate(raw_aspects):
        if not isinstance(raw, dict) or not isinstance(raw.get("name", raw.get("aspect")), str):
            notes.append(f"dropped aspect #{index} (no name)")
            continue
        name = str(raw.get("name", raw.get("aspect"))).strip()
        name = by_casefold.get(name.casefold(), name)
        if not name or name in kept:
            notes.append(f"dropped aspect #{index} (empty or repeated name {name!r})")
            continue
        spec = requested.get(name) or DEFAULT_ASPECTS_BY_NAME.get(name)
        weight = requested[name].weight if name in requested else _number(raw.get("weight"), 1.0)
        description = raw.get("description") if isinstance(raw.get("description"), str) else ""
        kept[name] = {
            "name": name,
            "description": description or (spec.description if spec else ""),
            "weight": weight,
            "yes_no": _items(_first(raw, "yes_no", "yes_no_questions", "yesno", "questions"), _yes_no_item),
            "explanations": _items(
                _first(raw, "explanations", "explanation_queries", "explanation", "queries"), _explanation_item
            ),
        }
    if not any(entry["yes_no"] or entry["explanations"] for entry in kept.values()):
        raise DRFInputError("the reply holds no usable question")
    ordered = []
    for spec in aspects:
        entry = kept.pop(spec.name, None)
        if entry is None or not (entry["yes_no"] or entry["explanations"]):
            notes.append(f"aspect {spec.name} missing or empty, filled from the rules")
            entry = QuestionSet(prompt, [rules.aspect(spec.name)]).to_dict()["aspects"][0]
        ordered.append(entry)
    for name, entry in kept.items():
        if entry["yes_no"] or entry["explanations"]:
            ordered.append(entry)
        else:
            notes.append(f"dropped empty extra aspect {name}")
    return QuestionSet.from_dict({"prompt": prompt, "version": 1, "aspects": ordered}), notes


def _json_span(text: str) -> str:
    fence = re.search(r"```(?:json|JSON)?\s*(.*?)```", text, re.S)
    if fence and "{" in fence.group(1):
        text = fence.group(1)
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise DRFInputError("no JSON object in the reply")
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    if end <= start:
        raise DRFInputError("the JSON object in the reply is not closed")
    return text[start : end + 1]


_JSON_LITERALS = {"true": True, "false": False, "null": None}


def _loads_lenient(text: str, notes: list[str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        first_error = error
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    without_commas = re.sub(r",\s*(?=[}\]])", "", text)
    try:
        data = json.loads(without_commas)
        notes.append("removed trailing commas")
        return data
    except json.JSONDecodeError:
        pass
    try:  # single quotes, Python literals: parse as a Python expression, never evaluate it
        tree = ast.parse(text, mode="eval")
        for node in ast.walk(tree):
            for name, child in ast.iter_fields(node):
                if isinstance(child, ast.Name) and child.id in _JSON_LITERALS:
                    setattr(node, name, ast.Constant(_JSON_LITERALS[child.id]))
                elif isinstance(child, list):
                    child[:] = [
                        ast.Constant(_JSON_LITERALS[c.id]) if isinstance(c, ast.Name) and c.id in _JSON_LITERALS else c
                        for c in child
                    ]
        data = ast.literal_eval(tree)
        notes.append("read the reply as a Python-style literal (single quotes)")
        return data
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise DRFInputError(
            f"the reply is not valid JSON (line {first_error.lineno}, column {first_error.colno}: {first_error.msg})"
        ) from None


def _raw_aspects(data: Any, notes: list[str]) -> list[Any]:
    if isinstance(data, list):
        notes.append("wrapped a bare list of aspects")
        return data
    if not isinstance(data, dict):
        raise DRFInputError(f"the reply is a JSON {type(data).__name__}, not an object")
    aspects = data.get("aspects")
    if aspects is None:
        for wrapper in ("question_set", "questions", "QuestionSet"):
            if isinstance(data.get(wrapper), dict) and "aspects" in data[wrapper]:
                return _raw_aspects(data[wrapper], notes)
        aspects = {k: v for k, v in data.items() if k not in ("prompt", "version") and isinstance(v, (dict, list))}
        notes.append("read top-level keys as aspect names")
    if isinstance(aspects, dict):
        notes.append("read aspects given as a mapping")
        return [{"name": name, **value} if isinstance(value, dict) else {"name": name, "yes_no": value}
                for name, value in aspects.items()]  # fmt: skip
    if not isinstance(aspects, list):
        raise DRFInputError("'aspects' is not a list")
    return aspects


def _first(raw: dict[str, Any], *keys: str) -> Any:
    return next((raw[key] for key in keys if key in raw), [])


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 0 and number == number and number != float("inf") else default


def _items(values: Any, convert: Callable[[Any], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Convert each item; drop unusable ones and repeats of the same question."""
    if not isinstance(values, list):
        values = [values] if isinstance(values, (dict, str)) else []
    kept: dict[str, dict[str, Any]] = {}
    for value in values:
        item = convert(value)
        if item is not None:
            kept.setdefault(" ".join(item["question"].split()).casefold(), item)
    return list(kept.values())


def _text(raw: dict[str, Any], *keys: str) -> str:
    value = _first(raw, *keys)
    return value.strip() if isinstance(value, str) else ""


def _yes_no_item(value: Any) -> dict[str, Any] | None:
    raw = {"question": value} if isinstance(value, str) else value
    if not isinstance(raw, dict):
        return None
    question = _text(raw, "question", "q", "text")
    expected = raw.get("expected", raw.get("answer", "yes"))
    if isinstance(expected, bool):
        expected = "yes" if expected else "no"
    expected = str(expected).strip().strip(".!").lower()
    if not question or expected not in ("yes", "no"):
        return None
    return {"question": question, "expected": expected, "tag": _text(raw, "tag", "type"),
            "weight": _number(raw.get("weight"), 1.0)}  # fmt: skip


def _explanation_item(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    question, target = _text(value, "question", "query", "q"), _text(value, "target", "answer", "expected")
    if not question or not target:
        return None
    return {"question": question, "target": target, "tag": _text(value, "tag", "type"),
            "weight": _number(value.get("weight"), 1.0)}  # fmt: skip


# =============================================================================================
# A chat function over any local transformers causal LM
# =============================================================================================


class CausalLMChat:
    """`chat(prompt, system=None, max_new_tokens=None) -> str` over a local instruct LLM folder.

    Loads with `AutoModelForCausalLM` / `AutoTokenizer` (`local_files_only=True`, no remote code),
    answers greedily, and uses the tokenizer's chat template when it has one. Also callable as
    `chat(prompt)` (with the constructor's `max_new_tokens`), so it fits every place that takes a
    `str -> str` function.
    """

    def __init__(
        self, folder: str | Path, dtype: str = "auto", device: str = "auto", max_new_tokens: int = 512
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(
                f"language model folder {folder} does not exist; give the folder of a local instruct LLM "
                "in transformers format"
            )
        if not (folder / "config.json").is_file():
            raise ModelFolderError(
                f"{folder} has no config.json; give the folder of a transformers causal LM "
                "(config.json, weights, tokenizer files)"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device_ = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, dtype=resolve_dtype(dtype, device_)
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelFolderError(
                f"{folder} could not be loaded as a causal language model ({error}); give the folder of an "
                "instruct LLM that transformers' AutoModelForCausalLM loads"
            ) from None
        self.folder: Path | None = folder
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.model = model.to(device_).eval()

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, max_new_tokens: int = 512) -> CausalLMChat:
        """Wrap a causal LM and tokenizer that are already loaded (nothing is moved or cast)."""
        chat = cls.__new__(cls)
        chat.folder, chat.max_new_tokens, chat.tokenizer, chat.model = None, max_new_tokens, tokenizer, model
        return chat

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int | None = None) -> str:
        """Greedy reply to `prompt` (at most `max_new_tokens`, default: the constructor's value)."""
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            inputs = self.tokenizer((f"{system}\n\n" if system else "") + prompt + "\n", return_tensors="pt")
        inputs = inputs.to(self.device)
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def __call__(self, prompt: str) -> str:
        return self.chat(prompt)

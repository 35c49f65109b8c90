"""The language-model decomposer: a fixed instruction, a lenient reader of the reply, and the checks.

`language_model_questions(prompt, aspects, chat, max_new_tokens, rules)` asks `chat` (a critic's
text-only `chat`, a `CausalLMChat` over a local instruct LLM, or any `str -> str` function) for the
question-set JSON with `LM_INSTRUCTION_TEMPLATE`, repairs the usual faults of model JSON
(`repair_question_set`), then holds the questions to `question_checks`: nonsense questions are
dropped, aspects left empty and prompt elements no question covers are filled from the rules'
questions. When the reply is unusable (no JSON, nothing usable, mostly nonsense) the rules'
questions are used instead. Every repair and the reason for a fallback are returned as notes, so
the caller can show them (the Decompose Prompt node does). Model garbage never raises.

Knows nothing about loading models (`chat_models` does) or about rewards.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import DRFInputError
from .question_checks import QuestionCheck, check_question_set
from .questions import DEFAULT_ASPECTS_BY_NAME, Aspect, AspectSpec, QuestionSet
from .wordforms import plural


class ChatModel(Protocol):
    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int = 512) -> str: ...


Chat = Callable[[str], str] | ChatModel
# the model's questions are replaced by the rules' when more than this share of them is nonsense
MAX_NONSENSE_SHARE = 0.5


@dataclass
class LanguageModelResult:
    """The questions, whether the model's reply was used, and what was repaired or why it was not used."""

    question_set: QuestionSet
    used_reply: bool
    notes: list[str] = field(default_factory=list)
    fallback_reason: str = ""


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


def call_chat(chat: Chat, text: str, max_new_tokens: int) -> Any:
    method = getattr(chat, "chat", None)
    if callable(method):
        return method(text, system=LM_SYSTEM_PROMPT, max_new_tokens=max_new_tokens)
    if callable(chat):
        return chat(f"{LM_SYSTEM_PROMPT}\n\n{text}")
    raise DRFInputError(
        f"chat must be a function str -> str or an object with a .chat() method, got {type(chat).__name__}"
    )


def language_model_questions(
    prompt: str, aspects: Sequence[AspectSpec], chat: Chat, max_new_tokens: int, rules: QuestionSet, text: str
) -> LanguageModelResult:
    """Ask `chat` for the questions of `prompt` (`text`: its normalised form); check and repair them."""
    reply = call_chat(chat, build_lm_instruction(text, aspects), max_new_tokens)
    try:
        repaired, notes = repair_question_set(reply, prompt, aspects, rules)
    except DRFInputError as error:
        return LanguageModelResult(rules, False, [], str(error))
    except (RecursionError, MemoryError, ValueError, TypeError) as error:  # pathological replies (deep nesting)
        return LanguageModelResult(rules, False, [], f"{type(error).__name__}: {str(error)[:200]}")
    filled = frozenset(spec.name for spec in aspects if _filled_note(spec.name) in notes)
    checked, check_notes, reason = enforce_checks(repaired, rules, filled)
    if reason:
        return LanguageModelResult(rules, False, notes + check_notes, reason)
    return LanguageModelResult(checked, True, notes + check_notes)


def enforce_checks(
    question_set: QuestionSet, rules: QuestionSet, filled: frozenset[str] = frozenset()
) -> tuple[QuestionSet, list[str], str]:
    """Drop nonsense questions; fill emptied aspects and uncovered prompt elements from `rules`.

    `filled`: aspects that already come from `rules` (not the model's own questions).
    Returns (the checked set, notes, ""), or (the set, notes, reason) when most questions are nonsense.
    """
    check = check_question_set(question_set)
    notes = [f"dropped {problem}" for problem in check.problems]
    asked = sum(  # the model's own questions (aspects it left out were filled from the rules)
        len(a.yes_no) + len(a.explanations) for a in question_set.aspects if a.name not in filled
    )
    if asked and len(check.problems) > MAX_NONSENSE_SHARE * asked:
        reason = f"{len(check.problems)} of the model's {asked} questions are nonsense for this prompt"
        return question_set, notes, reason
    bad = {(problem.aspect, problem.question) for problem in check.problems}
    aspects = []
    for aspect in question_set.aspects:
        yes_no = [q for q in aspect.yes_no if (aspect.name, q.question) not in bad]
        explanations = [q for q in aspect.explanations if (aspect.name, q.question) not in bad]
        if not yes_no and not explanations and aspect.name in rules.aspect_names():
            notes.append(f"aspect {aspect.name} has no sensible question left, filled from the rules")
            aspects.append(rules.aspect(aspect.name))
            continue
        aspects.append(Aspect(aspect.name, aspect.description, aspect.weight, yes_no, explanations))
    checked = QuestionSet(question_set.prompt, aspects)
    return _fill_coverage(checked, check_question_set(checked), rules, notes), notes, ""


def _fill_coverage(
    question_set: QuestionSet, check: QuestionCheck, rules: QuestionSet, notes: list[str]
) -> QuestionSet:
    """Add the rules' questions that cover what no question of `question_set` covers (to TA, else the first)."""
    if not check.missing:
        return question_set
    names = question_set.aspect_names()
    target = "TA" if "TA" in names else names[0]
    source = "TA" if "TA" in rules.aspect_names() else rules.aspect_names()[0]
    have = {" ".join(q.question.split()).casefold() for _, q in question_set.iter_yes_no()}
    added = []
    for element in check.missing:
        needle = element.removeprefix("absent: ")
        if needle.startswith('text "'):
            pattern = re.escape(needle[len('text "') : -1].casefold())
        else:
            pattern = r"\b(?:" + "|".join(re.escape(f) for f in {needle, plural(needle)}) + r")\b"
        for question in rules.aspect(source).yes_no:
            if question.tag == "overall" or " ".join(question.question.split()).casefold() in have:
                continue
            if re.search(pattern, question.question.casefold()):
                added.append(question)
                have.add(" ".join(question.question.split()).casefold())
        notes.append(f"the model's questions do not cover {element}; added the rules' questions about it")
    aspects = [
        Aspect(a.name, a.description, a.weight, [*a.yes_no, *added], a.explanations) if a.name == target else a
        for a in question_set.aspects
    ]
    return QuestionSet(question_set.prompt, aspects)


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
            notes.append(_filled_note(spec.name))
            entry = QuestionSet(prompt, [rules.aspect(spec.name)]).to_dict()["aspects"][0]
        ordered.append(entry)
    for name, entry in kept.items():
        if entry["yes_no"] or entry["explanations"]:
            ordered.append(entry)
        else:
            notes.append(f"dropped empty extra aspect {name}")
    return QuestionSet.from_dict({"prompt": prompt, "version": 1, "aspects": ordered}), notes


def _filled_note(aspect: str) -> str:
    return f"aspect {aspect} missing or empty, filled from the rules"


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

"""The question set a prompt is judged by: aspects, yes/no questions and explanation queries.

A `QuestionSet` holds, for one prompt, a list of `Aspect`s (by default `TA` text-video alignment,
`PHY` physical fidelity, `VQ` visual quality). Each aspect has a weight, yes/no questions (with the
answer a faithful video gives) and explanation queries (an open question plus the target answer
derived from the prompt). The set is plain JSON a person can read and edit: `to_json` writes it
with two-space indents in a fixed key order, `from_json` / `load` read it back strictly (unknown
fields, bad values and broken JSON raise `DRFInputError` naming the field path, e.g.
`aspects[1].yes_no[0].expected`), and `fingerprint()` is a short stable hash for caches and metadata.

Knows nothing about how questions are made (`decompose.py`), asked (`critics/`) or scored
(`reward.py`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from .errors import DRFInputError
from .io import write_text_atomic

Expected = Literal["yes", "no"]
EXPECTED_ANSWERS: tuple[str, ...] = ("yes", "no")
QUESTION_SET_VERSION = 1


@dataclass
class YesNoQuestion:
    """A question a faithful video answers with `expected` ("Is there flicker?" expects "no")."""

    question: str
    expected: Expected = "yes"
    tag: str = ""  # what the question checks: "object", "count", "color", "relation", "camera", ...
    weight: float = 1.0  # weight inside its aspect


@dataclass
class ExplanationQuery:
    """An open question and the answer a faithful video would give, derived from the prompt.

    Example: "Describe the apples in the video." / "Two red apples on a wooden table."
    """

    question: str
    target: str
    tag: str = ""
    weight: float = 1.0


@dataclass
class Aspect:
    """One thing the video is judged on (alignment, physics, quality, or a user's own)."""

    name: str
    description: str = ""
    weight: float = 1.0  # weight of this aspect in the total reward
    yes_no: list[YesNoQuestion] = field(default_factory=list)
    explanations: list[ExplanationQuery] = field(default_factory=list)

    def num_questions(self) -> int:
        return len(self.yes_no) + len(self.explanations)


@dataclass(frozen=True)
class AspectSpec:
    """The name, meaning and default weight of an aspect, before any question exists."""

    name: str
    description: str
    weight: float


# The three default aspects. METHOD.md names them but gives no weights; our choice is
# TA 0.5, PHY 0.25, VQ 0.25: the prompt's content (alignment) matters most, physics and quality
# share the rest. Every weight is a setting (`QuestionSet.with_weights`, `RewardConfig.aspect_weights`).
DEFAULT_ASPECTS: tuple[AspectSpec, ...] = (
    AspectSpec(
        "TA",
        "Text-video alignment: every entity, attribute, count, action, spatial relation, camera motion "
        "and style named in the prompt is shown.",
        0.5,
    ),
    AspectSpec(
        "PHY",
        "Physical fidelity and commonsense: plausible motion, gravity, contact, object permanence, "
        "consistent bodies and shapes across frames.",
        0.25,
    ),
    AspectSpec(
        "VQ",
        "Visual quality: sharpness, no artifacts, no temporal flicker, good exposure and composition.",
        0.25,
    ),
)
DEFAULT_ASPECTS_BY_NAME: dict[str, AspectSpec] = {spec.name: spec for spec in DEFAULT_ASPECTS}


@dataclass
class QuestionSet:
    """All questions one prompt is judged by, grouped into weighted aspects."""

    prompt: str
    aspects: list[Aspect]
    version: int = QUESTION_SET_VERSION

    # ---- checks -----------------------------------------------------------------------------
    def validate(self) -> QuestionSet:
        """Raise `DRFInputError` naming the field path of the first problem; return self."""
        _check(isinstance(self.prompt, str) and bool(self.prompt.strip()), "prompt", "is empty; write the prompt")
        _check(
            self.version == QUESTION_SET_VERSION,
            "version",
            f"must be {QUESTION_SET_VERSION} (the only version this code reads), got {self.version!r}",
        )
        _check(len(self.aspects) > 0, "aspects", "is empty; give at least one aspect with questions")
        seen: dict[str, int] = {}
        for i, aspect in enumerate(self.aspects):
            where = f"aspects[{i}]"
            _check(bool(aspect.name.strip()), f"{where}.name", "is empty; name the aspect (e.g. TA, PHY, VQ)")
            _check(
                aspect.name not in seen,
                f"{where}.name",
                f"duplicate aspect name {aspect.name!r} (also aspects[{seen.get(aspect.name)}]); "
                "merge their questions into one aspect or rename one",
            )
            seen[aspect.name] = i
            _check_weight(aspect.weight, f"{where}.weight")
            _check(
                aspect.num_questions() > 0,
                where,
                f"aspect {aspect.name!r} has no questions; add a yes/no question or an explanation, or remove it",
            )
            for j, question in enumerate(aspect.yes_no):
                qwhere = f"{where}.yes_no[{j}]"
                _check(bool(question.question.strip()), f"{qwhere}.question", "is empty; write the question")
                _check(
                    question.expected in EXPECTED_ANSWERS,
                    f"{qwhere}.expected",
                    f'must be "yes" or "no", got {json.dumps(question.expected)}',
                )
                _check_weight(question.weight, f"{qwhere}.weight")
            for j, query in enumerate(aspect.explanations):
                qwhere = f"{where}.explanations[{j}]"
                _check(bool(query.question.strip()), f"{qwhere}.question", "is empty; write the question")
                _check(
                    bool(query.target.strip()),
                    f"{qwhere}.target",
                    "is empty; write the answer a faithful video would give",
                )
                _check_weight(query.weight, f"{qwhere}.weight")
        _check(
            any(aspect.weight > 0 for aspect in self.aspects),
            "aspects",
            "every aspect weight is 0; give at least one aspect a positive weight",
        )
        return self

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data in a readable key order: prompt, version, aspects (name, description, ...)."""
        return {
            "prompt": self.prompt,
            "version": self.version,
            "aspects": [
                {
                    "name": aspect.name,
                    "description": aspect.description,
                    "weight": float(aspect.weight),
                    "yes_no": [
                        {"question": q.question, "expected": q.expected, "tag": q.tag, "weight": float(q.weight)}
                        for q in aspect.yes_no
                    ],
                    "explanations": [
                        {"question": q.question, "target": q.target, "tag": q.tag, "weight": float(q.weight)}
                        for q in aspect.explanations
                    ],
                }
                for aspect in self.aspects
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> QuestionSet:
        """Build and validate; errors name `source` (e.g. a file) and the field path."""
        try:
            return _parse_object(QuestionSet, data, "").validate()
        except DRFInputError as error:
            raise DRFInputError(f"{source}: {error}" if source else str(error)) from None

    @classmethod
    def from_json(cls, text: str, source: str = "") -> QuestionSet:
        prefix = f"{source}: " if source else ""
        try:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as error:
            raise DRFInputError(
                f"{prefix}not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
                "fix the file (a JSON checker shows the spot) or write it again with the decompose node"
            ) from None
        except DRFInputError as error:
            raise DRFInputError(f"{prefix}{error}") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        """Validate, then write the JSON atomically (a crash never leaves half a file)."""
        self.validate()
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> QuestionSet:
        path = Path(path)
        if not path.is_file():
            raise DRFInputError(f"question file {path} does not exist; write one with `decompose` or fix the path")
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON; changes with any edit."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    # ---- queries ------------------------------------------------------------------------------
    def aspect_names(self) -> list[str]:
        return [aspect.name for aspect in self.aspects]

    def aspect(self, name: str) -> Aspect:
        for aspect in self.aspects:
            if aspect.name == name:
                return aspect
        raise DRFInputError(f"no aspect named {name!r}; this question set has: {', '.join(self.aspect_names())}")

    def num_questions(self) -> int:
        """Yes/no questions plus explanation queries, over all aspects."""
        return sum(aspect.num_questions() for aspect in self.aspects)

    def num_yes_no(self) -> int:
        return sum(len(aspect.yes_no) for aspect in self.aspects)

    def num_explanations(self) -> int:
        return sum(len(aspect.explanations) for aspect in self.aspects)

    def iter_yes_no(self) -> Iterator[tuple[Aspect, YesNoQuestion]]:
        """(aspect, question) for every yes/no question, in file order."""
        for aspect in self.aspects:
            for question in aspect.yes_no:
                yield aspect, question

    def iter_explanations(self) -> Iterator[tuple[Aspect, ExplanationQuery]]:
        """(aspect, query) for every explanation query, in file order."""
        for aspect in self.aspects:
            for query in aspect.explanations:
                yield aspect, query

    def normalized_weights(self) -> dict[str, float]:
        """Aspect weights divided by their sum (sums to 1)."""
        total = sum(aspect.weight for aspect in self.aspects)
        if total <= 0:
            raise DRFInputError("aspects: every aspect weight is 0; give at least one aspect a positive weight")
        return {aspect.name: aspect.weight / total for aspect in self.aspects}

    # ---- edits (each returns a new, validated set; self is unchanged) -------------------------
    def with_weights(self, weights: Mapping[str, float]) -> QuestionSet:
        """A copy with the named aspects' weights replaced; unknown names raise."""
        unknown = [name for name in weights if name not in self.aspect_names()]
        if unknown:
            raise DRFInputError(
                f"aspect weights name unknown aspect(s) {unknown}; this question set has: "
                f"{', '.join(self.aspect_names())}"
            )
        result = copy.deepcopy(self)
        for aspect in result.aspects:
            if aspect.name in weights:
                weight = weights[aspect.name]
                _check_weight(weight, f"weights[{aspect.name!r}]")
                aspect.weight = float(weight)
        return result.validate()

    def merge(self, other: QuestionSet) -> QuestionSet:
        """Add `other`'s aspects; for a shared aspect name, add its questions not already present.

        Keeps this set's prompt and the weights/descriptions of aspects it already has. Questions
        count as the same when their text matches ignoring case and surrounding spaces.
        """
        result = copy.deepcopy(self)
        by_name = {aspect.name: aspect for aspect in result.aspects}
        for incoming in other.aspects:
            if incoming.name not in by_name:
                added = copy.deepcopy(incoming)
                result.aspects.append(added)
                by_name[added.name] = added
                continue
            target = by_name[incoming.name]
            known_yes_no = {_question_key(q.question) for q in target.yes_no}
            known_explanations = {_question_key(q.question) for q in target.explanations}
            for question in incoming.yes_no:
                if _question_key(question.question) not in known_yes_no:
                    target.yes_no.append(copy.deepcopy(question))
                    known_yes_no.add(_question_key(question.question))
            for query in incoming.explanations:
                if _question_key(query.question) not in known_explanations:
                    target.explanations.append(copy.deepcopy(query))
                    known_explanations.add(_question_key(query.question))
        return result.validate()


# ---- strict parsing with field paths ---------------------------------------------------------

# Each class's JSON fields: a Python type, or ("list", element class).
_SCHEMA: dict[type, dict[str, Any]] = {
    YesNoQuestion: {"question": str, "expected": str, "tag": str, "weight": float},
    ExplanationQuery: {"question": str, "target": str, "tag": str, "weight": float},
    Aspect: {
        "name": str,
        "description": str,
        "weight": float,
        "yes_no": ("list", YesNoQuestion),
        "explanations": ("list", ExplanationQuery),
    },
    QuestionSet: {"prompt": str, "aspects": ("list", Aspect), "version": int},
}


# Tags of questions about change over time (motion, flicker, camera moves, the order of events,
# things staying the same across frames): a still image cannot answer them.
TEMPORAL_TAGS = frozenset({"motion", "flicker", "camera", "sequence", "permanence", "3d", "shape", "gravity"})
_VIDEO_WORDS = ((re.compile(r"\ba video\b"), "an image"), (re.compile(r"\bA video\b"), "An image"),
                (re.compile(r"\bvideos\b"), "images"), (re.compile(r"\bvideo\b"), "image"),
                (re.compile(r"\bVideo\b"), "Image"))  # fmt: skip


def _about_an_image(text: str) -> str:
    for pattern, replacement in _VIDEO_WORDS:
        text = pattern.sub(replacement, text)
    return text


def for_still_image(question_set: QuestionSet) -> QuestionSet:
    """The questions that fit one image: those tagged with a `TEMPORAL_TAGS` tag are left out, "video"
    reads "image", and aspects left without questions are dropped (their weight with them).

    Raises `DRFInputError` when no question is left (every question was about motion)."""
    aspects = []
    for aspect in question_set.aspects:
        yes_no = [replace(q, question=_about_an_image(q.question)) for q in aspect.yes_no if q.tag not in TEMPORAL_TAGS]
        explanations = [
            replace(e, question=_about_an_image(e.question), target=_about_an_image(e.target))
            for e in aspect.explanations
            if e.tag not in TEMPORAL_TAGS
        ]
        if yes_no or explanations:
            aspects.append(replace(aspect, yes_no=yes_no, explanations=explanations))
    if not aspects:
        raise DRFInputError(
            f"every question for {question_set.prompt[:60]!r} is about motion or time ({sorted(TEMPORAL_TAGS)}), "
            "which an image cannot show; add questions about what the image shows"
        )
    return QuestionSet(question_set.prompt, aspects, question_set.version).validate()


def _question_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise DRFInputError(f"{where}: {message}")


def _check_weight(value: Any, where: str) -> None:
    _check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        where,
        f"must be a finite number, got {value!r}",
    )
    _check(value >= 0, where, f"must not be negative, got {value!r}; use 0 to switch it off")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DRFInputError(f"duplicate key {key!r} in one JSON object; keep only one of them")
        result[key] = value
    return result


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_object(cls: type, data: Any, path: str) -> Any:
    where = path or "the question set"
    if not isinstance(data, dict):
        raise DRFInputError(f"{where}: expected an object {{...}}, got {_json_type(data)}")
    schema = _SCHEMA[cls]
    unknown = [key for key in data if key not in schema]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DRFInputError(f"{where}: unknown field(s) {', '.join(hints)}; known fields: {', '.join(schema)}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    kwargs: dict[str, Any] = {}
    for name, kind in schema.items():
        field_path = _join(path, name)
        if name not in data:
            if name in required:
                raise DRFInputError(f"{field_path}: missing; this field is required")
            continue
        kwargs[name] = _parse_value(kind, data[name], field_path)
    return cls(**kwargs)


def _parse_value(kind: Any, value: Any, path: str) -> Any:
    if isinstance(kind, tuple):
        _, element_cls = kind
        if not isinstance(value, list):
            raise DRFInputError(f"{path}: expected a list [...], got {_json_type(value)}")
        return [_parse_object(element_cls, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is str:
        if not isinstance(value, str):
            raise DRFInputError(f"{path}: expected a string, got {_json_type(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DRFInputError(f"{path}: expected a number, got {_json_type(value)}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DRFInputError(f"{path}: expected a whole number, got {_json_type(value)}")
        return value
    raise TypeError(f"unsupported schema kind {kind!r}")

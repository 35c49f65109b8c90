"""The public prompt set (tests/data/decompose_prompts.json): the rule decomposer's questions cover
each prompt's elements, say none of its forbidden phrases, and pass the nonsense checks of
`drf_core.question_checks`; the checks themselves catch the nonsense they are meant to catch."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from drf_core.decompose import decompose
from drf_core.question_checks import check_question_set
from drf_core.questions import Aspect, QuestionSet, YesNoQuestion

PROMPT_SET = json.loads((Path(__file__).parent / "data" / "decompose_prompts.json").read_text(encoding="utf-8"))[
    "prompts"
]
OVERALL = re.compile(r'^Does this video show: ".*"\?$')


def specific_yes_no(qs: QuestionSet) -> list[YesNoQuestion]:
    return [q for _, q in qs.iter_yes_no() if not OVERALL.match(q.question)]


def covers(item: str, questions: list[YesNoQuestion]) -> bool:
    expected = "no" if item.startswith("no: ") else None
    words = item.removeprefix("no: ").casefold().split()
    for question in questions:
        found = set(re.findall(r"[\w'-]+", question.question.casefold()))
        if all(word in found for word in words) and (expected is None or question.expected == expected):
            return True
    return False


def missing_elements(entry: dict, qs: QuestionSet) -> list[str]:
    questions = specific_yes_no(qs)
    missing = [item for item in entry["cover"] if not covers(item, questions)]
    missing += [f"text {t!r}" for t in entry.get("text", []) if not any(t in q.question for q in questions)]
    return missing


def test_prompt_set_is_large_and_varied():
    assert len(PROMPT_SET) >= 80
    assert len({entry["prompt"] for entry in PROMPT_SET}) == len(PROMPT_SET)
    categories = Counter(entry["category"] for entry in PROMPT_SET)
    expected = {"negation", "quoted_text", "phrasal", "sequence", "binding", "count", "camera", "style",
                "time_weather", "mixed"}  # fmt: skip
    assert set(categories) == expected and min(categories.values()) >= 8, categories


@pytest.mark.parametrize("entry", PROMPT_SET, ids=[e["prompt"][:48] for e in PROMPT_SET])
def test_rule_questions_cover_the_prompt_and_make_sense(entry):
    qs = decompose(entry["prompt"])
    everything = [q.question for _, q in qs.iter_yes_no()] + [q.question for _, q in qs.iter_explanations()]
    listing = "\n".join(f"  [{a.name}] ({q.expected}) {q.question}" for a, q in qs.iter_yes_no())
    assert not missing_elements(entry, qs), f"not covered: {missing_elements(entry, qs)}\n{listing}"
    said = [(p, q) for p in entry["never"] for q in everything if p.casefold() in q.casefold() and not OVERALL.match(q)]
    assert not said, f"forbidden phrases: {said}\n{listing}"
    check = check_question_set(qs)
    assert not check.problems, "nonsense: " + "; ".join(map(str, check.problems)) + "\n" + listing
    assert not check.missing, f"the checker finds uncovered elements: {check.missing}\n{listing}"


def test_prompt_set_coverage_report(capsys):
    """Element coverage per category, written to the terminal; every element of every prompt is covered."""
    totals: dict[str, list[int]] = {}
    for entry in PROMPT_SET:
        qs = decompose(entry["prompt"])
        wanted = len(entry["cover"]) + len(entry.get("text", []))
        covered = wanted - len(missing_elements(entry, qs))
        problems = len(check_question_set(qs).problems)
        row = totals.setdefault(entry["category"], [0, 0, 0, 0])
        row[0], row[1], row[2], row[3] = row[0] + 1, row[1] + covered, row[2] + wanted, row[3] + problems
    lines = ["", "rule decomposer on the public prompt set (prompts, elements covered, nonsense questions):"]
    lines += [
        f"  {name:<13} {n:3d} prompts  {c:3d}/{w:<3d} covered  {p} nonsense" for name, (n, c, w, p) in totals.items()
    ]
    with capsys.disabled():
        sys.stdout.write("\n".join(lines) + "\n")
    assert sum(row[1] for row in totals.values()) == sum(row[2] for row in totals.values())
    assert sum(row[3] for row in totals.values()) == 0


# ---- the checks catch what they are for ------------------------------------------------------------


def one_aspect(prompt: str, *questions: tuple[str, str], aspect: str = "TA", tag: str = "") -> QuestionSet:
    return QuestionSet(prompt, [Aspect(aspect, "", 1.0, [YesNoQuestion(q, e, tag) for q, e in questions], [])])


@pytest.mark.parametrize(
    ("prompt", "question", "expected", "aspect", "reason"),
    [
        ("a cat jumps off a table, no people in the room", "Is there an off?", "yes", "TA", "a thing called 'off'"),
        ("a cat jumps off a table", "Is the cat jumping the off?", "yes", "TA", "treats 'off' as a thing"),
        ("a cat jumps off a table, no people in the room", "Do the no people have natural anatomy?", "yes", "PHY",
         "by its negation"),
        ("a cat on a sofa, no people in the room", "Are there people?", "yes", "TA", "there is none"),
        ("a cat on a sofa, no people in the room", "Do the people keep a consistent body?", "yes", "PHY",
         "body, shape or motion"),
        ("a child without a hat plays", "Is there a hat?", "yes", "TA", "there is none"),
        ("a neon sign that reads 'OPEN 24 HOURS' flickers", "Are there reads?", "yes", "TA", "a verb of the prompt"),
        ("a neon sign that reads 'OPEN 24 HOURS' flickers", "Are there exactly 24 hours?", "yes", "TA",
         "part of the quoted text"),
        ("a red cube to the left of a blue sphere", "Is the cube blue?", "yes", "TA", "the prompt gives the sphere"),
        ("a red cube to the left of a blue sphere", "Is there a red sphere?", "yes", "TA", "gives the cube"),
        ("a wooden chair beside a metal table", "Is the chair made of metal?", "yes", "TA", "gives the table"),
        ("a dog lies down", "Is there a down?", "yes", "TA", "a thing called 'down'"),
    ],
)  # fmt: skip
def test_checks_catch_nonsense(prompt, question, expected, aspect, reason):
    check = check_question_set(one_aspect(prompt, (question, expected), aspect=aspect))
    assert len(check.problems) == 1 and reason in check.problems[0].reason, check.problems


@pytest.mark.parametrize(
    ("prompt", "question", "expected"),
    [
        ("a cat on a sofa, no people in the room", "Are there any people in the video?", "no"),
        ("a cat on a sofa, no people in the room", "Is the room free of people?", "yes"),
        ("a child without a hat plays", "Is the child wearing a hat?", "no"),
        ("a red cube to the left of a blue sphere", "Is the cube red?", "yes"),
        ("a red cube to the left of a blue sphere", "Is the red cube to the left of the blue sphere?", "yes"),
        ("a neon sign that reads 'OPEN 24 HOURS' flickers", 'Does the sign show the text "OPEN 24 HOURS"?', "yes"),
        ("five birds on a wire", "Are there exactly five birds?", "yes"),
        ("a man leans on the back of a car", "Is the man leaning on the back of the car?", "yes"),
        ("a ball inside a box, no smoke", "Is the ball in the inside of the box?", "yes"),
        ("a ball inside a box, no smoke", "Is there no smoke?", "yes"),
    ],
)
def test_checks_accept_sensible_questions(prompt, question, expected):
    assert check_question_set(one_aspect(prompt, (question, expected))).problems == []


def test_coverage_names_what_is_missing():
    prompt = "a cat on a sofa next to a lamp, a sign reads 'QUIET', no people in the room"
    check = check_question_set(one_aspect(prompt, ("Is there a cat?", "yes")))
    assert check.covered == ["cat"]
    assert set(check.missing) == {"sofa", "lamp", "sign", "room", 'text "QUIET"', "absent: person"}
    assert check.coverage == pytest.approx(1 / 7) and not check.ok
    full = decompose(prompt)
    assert check_question_set(full).ok

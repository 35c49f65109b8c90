"""Checks that a question set makes sense for its prompt: no nonsense questions, the prompt covered.

`check_question_set(question_set, prompt)` returns a `QuestionCheck`: the questions that are
nonsense for this prompt (each with the reason) and the prompt's elements no specific question
covers. Both decomposers are held to it: the rules in the public prompt set's test, the language
model's reply before it is used (`decompose_llm` drops what fails and fills the gaps from the rules).

Nonsense, for a yes/no question or an explanation query:
- a thing named by a closed-class word: "Is there an off?", "Is the cat jumping the off?";
- a thing named by its negation: "Do the no people ...?";
- asking for something the prompt says is absent ("no people", "without a hat", "neither of them
  wears glasses") as if it were there (expected "yes" without a negation in the question), or
  asking about its body, shape or motion at all (the reward would pay for it);
- an attribute the prompt gives one thing, bound to another: "Is the cube blue?" for "a red cube
  to the left of a blue sphere";
- a count taken from quoted on-screen text: "Are there exactly 24 hours?" for "reads 'OPEN 24 HOURS'".

Coverage: every thing the prompt says is there (its head noun), every quoted text and every thing
it says is absent is named by at least one question other than the closing whole-prompt question.
What the prompt says comes from the rule parser (`prompt_parse`), plus a direct look at the words
after "no" / "without" so a negation the parser missed is still caught.

Knows nothing about models or rewards.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .prompt_lexicon import (
    CLOSED_CLASS,
    COLORS,
    MATERIALS,
    NEGATORS,
    NUMBER_WORDS,
    NUMBERS,
    SIZES,
    TEXT_SHOWING_VERBS,
    TOKEN,
)
from .prompt_parse import extract_quoted_text, parse_prompt
from .questions import QuestionSet
from .wordforms import plural, singular

_BINDABLE = COLORS | SIZES | set(MATERIALS) | set(MATERIALS.values())
# words in a question that make it ask for an absence ("Is the video free of people?" expects yes)
_NEGATION_IN_QUESTION = re.compile(r"\b(?:no|not|without|free of|absent|missing|none|nobody|nothing)\b|n't\b")
_ABOUT_THE_BODY_TAGS = frozenset("anatomy shape motion permanence contact gravity stability 3d".split())
# closed-class words that never name a thing ("the back of the car", "the inside of the box" do)
_NOT_A_THING = frozenset(CLOSED_CLASS - {"back", "over", "top", "inside", "outside", "home"})
_EXISTENCE = re.compile(r"^(?:is|are) there (?:an? |any |exactly \w+ |several |many |some )?(?P<thing>[\w'-]+)")
_ARTICLE_THEN = re.compile(r"\b(?:the|an?|exactly \w+)\s+(?P<word>[\w'-]+)")
_PREDICATE = re.compile(r"^(?:is|are) the (?P<thing>[\w' -]+?) (?:made of )?(?P<adjectives>\w+(?: and \w+)*)\?$")
_COUNT = re.compile(r"\bexactly (?P<number>[\w-]+)\b")
_OVERALL = re.compile(r'^does this video show: ".*"\?$')
_GENERIC_NOUNS = frozenset("scene video background view world shot footage".split())


@dataclass(frozen=True)
class QuestionProblem:
    aspect: str
    question: str
    reason: str

    def __str__(self) -> str:
        return f"{self.aspect}: {self.question!r}: {self.reason}"


@dataclass(frozen=True)
class PromptFacts:
    """What the prompt says, as the checks need it."""

    things: tuple[str, ...]  # singular head nouns of what is there
    absent: tuple[str, ...]  # singular head nouns of what is not
    texts: tuple[str, ...]  # quoted on-screen text
    bindings: frozenset[tuple[str, str]]  # (attribute word, singular head noun)
    numbers_outside_quotes: frozenset[str]
    verbs: frozenset[str]  # words the prompt uses as verbs ("reads", "flickers")


@dataclass
class QuestionCheck:
    problems: list[QuestionProblem] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "cat", 'text "OPEN"', "absent: hat"

    @property
    def coverage(self) -> float:
        total = len(self.covered) + len(self.missing)
        return len(self.covered) / total if total else 1.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing


def prompt_facts(prompt: str) -> PromptFacts:
    scene = parse_prompt(" ".join(prompt.split()))
    things = [entity.head for entity in scene.entities.values() if entity.head not in _GENERIC_NOUNS]
    bindings = set()
    for entity in scene.entities.values():
        for word in entity.colors + entity.materials + entity.sizes:
            bindings.add((word, entity.head))
    absent = [absence.thing.head for absence in scene.absent]
    unquoted, texts = extract_quoted_text(prompt)
    words = TOKEN.findall(unquoted.lower())
    for negator, following in itertools.pairwise(words):  # what the parser may have missed
        if negator in ("no", "without") and following not in CLOSED_CLASS and following not in _BINDABLE:
            absent.append(singular(following))
    numbers = {w for w in words if w in NUMBERS or w.isdigit()}
    numbers |= {NUMBER_WORDS.get(int(w), w) if w.isdigit() else w for w in numbers}
    absent = [a for a in dict.fromkeys(absent) if a not in things]
    verbs = {action.word for action in scene.actions if action.word} | (set(words) & TEXT_SHOWING_VERBS)
    return PromptFacts(
        tuple(dict.fromkeys(things)), tuple(absent), tuple(texts), frozenset(bindings), frozenset(numbers),
        frozenset(verbs - set(things)),
    )  # fmt: skip


def _mentions(text: str, noun: str) -> bool:
    forms = {noun, plural(noun)}
    return any(re.search(rf"\b{re.escape(form)}\b", text) for form in forms)


def _nonsense(question: str, expected: str, aspect: str, tag: str, facts: PromptFacts) -> str:
    """Why `question` is nonsense for the prompt ("" if it is not)."""
    text = question.casefold()
    existence = _EXISTENCE.match(text)
    if existence and existence.group("thing") in _NOT_A_THING - NEGATORS:  # "Is there no smoke?" is a question
        return f"asks whether there is a thing called {existence.group('thing')!r}"
    if existence and existence.group("thing") in facts.verbs:
        return f"asks whether there is a thing called {existence.group('thing')!r}, a verb of the prompt"
    for match in _ARTICLE_THEN.finditer(text):
        word = match.group("word")
        if word in NEGATORS:
            return f"names a thing by its negation ({match.group(0)!r})"
        if word in _NOT_A_THING and not _OVERALL.match(text):
            return f"treats {word!r} as a thing ({match.group(0)!r})"
    negated = bool(_NEGATION_IN_QUESTION.search(text))
    for thing in facts.absent:
        if not _mentions(text, thing) or _OVERALL.match(text):
            continue
        if aspect == "PHY" or tag in _ABOUT_THE_BODY_TAGS:
            return f"asks about the {thing}'s body, shape or motion, but the prompt says there is no {thing}"
        if expected == "yes" and not negated:
            return f"expects a {thing}, but the prompt says there is none"
    predicate = _PREDICATE.match(text)
    if predicate:
        noun = singular(predicate.group("thing").split()[-1])
        for adjective in predicate.group("adjectives").split(" and "):
            reason = _swapped(adjective, noun, facts)
            if reason:
                return reason
    words = TOKEN.findall(text)
    for adjective, noun in itertools.pairwise(words):
        reason = _swapped(adjective, singular(noun), facts)
        if reason:
            return reason
    count = _COUNT.search(text)
    if count and count.group("number") not in facts.numbers_outside_quotes:
        in_quotes = any(count.group("number") in t.casefold().split() for t in facts.texts)
        if in_quotes:
            return f"counts {count.group('number')!r}, which is part of the quoted text, not a number of things"
    return ""


def _swapped(adjective: str, noun: str, facts: PromptFacts) -> str:
    if adjective not in _BINDABLE or noun not in facts.things or (adjective, noun) in facts.bindings:
        return ""
    owners = sorted(n for a, n in facts.bindings if a == adjective)
    if owners:
        return f"gives the {noun} the attribute {adjective!r}, which the prompt gives the {', '.join(owners)}"
    return ""


def check_question_set(question_set: QuestionSet, prompt: str | None = None) -> QuestionCheck:
    """Nonsense questions and uncovered elements of `prompt` (default: the set's own prompt)."""
    facts = prompt_facts(prompt if prompt is not None else question_set.prompt)
    check = QuestionCheck()
    specific: list[tuple[str, str]] = []  # (text, expected)
    for aspect in question_set.aspects:
        for question in aspect.yes_no:
            reason = _nonsense(question.question, question.expected, aspect.name, question.tag, facts)
            if reason:
                check.problems.append(QuestionProblem(aspect.name, question.question, reason))
            elif question.tag != "overall" and not _OVERALL.match(question.question.casefold()):
                specific.append((question.question, question.expected))
        for query in aspect.explanations:
            reason = _nonsense(query.question, "yes", aspect.name, query.tag, facts)
            if reason:
                check.problems.append(QuestionProblem(aspect.name, query.question, reason))
    texts = [text.casefold() for text, _ in specific]
    for thing in facts.things:
        (check.covered if any(_mentions(t, thing) for t in texts) else check.missing).append(thing)
    for quoted in facts.texts:
        label = f'text "{quoted}"'
        (check.covered if any(quoted in text for text, _ in specific) else check.missing).append(label)
    for thing in facts.absent:
        asked = any(
            _mentions(t.casefold(), thing) and (e == "no" or _NEGATION_IN_QUESTION.search(t.casefold()))
            for t, e in specific
        )
        (check.covered if asked else check.missing).append(f"absent: {thing}")
    return check

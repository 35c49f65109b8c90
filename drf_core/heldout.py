"""Held-out questions: a second wording of a prompt's questions, for monitoring only.

A LoRA that learns to please the critic on the exact questions it is trained with, rather than to
show what they ask about, scores higher on those words than on other words with the same
meaning. `held_out_questions(question_set, method, chat)` rewrites a `QuestionSet`'s questions
(same aspects, weights, expected answers and explanation targets, other words) through a
`HELD_OUT_QUESTIONS` entry:

- "paraphrase": fixed rewording patterns (`paraphrase_question`), deterministic and offline;
- "llm": a language model (the critic's text-only `chat`) rewords the yes/no questions; a reply
  line that is missing, not a question, or the same as the original is replaced by the pattern
  paraphrase (the count of replaced lines is logged);
- "none": no held-out questions.

The trainer never takes gradients through these questions (`monitor.py` only scores them).
Knows `QuestionSet`; nothing about critics' internals, rewards or training.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from typing import Any

from .questions import QuestionSet
from .registry import Registry

logger = logging.getLogger(__name__)

# (pattern, replacement) tried in order on a yes/no question; the first match wins. Each keeps
# the question's meaning and its expected answer.
_YES_NO_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement)
    for pattern, replacement in (
        (r'^Does this video show:\s*"?(.+?)"?\?$', r'Is this a video of "\1"?'),
        (r"^(?:Is|Are) there (.+?)(?: in (?:the|this) video)?\?$", r"Can you see \1 in the video?"),
        (r"^Is the video (.+)\?$", r"Would you describe the video as \1?"),
        (r"^(Is|Are|Do|Does|Did|Can|Has|Have) (.+)\?$", r"Looking at the video, \l\1 \2?"),
    )
)
_EXPLANATION_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement)
    for pattern, replacement in (
        (r"^Describe (.+?)\.?$", r"What can you tell about \1? Answer briefly."),
        (r"^(.+?)\.?$", r"In one sentence: \l\1."),
    )
)


def _apply(patterns: tuple[tuple[re.Pattern[str], str], ...], text: str, fallback: str) -> str:
    text = text.strip()
    for pattern, replacement in patterns:
        match = pattern.match(text)
        if match:
            # `\l` lower-cases the next group's first letter (re has no such escape: done by hand).
            parts = replacement.split(r"\l")
            result = match.expand(parts[0])
            for part in parts[1:]:
                expanded = match.expand(part)
                result += expanded[:1].lower() + expanded[1:]
            return result
    return fallback + text[:1].lower() + text[1:]


def paraphrase_question(question: str) -> str:
    """Another wording of a yes/no question with the same meaning and the same expected answer."""
    return _apply(_YES_NO_PATTERNS, question, "Judging by the video: ")


def paraphrase_query(query: str) -> str:
    """Another wording of an explanation query (its target answer stays the same)."""
    return _apply(_EXPLANATION_PATTERNS, query, "In one sentence: ")


def _reworded(question_set: QuestionSet, yes_no: Callable[[str], str]) -> QuestionSet:
    result = copy.deepcopy(question_set)
    for aspect in result.aspects:
        for question in aspect.yes_no:
            question.question = yes_no(question.question)
        for query in aspect.explanations:
            query.question = paraphrase_query(query.question)
    return result.validate()


HeldOutQuestions = Callable[[QuestionSet, Any], "QuestionSet | None"]
HELD_OUT_QUESTIONS: Registry[HeldOutQuestions] = Registry("held-out question method")


@HELD_OUT_QUESTIONS.register("none")
def no_held_out_questions(question_set: QuestionSet, chat: Any = None) -> QuestionSet | None:
    return None


@HELD_OUT_QUESTIONS.register("paraphrase")
def paraphrased_questions(question_set: QuestionSet, chat: Any = None) -> QuestionSet:
    """Every question reworded by the fixed patterns."""
    return _reworded(question_set, paraphrase_question)


LM_PARAPHRASE_INSTRUCTION = (
    "Reword each numbered yes/no question below about a video so it asks exactly the same thing with "
    "different words. Keep the meaning, so the right answer stays the same. Reply with the same numbers, one "
    "question per line, and nothing else.\n\n"
)
_NUMBERED = re.compile(r"^\s*(\d+)[.):]\s*(.+?)\s*$")


def _ask(chat: Any, text: str) -> str:
    method = getattr(chat, "chat", None)
    return str(method(text, max_new_tokens=1024) if callable(method) else chat(text))


@HELD_OUT_QUESTIONS.register("llm")
def language_model_questions(question_set: QuestionSet, chat: Any = None) -> QuestionSet:
    """The yes/no questions reworded by `chat`; unusable lines (and explanation queries) by the patterns."""
    if chat is None:
        logger.warning("held-out questions 'llm' need a language model; using the pattern paraphrases instead")
        return paraphrased_questions(question_set)
    originals = list(dict.fromkeys(q.question for _, q in question_set.iter_yes_no()))
    listing = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(originals))
    try:
        reply = _ask(chat, LM_PARAPHRASE_INSTRUCTION + listing)
    except Exception as error:  # a model failure must not stop training: monitoring falls back
        logger.warning("held-out questions: the language model failed (%s); using the pattern paraphrases", error)
        return paraphrased_questions(question_set)
    answers: dict[int, str] = {}
    for line in reply.splitlines():
        match = _NUMBERED.match(line)
        if match:
            answers.setdefault(int(match.group(1)) - 1, match.group(2))
    rewordings: dict[str, str] = {}
    replaced = 0
    for i, original in enumerate(originals):
        candidate = answers.get(i, "").strip()
        usable = candidate.endswith("?") and len(candidate) > 3 and candidate.lower() != original.lower()
        rewordings[original] = candidate if usable else paraphrase_question(original)
        replaced += not usable
    if replaced:
        logger.info(
            "held-out questions: %d of %d language-model rewordings unusable, patterns used", replaced, len(originals)
        )
    return _reworded(question_set, lambda text: rewordings.get(text) or paraphrase_question(text))


def held_out_questions(question_set: QuestionSet, method: str, chat: Any = None) -> QuestionSet | None:
    """`question_set` reworded by the `HELD_OUT_QUESTIONS` entry `method` (None for "none")."""
    return HELD_OUT_QUESTIONS.get(method)(question_set, chat)

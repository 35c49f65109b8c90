"""Prompt -> `QuestionSet`: rule-based, language-model and Vanilla-DRF decomposers (a registry).

`decompose(prompt, method, aspects, chat)` dispatches through `DECOMPOSERS` and returns the
questions; `decompose_with_report` also returns how they were made (`Decomposition`: the method
that wrote them, repairs, and the reason when the language model's reply was not used).
- "rules": deterministic (`decompose_rules`): a lexicon and a clause parser find entities,
  counts, colours, materials, actions with their particles, relations, negations, quoted text,
  sequences, camera moves, style, time and weather, and write TA / PHY / VQ questions about them;
- "llm": asks a language model (a critic's text-only `chat`, `CausalLMChat` over a local instruct
  LLM, or any `str -> str` function) for strict JSON (`decompose_llm`), repairs it, holds it to
  `question_checks`, and falls back to the rules with a WARNING when the reply is unusable;
- "vanilla": the paper's Vanilla-DRF baseline, one TA yes/no question and nothing else.

Knows nothing about critics, rewards or training: it only writes questions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .chat_models import CausalLMChat
from .decompose_llm import (
    _LM_EXAMPLE,
    LM_INSTRUCTION_TEMPLATE,
    LM_SYSTEM_PROMPT,
    Chat,
    ChatModel,
    build_lm_instruction,
    language_model_questions,
    repair_question_set,
)
from .decompose_rules import normalize_prompt, rule_question_set, vanilla_question
from .errors import DRFInputError
from .questions import (
    DEFAULT_ASPECTS,
    DEFAULT_ASPECTS_BY_NAME,
    Aspect,
    AspectSpec,
    QuestionSet,
    YesNoQuestion,
    for_still_image,
)
from .registry import Registry

logger = logging.getLogger(__name__)


__all__ = [
    "DECOMPOSERS",
    "LM_INSTRUCTION_TEMPLATE",
    "LM_SYSTEM_PROMPT",
    "_LM_EXAMPLE",
    "CausalLMChat",
    "Chat",
    "ChatModel",
    "Decomposition",
    "build_lm_instruction",
    "decompose",
    "decompose_with_report",
    "repair_question_set",
    "resolve_aspects",
]  # fmt: skip


@dataclass
class Decomposition:
    """A prompt's questions and how they were made."""

    question_set: QuestionSet
    method: str  # the decomposer that wrote the questions ("rules" when "llm" fell back)
    requested: str  # the decomposer asked for
    notes: list[str] = field(default_factory=list)  # repairs of a language model's reply
    fallback_reason: str = ""  # why the language model's reply was not used

    def summary(self) -> str:
        """One line for a person: who wrote the questions, and why not the asked-for method."""
        if self.fallback_reason:
            return f"questions by {self.method}: the language model's reply was not used ({self.fallback_reason})"
        text = f"questions by {self.method}"
        return text + (f"; repaired: {'; '.join(self.notes)}" if self.notes else "")


AspectsArg = Mapping[str, float] | Sequence[AspectSpec | str] | None
Decomposer = Callable[[str, list[AspectSpec], "Chat | None", int], Decomposition]
DECOMPOSERS: Registry[Decomposer] = Registry("decomposer")

DEFAULT_LM_MAX_NEW_TOKENS = 1024


def decompose(
    prompt: str,
    method: str = "rules",
    aspects: AspectsArg = None,
    chat: Chat | None = None,
    max_new_tokens: int = DEFAULT_LM_MAX_NEW_TOKENS,
    still_image: bool = False,
) -> QuestionSet:
    """Decompose `prompt` into a validated `QuestionSet` with the decomposer named `method`.

    The set's `prompt` is `prompt` verbatim (the trainer matches sets to prompts by it); the
    questions are written from it with runs of whitespace collapsed.

    `aspects`: None (TA 0.5, PHY 0.25, VQ 0.25), `{name: weight}`, or a list of `AspectSpec` / names.
    `chat`: for "llm", a `str -> str` callable or an object with `.chat(prompt, system, max_new_tokens)`.
    `still_image`: questions for one image (an image model's samples): none about motion or time
    (`questions.for_still_image`; the trainer applies it itself when the model makes one frame).
    """
    return decompose_with_report(prompt, method, aspects, chat, max_new_tokens, still_image).question_set


def decompose_with_report(
    prompt: str,
    method: str = "rules",
    aspects: AspectsArg = None,
    chat: Chat | None = None,
    max_new_tokens: int = DEFAULT_LM_MAX_NEW_TOKENS,
    still_image: bool = False,
) -> Decomposition:
    """`decompose`, with how the questions were made (the method used, repairs, a fallback's reason)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise DRFInputError("the prompt is empty; write what the video should show, e.g. 'a red car drives at sunset'")
    decomposer = DECOMPOSERS.get(method)
    result = decomposer(prompt, resolve_aspects(aspects), chat, max_new_tokens)
    result.question_set.validate()
    if still_image:
        result.question_set = for_still_image(result.question_set)
    return result


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
    return Decomposition(
        QuestionSet(prompt, [Aspect("TA", spec.description, 1.0, [question], [])]), "vanilla", "vanilla"
    )


@DECOMPOSERS.register("rules")
def decompose_with_rules(prompt: str, aspects: list[AspectSpec], chat: Chat | None, max_new_tokens: int) -> QuestionSet:
    """Deterministic decomposition from a hand-written lexicon (`chat` is ignored)."""
    return Decomposition(rule_question_set(prompt, aspects), "rules", "rules")


@DECOMPOSERS.register("llm")
def decompose_with_language_model(
    prompt: str, aspects: list[AspectSpec], chat: Chat | None, max_new_tokens: int
) -> Decomposition:
    """Ask `chat` for the QuestionSet JSON; check and repair it; fall back to the rules when it is unusable."""
    if chat is None:
        raise DRFInputError(
            "the 'llm' decomposer needs a language model: pass chat= (a critic, a CausalLMChat over a local "
            "instruct LLM folder, or a function str -> str), or use method='rules'"
        )
    rules = rule_question_set(prompt, aspects)
    result = language_model_questions(prompt, aspects, chat, max_new_tokens, rules, normalize_prompt(prompt))
    if not result.used_reply:
        logger.warning(
            "language-model decomposition unusable (%s); using the rule-based decomposer instead",
            result.fallback_reason,
        )
        return Decomposition(rules, "rules", "llm", result.notes, result.fallback_reason)
    if result.notes:
        logger.info("repaired the language model's question set: %s", "; ".join(result.notes))
    return Decomposition(result.question_set, "llm", "llm", result.notes)

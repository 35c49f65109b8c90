"""Decompose Prompt and Questions From JSON: the questions the critic will be asked.

A `DRF_QUESTIONS` wire carries a tuple of `QuestionSet`s, one per prompt (a training run cycles
through them). Their JSON is shown as text so an artist can copy it into Questions From JSON,
edit a question, and train on the edited set. Knows the decomposer registry; nothing about models.
"""

from __future__ import annotations

import json

from ..drf_core.decompose import DECOMPOSERS, decompose_with_report
from ..drf_core.errors import DRFInputError
from ..drf_core.questions import QuestionSet
from .spec import (
    CRITIC,
    QUESTIONS,
    Combo,
    DRFNode,
    Int,
    NodeContext,
    NodeResult,
    NodeSpec,
    OutputSpec,
    Socket,
    String,
    category,
    parse_weights,
)

DEFAULT_ASPECT_WEIGHTS = "TA=0.5, PHY=0.25, VQ=0.25"
QUESTIONS_TOOLTIP = "The questions per prompt (aspects, yes/no questions, explanation queries)."
JSON_TOOLTIP = "The questions as JSON: copy into Questions From JSON to edit them."


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DRFInputError("prompts: empty; write at least one prompt (one per line)")
    return prompts


def questions_json(question_sets: tuple[QuestionSet, ...]) -> str:
    data = [qs.to_dict() for qs in question_sets]
    return json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False)


def parse_questions_json(text: str) -> tuple[QuestionSet, ...]:
    """One question set (a JSON object) or several (a JSON list of objects), validated."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        QuestionSet.from_json(text, "questions JSON")  # raises the detailed, located error
        raise
    if isinstance(data, list):
        if not data:
            raise DRFInputError("questions JSON: the list is empty; give one question set per prompt")
        sets = tuple(QuestionSet.from_dict(item, f"questions JSON, set {i + 1}") for i, item in enumerate(data))
    else:
        sets = (QuestionSet.from_json(text, "questions JSON"),)
    prompts = [qs.prompt for qs in sets]
    duplicates = sorted({p for p in prompts if prompts.count(p) > 1})
    if duplicates:
        raise DRFInputError(f"questions JSON: prompt(s) {duplicates} have more than one set; merge them into one")
    return sets


class DecomposePrompt(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFDecomposePrompt",
        display_name="Decompose Prompt (DRF)",
        category=category("questions"),
        description=(
            "Turns each prompt into weighted aspects (TA: text alignment, PHY: physics, VQ: visual quality) of "
            "yes/no questions and explanation queries that the critic answers. 'llm' asks the connected critic to "
            "write the questions, checks them (no nonsense, every thing in the prompt asked about) and repairs them "
            "from the rules, or uses the rules' questions when its reply is unusable (the node says why); 'rules' "
            "parses the prompt offline; 'vanilla' asks one question about the whole prompt."
        ),
        inputs=(
            String(
                "prompts",
                "a red fox runs across a snowy field at sunrise",
                "The prompts to fine-tune on, one per line. Each gets its own question set.",
                multiline=True,
            ),
            Combo("method", DECOMPOSERS.names(), "How questions are written (see the node's description).", "rules"),
            String(
                "aspect_weights",
                DEFAULT_ASPECT_WEIGHTS,
                "Aspects and their weights in the reward, as NAME=weight separated by commas. "
                "Known names: TA, PHY, VQ; others get a generic description.",
            ),
            Int("max_new_tokens", 512, 64, 4096, "For 'llm': the longest answer the critic may write."),
            Socket("critic", CRITIC, "Needed by 'llm' only: the VLM that writes the questions.", optional=True),
        ),
        outputs=(
            OutputSpec(QUESTIONS, "questions", QUESTIONS_TOOLTIP),
            OutputSpec("STRING", "questions_json", JSON_TOOLTIP),
        ),
        is_output_node=True,
    )

    @classmethod
    def run(
        cls,
        ctx: NodeContext,
        prompts: str,
        method: str,
        aspect_weights: str,
        max_new_tokens: int,
        critic: object | None = None,
    ) -> NodeResult:
        weights = parse_weights(aspect_weights, "aspect_weights")
        if not weights:
            raise DRFInputError("aspect_weights: empty; give at least one aspect, e.g. " + DEFAULT_ASPECT_WEIGHTS)
        chat = critic.get() if critic is not None else None  # type: ignore[attr-defined]
        results = [decompose_with_report(p, method, weights, chat, max_new_tokens) for p in prompt_lines(prompts)]
        sets = tuple(result.question_set for result in results)
        text = questions_json(sets)
        how = "\n".join(f"{r.question_set.prompt!r}: {r.summary()}" for r in results)
        return NodeResult((sets, text), text=f"{how}\n\n{text}")


class QuestionsFromJSON(DRFNode):
    SPEC = NodeSpec(
        node_id="DRFQuestionsFromJSON",
        display_name="Questions From JSON (DRF)",
        category=category("questions"),
        description=(
            "Reads question sets written or edited by hand: one set (a JSON object with 'prompt' and 'aspects') "
            "or a list of them. Mistakes are reported with the field that is wrong and how to fix it."
        ),
        inputs=(String("questions_json", "", "Question set JSON, as Decompose Prompt writes it.", multiline=True),),
        outputs=(OutputSpec(QUESTIONS, "questions", QUESTIONS_TOOLTIP),),
    )

    @classmethod
    def run(cls, ctx: NodeContext, questions_json: str) -> NodeResult:
        if not questions_json.strip():
            raise DRFInputError("questions_json: empty; paste the JSON shown by Decompose Prompt and edit it")
        sets = parse_questions_json(questions_json)
        summary = "; ".join(f"{qs.prompt!r}: {qs.num_questions()} questions" for qs in sets)
        return NodeResult((sets,), text=summary)

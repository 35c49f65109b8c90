"""The rule-based prompt decomposer: TA / PHY / VQ question writers over the parsed `Scene`.

`rule_question_set(prompt, aspects)` parses the prompt (`prompt_parse.parse_prompt`) and writes
questions tailored to what it found (`RULE_ASPECT_WRITERS`, by aspect name): TA asks about every
entity, count, colour, material, size, attribute, action (with its particle), relation, quoted
on-screen text, step order, condition, style and camera move; things the prompt says are absent
are asked about with the answer "no" (and never get physics questions); PHY asks about the bodies,
contact and motion of the entities that are there; VQ about sharpness, flicker and framing. The
closing TA question asks about the whole prompt. Deterministic; nothing to download. For prompts
it does not understand it still writes the whole-prompt question and generic PHY / VQ questions.

Knows nothing about language models, critics or rewards. `decompose.py` registers it as "rules".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from .errors import DRFInputError
from .prompt_lexicon import CONDITIONS, MAX_PHY_ENTITIES, PRONOUNS, QUANTIFIERS, SURFACE_PREPS, word_set
from .prompt_parse import parse_prompt
from .prompt_scene import Absence, Action, Entity, Scene
from .questions import Aspect, AspectSpec, ExplanationQuery, QuestionSet, YesNoQuestion
from .registry import Registry
from .wordforms import sentence, singular, third_person


def normalize_prompt(prompt: str) -> str:
    """The prompt with runs of whitespace collapsed (questions are written from this form)."""
    return " ".join(prompt.split())


def vanilla_question(prompt: str) -> str:
    """The one whole-prompt yes/no question (Vanilla-DRF; also the last TA question of the rules)."""
    return f'Does this video show: "{normalize_prompt(prompt)}"?'


def _refer(scene: Scene, words: list[str]) -> Entity | None:
    """The entity a camera clause names after its verb ("tracks her", "follows the dog")."""
    for word in words:
        if word in PRONOUNS:
            return scene.resolve_pronoun(word)
        if word in scene.entities or singular(word) in scene.entities:
            return scene.entities.get(word) or scene.entities[singular(word)]
    return scene.main_subject() or next(iter(scene.entities.values()), None)


def _camera_texts(scene: Scene) -> tuple[list[str], str]:
    questions, sentences = [], []
    for move, group, following in scene.camera:
        target = _refer(scene, following)
        name = target.name if target is not None else "scene"
        questions.append(move.question.replace("{1}", group).replace("{subject}", name))
        sentences.append(move.sentence.replace("{1}", group).replace("{subject}", name))
    described = []
    for clause in scene.camera_clauses:
        words = clause.split()
        for index, word in enumerate(words):
            if word.lower() in PRONOUNS and (referent := _refer(scene, [word.lower()])) is not None:
                words[index] = f"the {referent.name}"
        described.append(sentence(" ".join(words)) if "camera" in clause.lower() else "")
    target = " ".join(d for d in described if d) or " ".join(dict.fromkeys(sentences))
    return questions, target


_VAGUE_COUNTS = frozenset(QUANTIFIERS.values()) - {"two"}


def _count_question(entity: Entity) -> YesNoQuestion | None:
    name = entity.name
    if entity.count == "one":
        return YesNoQuestion(f"Is there exactly one {name}?", tag="count")
    if entity.count in _VAGUE_COUNTS:
        return YesNoQuestion(f"Are there {entity.count} {name}?", tag="count")
    if entity.count:
        return YesNoQuestion(f"Are there exactly {entity.count} {name}?", tag="count")
    return None


def _entity_questions(scene: Scene) -> list[YesNoQuestion]:
    yes_no: list[YesNoQuestion] = []
    worn = [clothing for _, clothing in scene.wearing]
    for entity in scene.entities.values():
        be, name = entity.be(), entity.name
        if entity not in worn:
            yes_no.append(YesNoQuestion(f"{be} there {entity.indefinite()}?", tag="object"))
        count = _count_question(entity)
        if count is not None:
            yes_no.append(count)
        if entity.colors and not entity.named_by_color:
            yes_no.append(YesNoQuestion(f"{be} the {name} {' and '.join(entity.colors)}?", tag="color"))
        yes_no += [YesNoQuestion(f"{be} the {name} made of {m}?", tag="material") for m in entity.materials]
        yes_no += [YesNoQuestion(f"{be} the {name} {size}?", tag="size") for size in entity.sizes]
        yes_no += [YesNoQuestion(f"{be} the {name} {attr}?", tag="attribute") for attr in entity.attributes]
    for owner, clothing in scene.wearing:
        yes_no.append(YesNoQuestion(f"{owner.be()} the {owner.name} wearing {clothing.indefinite()}?", tag="attribute"))
    return yes_no


def absence_question(absence: Absence) -> YesNoQuestion:
    """A question a faithful video answers "no": the prompt says the thing is not there."""
    thing, owner = absence.thing, absence.owner
    if owner is not None and absence.worn:
        return YesNoQuestion(f"{owner.be()} the {owner.name} wearing {thing.indefinite()}?", "no", "negation")
    if owner is not None:
        return YesNoQuestion(f"{owner.do()} the {owner.name} have {thing.indefinite()}?", "no", "negation")
    if absence.worn:
        return YesNoQuestion(f"Is anyone in the video wearing {thing.indefinite()}?", "no", "negation")
    if thing.plural:
        return YesNoQuestion(f"Are there any {thing.name} in the video?", "no", "negation")
    if thing.category == "mass":
        return YesNoQuestion(f"Is there any {thing.name} in the video?", "no", "negation")
    return YesNoQuestion(f"Is there {thing.indefinite()} in the video?", "no", "negation")


def _action_question(action: Action) -> YesNoQuestion:
    subject = action.subject
    return YesNoQuestion(
        f"{subject.be()} the {subject.name} {action.phrase()}?", "no" if action.negated else "yes", "action"
    )


def _clause(action: Action) -> str:
    """ "the dog barks", "the dogs bark": the action as a present-tense clause."""
    verb = action.lemma or action.word
    if not action.subject.plural and action.lemma:
        verb = third_person(action.lemma)
    return f"the {action.subject.name} {verb}{action.base_phrase()[len(action.lemma or action.word) :]}"


def _sequence_questions(scene: Scene) -> list[YesNoQuestion]:
    """ "X, then Y": does X happen before Y (one question per pair of consecutive steps)."""
    questions = []
    steps: dict[int, Action] = {}
    for action in scene.actions:
        if not action.negated:
            steps.setdefault(action.step, action)
    ordered = [steps[step] for step in sorted(steps)]
    for first, then in itertools.pairwise(ordered):
        subject = first.subject
        after = then.phrase() if then.subject is subject else _clause(then)
        question = f"{subject.do()} the {subject.name} {first.base_phrase()} before {after}?"
        questions.append(YesNoQuestion(question, tag="sequence"))
    return questions


def _text_questions(scene: Scene) -> list[YesNoQuestion]:
    questions = []
    for owner, text in scene.texts:
        questions.append(YesNoQuestion(f'Is the text "{text}" visible in the video?', tag="text"))
        if owner is not None:
            question = f'{owner.do()} the {owner.name} show the text "{text}"?'
            questions.append(YesNoQuestion(question, tag="text"))
    return questions


def _ta_questions(scene: Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
    yes_no = _entity_questions(scene)
    yes_no += [_action_question(action) for action in scene.actions]
    for subject, prep, obj in scene.relations:
        if prep == "with":
            question = f"{subject.do()} the {subject.name} have {obj.indefinite()}?"
        else:
            question = f"{subject.be()} the {subject.name} {prep} the {obj.name}?"
        yes_no.append(YesNoQuestion(question, tag="relation"))
    yes_no += _text_questions(scene)
    yes_no += _sequence_questions(scene)
    yes_no += [absence_question(absence) for absence in scene.absent]
    yes_no += [YesNoQuestion(CONDITIONS[c][0], tag=CONDITIONS[c][2]) for c in scene.conditions]
    yes_no += [YesNoQuestion(q, tag="lighting" if " light" in q else "style") for q, _ in scene.styles]
    camera_questions, camera_target = _camera_texts(scene)
    yes_no += [YesNoQuestion(question, tag="camera") for question in camera_questions]
    yes_no.append(YesNoQuestion(vanilla_question(prompt), tag="overall"))

    explanations = [
        ExplanationQuery(f"Describe the {entity.name} in the video.", sentence(text), tag="object")
        for entity, text in scene.subject_clauses
    ]
    if scene.conditions:
        target = " ".join(dict.fromkeys(CONDITIONS[c][1] for c in scene.conditions))
        explanations.append(ExplanationQuery("Describe the time of day and weather in the video.", target, "time"))
    if scene.styles:
        target = " ".join(text for _, text in scene.styles)
        explanations.append(ExplanationQuery("Describe the visual style of the video.", target, tag="style"))
    if camera_target:
        explanations.append(ExplanationQuery("Describe how the camera moves.", camera_target, tag="camera"))
    if not scene.subject_clauses:
        explanations.insert(0, ExplanationQuery("Describe what the video shows.", sentence(prompt), tag="overall"))
    return yes_no, explanations


def _physical_entities(scene: Scene) -> list[Entity]:
    ranked = sorted(scene.entities.values(), key=lambda e: not e.is_subject)
    return [e for e in ranked if e.category not in ("place", "clothing", "mass")][:MAX_PHY_ENTITIES]


_PHY_BY_CATEGORY: dict[str, tuple[tuple[str, str], ...]] = {
    "human": (("{do} the {name} keep a consistent body and face across frames?", "shape"),
              ("{do} the {name} have natural anatomy, with the right number of arms, legs and fingers?", "anatomy")),
    "animal": (("{do} the {name} keep a consistent body across frames?", "shape"),
               ("{do} the {name} have natural anatomy, without extra or missing body parts?", "anatomy")),
    "structure": (("{do} the {name} keep {its} shape across frames?", "shape"),
                  ("{do} the {name} stay fixed in place?", "stability")),
    "object": (("{do} the {name} keep {its} shape across frames?", "shape"),),
}  # fmt: skip
_BOUNCING_VERBS = word_set("bounce jump hop leap")
_WATER = word_set("water lake sea ocean river pool pond")


def _contact_question(subject: Entity, surface: Entity) -> str:
    if surface.head in _WATER:
        return f"{subject.do()} the {subject.name} stay on the surface of the {surface.name}?"
    return f"{subject.do()} the {subject.name} stay on the {surface.name} without floating?"


_FALLING_CONDITIONS = {"rain": "Does the rain fall downward naturally?", "snow": "Does the snow fall naturally?"}


def _phy_questions(scene: Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
    yes_no: list[YesNoQuestion] = []
    actions = [action for action in scene.actions if not action.negated]  # nothing moves that the prompt stops
    for entity in _physical_entities(scene):
        fill = {"do": entity.do(), "name": entity.name, "its": entity.its()}
        for template, tag in _PHY_BY_CATEGORY[entity.category]:
            yes_no.append(YesNoQuestion(template.format(**fill), tag=tag))
        permanence = f"{entity.do()} the {entity.name} persist without suddenly appearing, disappearing or multiplying?"
        yes_no.append(YesNoQuestion(permanence, tag="permanence"))
    bouncing = [a.subject for a in actions if a.lemma in _BOUNCING_VERBS]
    for action in actions:
        subject, surface = action.subject, action.prep_obj
        if action.lemma in _BOUNCING_VERBS and surface is not None and action.prep in SURFACE_PREPS:
            question = (
                f"{subject.do()} the {subject.name} come back down to the {surface.name} after each {action.lemma}?"
            )
            yes_no.append(YesNoQuestion(question, tag="gravity"))
    intransitive = [(a.subject, a.prep, a.prep_obj) for a in actions if a.obj is None and not a.object_text]
    for subject, prep, surface in scene.relations + intransitive:
        along_water = surface is not None and surface.head in _WATER and prep in ("along", "across")
        if prep in SURFACE_PREPS and surface is not None and subject not in bouncing and not along_water:
            yes_no.append(YesNoQuestion(_contact_question(subject, surface), tag="contact"))
    for action in actions:
        subject = action.subject
        question = f"{subject.do()} the {subject.name} move in a physically plausible way while {action.phrase()}?"
        yes_no.append(YesNoQuestion(question, tag="motion"))
    for condition in scene.conditions:
        kind = singular(condition).removesuffix("ing").removesuffix("y").removesuffix("fall")
        if kind in _FALLING_CONDITIONS:
            yes_no.append(YesNoQuestion(_FALLING_CONDITIONS[kind], tag="motion"))
    yes_no.append(YesNoQuestion("Do any objects merge into each other or pass through each other?", "no", "contact"))
    yes_no.append(YesNoQuestion("Do objects keep their identity instead of morphing into other things?", tag="shape"))
    if any(move.moving for move, _, _ in scene.camera):
        yes_no.append(YesNoQuestion("Does the scene keep a consistent 3D layout as the camera moves?", tag="3d"))

    explanations = []
    entities = _physical_entities(scene)
    if entities:
        entity = entities[0]
        s = "" if entity.plural else "s"
        action = next((a for a in actions if a.subject is entity), None)
        surface = next(((p, o) for s_, p, o in scene.relations if s_ is entity and p in SURFACE_PREPS), None)
        tag = "motion"
        if action is not None:
            question = f"Describe how the {entity.name} move{s}."
            target = f"The {entity.name} {entity.be().lower()} {action.phrase()}, with realistic, plausible motion."
        elif surface is not None and entity.category != "human":
            question, tag = f"Describe how the {entity.name} rest{s} on the {surface[1].name}.", "contact"
            target = (
                f"The {entity.name} rest{s} on the {surface[1].name} and keep{s} {entity.its()} shape, not floating."
            )
        elif entity.category in ("human", "animal"):
            question = f"Describe how the {entity.name} behave{s} over time."
            target = f"The {entity.name} keep{s} a consistent, natural body and move{s} in a physically plausible way."
        else:
            question, tag = f"Describe how the {entity.name} behave{s} over time.", "shape"
            target = f"The {entity.name} keep{s} {entity.its()} shape and behave{s} in a physically plausible way."
        explanations.append(ExplanationQuery(question, target, tag=tag))
    else:
        target = "Everything moves in a physically plausible way and keeps its shape."
        explanations.append(ExplanationQuery("Describe the motion in the video.", target, tag="motion"))
    return yes_no, explanations


def _vq_questions(scene: Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
    yes_no = [
        YesNoQuestion("Is the video sharp and free of artifacts?", tag="sharpness"),
        YesNoQuestion("Is the video free of flicker between frames?", tag="flicker"),
        YesNoQuestion("Are there distorted, blurry or noisy regions in the video?", "no", tag="artifacts"),
        YesNoQuestion("Is the video well exposed, neither too dark nor washed out?", tag="exposure"),
    ]
    subject = scene.main_subject()
    if subject is not None:
        yes_no.append(
            YesNoQuestion(f"{subject.be()} the {subject.name} clearly visible and well framed?", tag="composition")
        )
    else:
        yes_no.append(YesNoQuestion("Is the video well composed?", tag="composition"))
    summary = scene.subject_clauses[0][1] if scene.subject_clauses else prompt
    summary = summary.strip().rstrip(".")
    target = f"A sharp, clear, stable video without flicker or artifacts: {summary}."
    return yes_no, [ExplanationQuery("Describe the visual quality of the video.", target, tag="quality")]


AspectWriter = Callable[["Scene", str], tuple[list[YesNoQuestion], list[ExplanationQuery]]]
# Question writers of the rule-based decomposer, by aspect name. An aspect without a writer gets
# one yes/no question made from its description.
RULE_ASPECT_WRITERS: Registry[AspectWriter] = Registry("rule-based aspect writer")
RULE_ASPECT_WRITERS.add("TA", _ta_questions)
RULE_ASPECT_WRITERS.add("PHY", _phy_questions)
RULE_ASPECT_WRITERS.add("VQ", _vq_questions)


def _unique(questions: list) -> list:
    seen: set[str] = set()
    kept = []
    for question in questions:
        key = " ".join(question.question.split()).casefold()
        if key not in seen:
            seen.add(key)
            kept.append(question)
    return kept


def rule_question_set(prompt: str, aspects: list[AspectSpec]) -> QuestionSet:
    """Deterministic decomposition of `prompt` into the given aspects."""
    text = normalize_prompt(prompt)
    scene = parse_prompt(text)
    result = []
    for spec in aspects:
        if spec.name in RULE_ASPECT_WRITERS:
            yes_no, explanations = RULE_ASPECT_WRITERS.get(spec.name)(scene, text)
        elif spec.description.strip():
            yes_no = [
                YesNoQuestion(f'Does the video meet this requirement: "{spec.description.strip()}"?', tag="custom")
            ]
            explanations = []
        else:
            raise DRFInputError(
                f"aspect {spec.name!r} has no description, and the rule-based decomposer only writes questions for "
                f"{', '.join(RULE_ASPECT_WRITERS.names())}; give it a description (AspectSpec) or write its questions "
                "in the question-set JSON"
            )
        result.append(Aspect(spec.name, spec.description, spec.weight, _unique(yes_no), _unique(explanations)))
    return QuestionSet(prompt, result)

"""What the rule parser found in a prompt: entities, actions, absences, and the `Scene` holding them.

Plain dataclasses with the grammar the question writers need (singular/plural verb forms, the
-ing and base-form phrases of an action). Filled by `prompt_parse`, read by `decompose_rules` and
`question_checks`. Knows nothing about parsing or questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .prompt_lexicon import ANIMALS, CLOTHING, FEMALE, HUMANS, MASS_NOUNS, PLACES, PRONOUNS, STRUCTURES, CameraMove
from .wordforms import article, ing_form


@dataclass
class Entity:
    """A thing the prompt names, with what it says about it."""

    name: str  # as written: "apples", "jazz club"
    key: str  # singular: "apple", "jazz club"
    plural: bool
    count: str = ""  # "two", "several", ...
    colors: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    is_subject: bool = False
    named_by_color: bool = False  # "the red ball" next to "the blue ball": the colour is part of the name

    @property
    def head(self) -> str:
        return self.key.split()[-1]

    @property
    def category(self) -> str:
        for category, lexicon in (("human", HUMANS), ("animal", ANIMALS), ("clothing", CLOTHING),
                                  ("structure", STRUCTURES), ("place", PLACES), ("mass", MASS_NOUNS)):  # fmt: skip
            if self.head in lexicon or self.name.split()[-1] in lexicon:
                return category
        return "structure" if self.head.endswith("house") else "object"

    @property
    def living(self) -> bool:
        return self.category in ("human", "animal")

    def be(self) -> str:
        return "Are" if self.plural else "Is"

    def do(self) -> str:
        return "Do" if self.plural else "Does"

    def its(self) -> str:
        return "their" if self.plural else "its"

    def indefinite(self) -> str:
        if self.plural or self.category == "mass":
            return self.name
        return f"{article(self.name)} {self.name}"


@dataclass
class Action:
    """`subject` does `lemma` (+ `particle`) (to `obj` / `object_text`) (`prep` `prep_obj`) (`condition`)."""

    subject: Entity
    lemma: str
    word: str = ""  # as written, for verbs the dictionary does not know
    particle: str = ""  # "down" in "lies down", "off" in "turns off the lamp"
    obj: Entity | None = None
    object_text: str = ""  # "her hand", '"HELLO"': an object that is no entity of its own
    prep: str = ""
    prep_obj: Entity | None = None
    condition: str = ""  # "in the rain", "at the camera"
    negated: bool = False  # "the dog does not bark"
    step: int = 0  # the step of a sequence ("X, then Y": X is step 0, Y step 1)

    @property
    def ing(self) -> str:
        return ing_form(self.lemma) if self.lemma else self.word

    def _rest(self) -> str:
        text = f" {self.particle}" if self.particle else ""
        if self.obj is not None:
            text += f" the {self.obj.name}"
        elif self.object_text:
            text += f" {self.object_text}"
        text += f" {self.prep} the {self.prep_obj.name}" if self.prep_obj else ""
        return text + (f" {self.condition}" if self.condition else "")

    def phrase(self) -> str:
        """The -ing phrase: "lying down on the sofa", "turning off the lamp"."""
        return self.ing + self._rest()

    def base_phrase(self) -> str:
        """The base-form phrase: "lie down on the sofa" (for "Does the dog ... ?")."""
        return (self.lemma or self.word) + self._rest()


@dataclass(frozen=True)
class Absence:
    """Something the prompt says is not there: `thing` (not) worn / had by `owner` (None: anyone / anywhere)."""

    thing: Entity
    owner: Entity | None = None
    worn: bool = False


@dataclass
class Scene:
    """Everything the rules found in one prompt, in the order the prompt says it."""

    entities: dict[str, Entity] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    relations: list[tuple[Entity, str, Entity]] = field(default_factory=list)
    wearing: list[tuple[Entity, Entity]] = field(default_factory=list)
    absent: list[Absence] = field(default_factory=list)
    texts: list[tuple[Entity | None, str]] = field(default_factory=list)  # (the thing showing it, the text)
    conditions: list[str] = field(default_factory=list)
    styles: list[tuple[str, str]] = field(default_factory=list)
    # (move, its regex group such as "left", the two words after it, which may name the subject)
    camera: list[tuple[CameraMove, str, list[str]]] = field(default_factory=list)
    camera_clauses: list[str] = field(default_factory=list)
    subject_clauses: list[tuple[Entity, str]] = field(default_factory=list)

    def add_entity(self, entity: Entity) -> Entity:
        known = self.entities.get(entity.key)
        if known is not None and entity.colors and known.colors and set(entity.colors) != set(known.colors):
            self._name_by_color(known)  # "a red ball and a blue ball": two balls, each named by its colour
            self._name_by_color(entity)
            known = self.entities.get(entity.key)
        if known is None:
            self.entities[entity.key] = entity
            return entity
        for name in ("colors", "materials", "sizes", "attributes"):
            for value in getattr(entity, name):
                if value not in getattr(known, name):
                    getattr(known, name).append(value)
        known.count = known.count or entity.count
        return known

    def _name_by_color(self, entity: Entity) -> None:
        if entity.named_by_color:
            return
        prefix = " ".join(entity.colors)
        old_key = entity.key
        entity.name, entity.key, entity.named_by_color = f"{prefix} {entity.name}", f"{prefix} {entity.key}", True
        if self.entities.get(old_key) is entity:
            self.entities = {(entity.key if k == old_key else k): v for k, v in self.entities.items()}

    def add_unique(self, items: list, item: Any) -> None:
        if item not in items:
            items.append(item)

    def main_subject(self) -> Entity | None:
        ranked = [e for e in self.entities.values() if e.is_subject] + list(self.entities.values())
        return next((e for e in ranked if e.category not in ("place", "clothing")), None)

    def resolve_pronoun(self, pronoun: str) -> Entity | None:
        kind = PRONOUNS[pronoun]
        if kind == "thing":  # "drinks it": the last action's object, else the last thing named (not alive, no place)
            objects = [a.obj for a in self.actions if a.obj is not None and not a.obj.living]
            if objects:
                return objects[-1]
            things = [e for e in self.entities.values() if not e.living and e.category != "place"]
            return things[-1] if things else self.main_subject()
        for entity in self.entities.values():
            if (kind == "female" and entity.head in FEMALE) or (kind == "plural" and entity.plural):
                return entity
            if kind == "male" and entity.category == "human" and entity.head not in FEMALE:
                return entity
        return self.main_subject()

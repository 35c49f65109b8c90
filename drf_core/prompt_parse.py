"""The rule decomposer's parser: a text-to-video prompt -> a `Scene` of what it says.

`parse_prompt(text)` finds entities (with counts, colours, materials, sizes, attributes), actions
(verbs with their particles, objects and prepositional phrases; negated ones marked), spatial
relations, clothing, things the prompt says are absent ("no people", "without a hat", "neither of
them wears glasses"), quoted on-screen text ("a sign that reads 'OPEN'"), the order of steps
("X, then Y"), conditions (time of day, weather), styles and camera moves.

A heuristic, not a grammar: a left-to-right reader over the lexicon in `prompt_lexicon`, with
parts of speech and word forms from `wordforms`. Knows nothing about questions.
"""

from __future__ import annotations

import re
from typing import Any

from .prompt_lexicon import (
    ADVERB_EXCEPTIONS,
    ADVERBS,
    ATTRIBUTES,
    AUXILIARIES,
    BODY_PARTS,
    CAMERA_CLAUSE,
    CAMERA_KIND_NOUNS,
    CAMERA_MOVES,
    CLAUSE_SPLIT,
    COLORS,
    CONDITIONS,
    CONJUNCTIONS,
    DETERMINERS,
    ING_NOUNS,
    LIGHTING,
    MATERIALS,
    MOTION_PREPS,
    NEGATIVE_SUBJECTS,
    NEGATORS,
    NUMBER_WORDS,
    NUMBERS,
    PARTICLES,
    PREFIX,
    PREPOSITIONS,
    PRONOUNS,
    QUANTIFIERS,
    RELATIVE_PRONOUNS,
    SEQUENCE_SPLIT,
    SIZES,
    SPATIAL_PREPS,
    STYLE_KIND_NOUNS,
    STYLES,
    TEXT_NOUNS,
    TEXT_SHOWING_VERBS,
    TEXT_WRITING_VERBS,
    TOKEN,
    TRANSITIVE_PHRASAL,
    VERB_LEMMAS,
    VERB_NEGATORS,
)
from .prompt_scene import Absence, Action, Entity, Scene
from .wordforms import article, can_be, is_plural, parts_of_speech, singular, verb_lemma

POSSESSIVES = frozenset("his her their its my your our".split())
# quoted on-screen text: 'OPEN', "HELLO", ‘OPEN’, “HELLO” (an apostrophe inside a word is no quote)
_QUOTED = re.compile(
    r"(?<![\w])(['\"\u2018\u201c])(?P<text>[^'\"\u2018\u2019\u201c\u201d]+?)(['\"\u2019\u201d])(?![\w])"
)
TEXT_PLACEHOLDER = "quotedtext"


WORD_CLASSES: tuple[tuple[str, Any], ...] = (
    ("det", DETERMINERS), ("aux", AUXILIARIES), ("conj", CONJUNCTIONS), ("color", COLORS), ("size", SIZES),
    ("attribute", ATTRIBUTES), ("condition", CONDITIONS), ("style", STYLES),
)  # fmt: skip
_PHRASE_TABLES = (
    ("negsubject", dict.fromkeys(NEGATIVE_SUBJECTS)),
    ("number", NUMBERS),
    ("quantity", QUANTIFIERS),
    ("prep", PREPOSITIONS),
    ("condition", CONDITIONS),
    ("style", STYLES),
)
_VALUE_IS_PHRASE = ("condition", "style", "negsubject")


def verb_of(word: str) -> str:
    """The lemma if `word` reads as a verb in a prompt ("", if it reads as something else).

    Verbs of the hand-written list (common video actions) in any form; other words whose only
    dictionary reading is a verb ("flickers", "glistening"); -ing forms of any verb.
    """
    lemma = verb_lemma(word)
    if not lemma:
        return ""
    if lemma in VERB_LEMMAS:
        return lemma
    pos = parts_of_speech(word)
    if word.endswith("ing") and word not in ING_NOUNS and not ({"ADJ"} & pos and lemma == word):
        return lemma
    return lemma if pos <= {"VERB", "ADV"} else ""


def classify(words: list[str], i: int) -> tuple[str, int, Any]:
    """(kind, number of words, value) of the longest lexicon match at `words[i]`."""
    for length in (5, 4, 3, 2):
        if len(words) - i >= length:
            phrase = " ".join(words[i : i + length])
            for kind, table in _PHRASE_TABLES:
                if phrase in table:
                    value = phrase if kind in _VALUE_IS_PHRASE else table[phrase]
                    return kind, length, NUMBER_WORDS.get(value, value) if kind == "number" else value
    word = words[i]
    previous = words[i - 1] if i > 0 else ""
    following = words[i + 1] if i + 1 < len(words) else ""
    if word == TEXT_PLACEHOLDER or re.fullmatch(TEXT_PLACEHOLDER + r"\d+", word):
        return "text", 1, word
    if word in NUMBERS:
        return "number", 1, NUMBER_WORDS[NUMBERS[word]]
    if word.isdigit():
        return "number", 1, NUMBER_WORDS.get(int(word), word)
    if word in QUANTIFIERS:
        return "quantity", 1, QUANTIFIERS[word]
    if word in NEGATORS:
        return "negator", 1, word
    if word in VERB_NEGATORS or word.endswith("n't"):
        return "verbneg", 1, word
    if word in RELATIVE_PRONOUNS and (word != "that" or (previous and previous not in DETERMINERS | AUXILIARIES)):
        return "relative", 1, word
    if word in PRONOUNS and (
        word != "her" or not following or following in PREPOSITIONS.keys() | CONJUNCTIONS | PARTICLES
    ):
        return "pronoun", 1, word
    for kind, lexicon in WORD_CLASSES:
        if word in lexicon:
            return kind, 1, word
    if word in MATERIALS:
        return "material", 1, MATERIALS[word]
    if word in PREPOSITIONS:
        return "prep", 1, PREPOSITIONS[word]
    if word in PARTICLES:
        return "particle", 1, word
    lemma = verb_of(word)
    if lemma:
        return "verb", 1, lemma
    if word in ADVERBS or (
        word.endswith("ly") and len(word) > 4 and word not in ADVERB_EXCEPTIONS and not can_be(word, "NOUN")
    ):
        return "adverb", 1, word
    if word in ("first", "also", "just", "still", "slowly"):
        return "adverb", 1, word
    return "noun", 1, word


_NOUN_PHRASE_KINDS = ("det", "number", "quantity", "color", "size", "attribute", "material", "noun")
_MODIFIER_KINDS = ("noun", "color", "size", "attribute", "material")
_NP_START = (*_NOUN_PHRASE_KINDS, "text", "pronoun")


class _ClauseParser:
    """Reads one lowercase clause left to right: noun phrases, verbs, prepositions, conditions, styles."""

    def __init__(
        self, scene: Scene, text: str, target_text: str, previous_subject: Entity | None, step: int, texts: list[str]
    ) -> None:
        self.scene = scene
        self.words = TOKEN.findall(text.lower())
        self.target_text = target_text
        self.previous_subject = previous_subject
        self.step = step
        self.texts = texts  # the quoted texts, by placeholder number
        self.subjects: list[Entity] = []
        self.last_np: Entity | None = None
        self.action: Action | None = None
        self.prep = ""
        self.prep_anchor: Action | Entity | None = None
        self.wear_next = False
        self.after_conjunction = False
        self.negate_next_np = ""  # the negator ("no", "without") that makes the next noun phrase absent
        self.negative_subject = False  # "neither of them ..."
        self.negate_next_verb = False
        self.relative_subject: Entity | None = None  # "a sign that reads ...": the sign
        self.showing_owner: Entity | None = None  # set by "reads" / "says": the next quoted text is shown by it
        self.previous_kind = ""

    def parse(self) -> Entity | None:
        """Record what the clause says in the scene; return the clause's subject (or the previous one)."""
        i = 0
        while i < len(self.words):
            kind, length, value = classify(self.words, i)
            if kind == "noun" and self._verb_in_context(i):
                kind, value = "verb", verb_lemma(self.words[i])
            if kind in _NOUN_PHRASE_KINDS:
                i = self._noun_phrase(i)
                self.previous_kind = "np"
                continue
            if kind == "verb":
                self._verb(i, value)
            elif kind == "prep" or kind == "particle":
                self._preposition_or_particle(i, length, kind, value)
            elif kind == "condition":
                self._condition(value)
            elif kind == "style":
                self.scene.add_unique(self.scene.styles, STYLES[value])
            elif kind == "pronoun" and self.action is not None and self.action.obj is None and not self.wear_next:
                self.action.obj = self.scene.resolve_pronoun(value)
            elif kind == "negator" and not (value == "neither" and i + 1 < len(self.words)):
                self.negate_next_np = value
            elif kind == "negator" or kind == "negsubject":
                self.negative_subject = True
            elif kind == "verbneg":
                self.negate_next_verb = True
            elif kind == "relative":
                self.relative_subject = self.last_np
            elif kind == "text":
                self._quoted_text(value)
            self.after_conjunction = kind == "conj" or (kind == "negator" and value == "nor")
            self.previous_kind = kind
            i += length
        return self.subjects[0] if self.subjects else self.previous_subject

    # ---- noun phrases ---------------------------------------------------------------------------
    def _verb_in_context(self, i: int) -> bool:
        """A noun-or-verb word read as the clause's verb: "a man picks up", "the woman opens the door".

        Only a third-person form right after a noun, before the clause has its verb, and followed by
        the end of the clause, a particle, a determiner or a pronoun ("coffee cups on a table" stays a noun).
        """
        word = self.words[i]
        lemma = verb_lemma(word)
        if not lemma or i == 0 or word == lemma or (self.action is not None and not self.after_conjunction):
            return False
        if classify(self.words, i - 1)[0] != "noun" or is_plural(self.words[i - 1]):
            return False
        following = classify(self.words, i + 1)[0] if i + 1 < len(self.words) else ""
        return following in ("", "particle", "det", "pronoun", "number", "text") or (
            following == "prep" and self.words[i + 1] in ("up", "down", "off", "away", "out")
        )

    def _noun_phrase(self, i: int) -> int:
        entity = Entity(name="", key="", plural=False)
        names: list[str] = []
        determiner = ""
        premodifier_verbs: list[tuple[str, str]] = []
        while i < len(self.words):
            kind, length, value = classify(self.words, i)
            word = self.words[i]
            following = classify(self.words, i + length)[0] if i + length < len(self.words) else ""
            if names and (kind != "noun" or self._verb_in_context(i)):
                break  # after the first name word only more name words continue it ("jazz club")
            if kind == "det":
                determiner = word
                entity.plural = entity.plural or word in ("these", "those")
            elif kind in ("number", "quantity"):
                entity.count, entity.plural = value, value != "one"
            elif kind in ("color", "size", "attribute"):
                getattr(entity, {"color": "colors", "size": "sizes", "attribute": "attributes"}[kind]).append(word)
            elif kind == "material" and following in _MODIFIER_KINDS:
                entity.materials.append(value)
            elif kind == "condition" and following in _MODIFIER_KINDS:
                self.scene.add_unique(self.scene.conditions, value)  # "a foggy field": the field stays the head
            elif kind == "condition":
                self._condition(value)
            elif kind == "style":
                self.scene.add_unique(self.scene.styles, STYLES[value])
            elif kind == "verb" and word.endswith("ing") and following == "noun":
                premodifier_verbs.append((word, value))  # "a running dog"
            elif kind in ("noun", "material") or (kind == "verb" and not word.endswith("ing") and not names):
                names.append(word)  # a verb form right after a determiner is a noun: "a wave", "a race car"
            else:
                break
            i += length
        if not names:
            if self.last_np is not None:  # predicate adjectives: "the car is red"
                self._merge_attributes(self.last_np, entity)
            return i
        head = names[-1]
        if self._not_an_entity(names, determiner, i):
            return i
        entity.name, entity.key = head, singular(head)
        if premodifier_verbs and entity.category not in ("human", "animal"):
            names = [ing for ing, _ in premodifier_verbs] + names  # "a swimming pool", "a burning candle"
            premodifier_verbs = []
        entity.name = " ".join(names)
        entity.key = " ".join([*names[:-1], singular(head)])
        if not entity.count:
            entity.plural = entity.plural or is_plural(head)
        if self.negate_next_np or (self.negative_subject and self.wear_next):
            self._absent(entity)
            return i
        entity = self.scene.add_entity(entity)
        self._attach(entity)
        for ing, lemma in premodifier_verbs:  # "a running dog"
            action = Action(entity, lemma, word=ing, step=self.step)
            self.scene.add_unique(self.scene.actions, action)
        return i

    def _not_an_entity(self, names: list[str], determiner: str, end: int) -> bool:
        """The camera (the viewer), a body part, "the words" before a quote: part of a phrase, not a thing."""
        head = names[-1]
        action = self.action
        if head == "camera":
            if action is not None and self.prep and not action.condition:
                action.condition = f"{self.prep} the camera"  # "waves at the camera"
            self.prep = ""
            return True
        if head in BODY_PARTS and (determiner in POSSESSIVES or any(n.endswith("'s") for n in names[:-1])):
            phrase = " ".join([determiner, *names]).strip()
            if action is not None and self.prep and action.prep_obj is None and not action.condition:
                action.condition = f"{self.prep} {phrase}"
            elif action is not None and action.obj is None and not action.object_text:
                action.object_text = phrase  # "waves her hand"
            self.prep = ""
            return True
        next_kind = classify(self.words, end)[0] if end < len(self.words) else ""
        return head in TEXT_NOUNS and next_kind == "text" and head != "sign"

    def _absent(self, entity: Entity) -> None:
        negator, self.negate_next_np = self.negate_next_np, ""
        worn = self.wear_next or entity.category == "clothing"
        owner = None
        if negator == "without":
            owner = self.relative_subject or (self.subjects[0] if self.subjects else self.last_np)
            owner = owner or self.previous_subject
        elif self.wear_next and not self.negative_subject:
            owner = self.subjects[0] if self.subjects else self.previous_subject
        self.wear_next = False
        self.scene.add_unique(self.scene.absent, Absence(entity, owner if owner and owner.living else None, worn))
        self.prep = ""  # "no people in the room": the room is there, the people are not
        self.prep_anchor = None

    def _merge_attributes(self, target: Entity, source: Entity) -> None:
        for name in ("colors", "materials", "sizes", "attributes"):
            for value in getattr(source, name):
                self.scene.add_unique(getattr(target, name), value)

    def _attach(self, entity: Entity) -> None:
        anchor = self.prep_anchor
        owner = anchor.subject if isinstance(anchor, Action) else anchor
        if self.wear_next or (self.prep in ("in", "with") and entity.category == "clothing"):
            owner = owner or (self.subjects[0] if self.subjects else self.previous_subject)
            if owner is not None:
                self.scene.add_unique(self.scene.wearing, (owner, entity))
            self.wear_next, self.prep = False, ""
        elif self.prep:
            if isinstance(anchor, Action):
                anchor.prep, anchor.prep_obj = self.prep, entity
            acting = anchor if isinstance(anchor, Action) else self.action
            if (
                acting is not None
                and (acting.obj is not None or acting.object_text)
                and entity.category != "place"
                and self.prep not in ("in", "at", "inside")
            ):  # "blows out the candles on a cake": the candles are on the cake, not the girl
                owner = acting.obj
            if owner is not None and owner is not entity and (self.prep in SPATIAL_PREPS or self.prep == "with"):
                self.scene.add_unique(self.scene.relations, (owner, self.prep, entity))
            of_phrase, self.prep = self.prep == "of", ""
            if of_phrase:  # "a cup of coffee": the cup stays the phrase's head
                return
        elif self.action is not None and self.action.obj is None and not self.action.object_text:
            if not self.action.prep:
                self.action.obj = entity
        elif not self.subjects or (self.after_conjunction and self.action is None):
            self.subjects.append(entity)
            entity.is_subject = True
            self.scene.add_unique(self.scene.subject_clauses, (entity, self.target_text))
        self.last_np = entity

    # ---- verbs, particles, prepositions ---------------------------------------------------------
    def _verb(self, i: int, lemma: str) -> None:
        word = self.words[i]
        relative, self.relative_subject = self.relative_subject, None
        negated, self.negate_next_verb = self.negate_next_verb, False
        if word in TEXT_SHOWING_VERBS and self._quote_follows(i + 1):
            self.showing_owner = relative or (self.subjects[0] if self.subjects else self.last_np)
            return
        subjects = self.subjects or ([self.previous_subject] if self.previous_subject else [])
        subjects = [relative] if relative else subjects
        if lemma == "wear" or (lemma == "have" and self.negative_subject):
            self.wear_next = True
            return
        if self.negative_subject:
            return  # "neither of them smiles": no one to ask about
        if word != lemma and not word.endswith(("ing", "s")) and not relative:
            return  # a past participle describes, it is no action: "a car parked next to", "'HI' written in icing"
        for subject in subjects:
            self.action = Action(subject, lemma, word=word, negated=negated, step=self.step)
            self.scene.add_unique(self.scene.actions, self.action)
        self.prep, self.prep_anchor = "", None

    def _quote_follows(self, i: int) -> bool:
        """A quoted text comes next, perhaps after "the words" / "the text"."""
        while i < len(self.words) and (self.words[i] in DETERMINERS or self.words[i] in TEXT_NOUNS):
            i += 1
        return i < len(self.words) and classify(self.words, i)[0] == "text"

    def _preposition_or_particle(self, i: int, length: int, kind: str, value: str) -> None:
        """A particle right after a verb belongs to it ("lies down", "turns off the lamp"); else a preposition."""
        word = self.words[i]
        action = self.action
        after_verb = self.previous_kind == "verb" or (self.previous_kind == "adverb" and action is not None)
        if action is not None and after_verb and word in PARTICLES and not action.particle and length == 1:
            next_kind = classify(self.words, i + 1)[0] if i + 1 < len(self.words) else ""
            starts_np = next_kind in _NP_START
            if not starts_np or (action.lemma, word) in TRANSITIVE_PHRASAL or kind == "particle":
                action.particle = word
                return
        if kind == "particle":
            if action is not None and not action.particle and word in ("away", "back", "aside", "apart"):
                action.particle = word
            return
        self._preposition(value)

    def _preposition(self, prep: str) -> None:
        action = self.action
        if action is not None and action.prep_obj is None and (action.obj is None or prep in MOTION_PREPS):
            self.prep_anchor = action
        elif action is not None:
            self.prep_anchor = action.subject
        else:  # "two apples on a table next to a vase": both relations describe the subject
            self.prep_anchor = self.subjects[0] if self.subjects else self.last_np
        self.prep = prep

    def _condition(self, word: str) -> None:
        self.scene.add_unique(self.scene.conditions, word)
        anchor = self.prep_anchor
        if self.prep and isinstance(anchor, Action) and anchor.prep_obj is None and not anchor.condition:
            _, sentence, tag = CONDITIONS[word]
            anchor.condition = sentence.rstrip(".").split(" place ")[-1] if tag == "time" else f"{self.prep} the {word}"
        self.prep = ""

    def _quoted_text(self, placeholder: str) -> None:
        text = self.texts[int(placeholder.removeprefix(TEXT_PLACEHOLDER))]
        action = self.action
        if self.showing_owner is not None:
            self.scene.add_unique(self.scene.texts, (self.showing_owner, text))
            self.showing_owner = None
        elif action is not None and action.word in TEXT_WRITING_VERBS and action.obj is None:
            action.object_text = f'"{text}"'  # "writes 'HELLO'": writing "HELLO"
            self.scene.add_unique(self.scene.texts, (None, text))
        else:  # "a sign with the word 'EXIT'", "a banner: 'WELCOME'"
            owner = self.prep_anchor if isinstance(self.prep_anchor, Entity) else self.last_np
            self.scene.add_unique(self.scene.texts, (owner, text))
        self.prep = ""


_CAMERA_START = re.compile(
    r"^(?:an? |the )?(?:(?:slow|slowly|fast|quick|quickly|smooth|smoothly|gentle|gently)\s+)*"
    r"(?:pan|tilt|zoom|dolly|push in|pull back|pull out|track|orbit|static|handheld|time[- ]?lapse|slow[- ]?mo|wide|"
    r"first[- ]person|aerial|drone|crane)"
)


def extract_quoted_text(prompt: str) -> tuple[str, list[str]]:
    """The prompt with each quoted text replaced by a placeholder word, and the texts in order."""
    texts: list[str] = []

    def replace(match: re.Match[str]) -> str:
        texts.append(match.group("text").strip())
        return f" {TEXT_PLACEHOLDER}{len(texts) - 1} "

    return _QUOTED.sub(replace, prompt), texts


def parse_prompt(prompt: str) -> Scene:
    """Split into clauses; lighting, "X painting/shot of" prefixes and camera clauses first, then the rest."""
    scene = Scene()
    previous_subject: Entity | None = None
    text_prompt, texts = extract_quoted_text(prompt)
    step = 0
    pieces = CLAUSE_SPLIT.split(text_prompt)
    for index, raw_clause in enumerate(pieces):
        if index % 2 == 1:  # a separator
            if raw_clause.strip().lower() in SEQUENCE_SPLIT:
                step += 1
            continue
        clause = raw_clause.strip()
        text = clause.lower()
        if not text:
            continue
        for match in list(LIGHTING.finditer(text)):
            phrase = match.group(0)
            if not match.group(1) or match.group(1).split()[0] not in DETERMINERS | PREPOSITIONS.keys():
                scene.add_unique(scene.styles, (f"Does the video have {phrase}?", f"The video has {phrase}."))
                text = text.replace(phrase, " ")
        prefix = PREFIX.match(text.strip())
        if prefix and prefix.group("kind") in STYLE_KIND_NOUNS:  # "a watercolor painting of ...", "a drone shot of"
            modifiers, kind = prefix.group("mods").strip(), prefix.group("kind")
            is_camera = find_camera(scene, f"{modifiers} {kind}") or kind in CAMERA_KIND_NOUNS
            if is_camera and modifiers in STYLES:  # "a black and white video of", "a cinematic shot of"
                scene.add_unique(scene.styles, STYLES[modifiers])
            elif not is_camera and modifiers:
                described = f"{modifiers} {kind}"
                described = f"{article(described)} {described}"
                style = STYLES.get(
                    modifiers, (f"Does the video look like {described}?", f"The video looks like {described}.")
                )
                scene.add_unique(scene.styles, style)
            text = prefix.group("rest")
            clause = clause[-len(text) :] if is_camera else clause
        if CAMERA_CLAUSE.search(text) or _CAMERA_START.match(text.strip()):
            end = find_camera(scene, text)
            scene.add_unique(scene.camera_clauses, clause)
            rest = TOKEN.findall(text[end:])  # "the camera zooms in on a cat sleeping": parse "a cat sleeping"
            if not rest or rest[0] not in PREPOSITIONS.keys() | DETERMINERS | NUMBERS.keys():
                continue
            while rest and rest[0] in PREPOSITIONS:
                rest.pop(0)
            text = clause = " ".join(rest)
        for number, quoted in enumerate(texts):
            clause = clause.replace(f"{TEXT_PLACEHOLDER}{number}", f"'{quoted}'")
        parser = _ClauseParser(scene, text, " ".join(clause.split()), previous_subject, step, texts)
        previous_subject = parser.parse()
    return scene


def find_camera(scene: Scene, text: str) -> int:
    """Record the camera moves named in `text` (one per kind); return where the last one ends (0: none)."""
    end = 0
    kinds = {move.kind for move, _, _ in scene.camera}
    for move in CAMERA_MOVES:
        if move.kind in kinds:
            continue
        match = re.search(move.pattern, text)
        if match:
            kinds.add(move.kind)
            end = max(end, match.end())
            following = TOKEN.findall(text[match.end() :])
            group = (match.group(1) or "") if match.groups() else ""
            scene.add_unique(scene.camera, (move, group, following[:2]))
    return end

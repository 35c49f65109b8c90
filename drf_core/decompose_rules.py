"""The rule-based prompt decomposer: a hand-written lexicon, a clause parser, question writers.

`rule_question_set(prompt, aspects)` finds entities, counts, colours, materials, sizes, actions,
spatial relations, camera motion, style, time and weather in a text-to-video prompt and writes TA /
PHY / VQ questions tailored to them (`RULE_ASPECT_WRITERS`, by aspect name). No NLP library and
nothing to download; deterministic. A heuristic, not a parser: for prompts it does not understand it
still writes a whole-prompt TA question and generic PHY / VQ questions.

Knows nothing about language models, critics or rewards. `decompose.py` registers it as "rules".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import DRFInputError
from .questions import Aspect, AspectSpec, ExplanationQuery, QuestionSet, YesNoQuestion
from .registry import Registry


def normalize_prompt(prompt: str) -> str:
    """The prompt with runs of whitespace collapsed (questions are written from this form)."""
    return " ".join(prompt.split())


def vanilla_question(prompt: str) -> str:
    """The one whole-prompt yes/no question (Vanilla-DRF; also the last TA question of the rules)."""
    return f'Does this video show: "{normalize_prompt(prompt)}"?'


# =============================================================================================
# Rule-based decomposer: lexicon
# =============================================================================================


def _words(text: str) -> set[str]:
    return set(text.split())


_NUMBERS = {w: i + 1 for i, w in enumerate("one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS = {i: w for w, i in _NUMBERS.items()}
_QUANTIFIERS = {
    "several": "several", "many": "many", "a few": "a few", "few": "a few", "a couple of": "two",
    "a pair of": "two", "a group of": "several", "a herd of": "several", "a flock of": "several",
    "a pack of": "several", "a school of": "several", "a bunch of": "several", "a pile of": "several",
    "a crowd of": "many", "lots of": "many", "a lot of": "many", "dozens of": "many", "numerous": "many",
}  # fmt: skip
_DETERMINERS = _words("a an the this that these those some his her their its my your our")
_AUXILIARIES = _words("is are was were be being been has have had can will there it's")
_CONJUNCTIONS = _words("and or but")
_PRONOUNS = {"her": "female", "she": "female", "him": "male", "he": "male", "it": "thing", "them": "plural"}
_COLORS = _words(
    "red orange yellow green blue purple violet pink brown black white gray grey silver golden beige "
    "turquoise teal cyan magenta maroon navy crimson scarlet indigo lavender"
)
_MATERIALS = {
    "wooden": "wood", "wood": "wood", "metal": "metal", "metallic": "metal", "glass": "glass", "stone": "stone",
    "plastic": "plastic", "gold": "gold", "steel": "steel", "iron": "iron", "brick": "brick", "marble": "marble",
    "paper": "paper", "leather": "leather", "concrete": "concrete", "ceramic": "ceramic", "porcelain": "porcelain",
    "crystal": "crystal", "velvet": "velvet", "cotton": "cotton", "wool": "wool", "woolen": "wool",
    "woollen": "wool", "copper": "copper", "bronze": "bronze", "rubber": "rubber", "cardboard": "cardboard",
    "silk": "silk", "denim": "denim", "clay": "clay", "straw": "straw", "bamboo": "bamboo", "chrome": "chrome",
    "granite": "granite", "ice": "ice", "wicker": "wicker", "lego": "LEGO bricks",
}  # fmt: skip
_SIZES = _words("big large small tiny huge giant little tall short enormous massive miniature long")
_ATTRIBUTES = _words(
    "old young elderly fluffy furry shiny wet dry happy sad smiling angry cute fat thin muscular ancient modern "
    "futuristic rusty broken empty full bright dark dirty clean colorful colourful transparent glowing spotted "
    "striped curly bald bearded sleepy playful majestic hairy abstract busy crowded calm"
)
# prepositions -> the phrase used in questions; spatial ones make "relation" questions
_PREPOSITIONS = {
    "on top of": "on top of", "in front of": "in front of", "next to": "next to", "close to": "near",
    "out of": "out of", "inside of": "inside", "on": "on", "under": "under", "beside": "beside",
    "behind": "behind", "above": "above", "below": "below", "inside": "inside", "near": "near", "in": "in",
    "at": "at", "beneath": "beneath", "underneath": "underneath", "over": "over", "along": "along",
    "across": "across", "through": "through", "into": "into", "onto": "onto", "around": "around",
    "toward": "toward", "towards": "toward", "past": "past", "from": "from", "to": "to", "with": "with",
    "of": "of", "by": "by", "among": "among", "against": "against", "down": "down", "up": "up",
}  # fmt: skip
_SPATIAL_PREPS = _words("on in at under beside behind above below inside near beneath underneath") | {
    "on top of", "in front of", "next to",
}  # fmt: skip
_MOTION_PREPS = _words("along across through into onto over around toward past from to down up") | {"out of"}
_SURFACE_PREPS = _words("on onto along across") | {"on top of"}
_VERB_LEMMAS = _words(
    "run walk jump bounce drive fly swim dance play ride sit stand eat drink fall roll spin sing read write "
    "cook climb sleep smile laugh talk look pour melt burn float sail surf skate ski fight chase hold carry "
    "throw catch kick push pull open close wave paint type drift glide crash explode grow bloom rotate turn "
    "move race gallop hop crawl dive splash flow shine blow shake cross enter leave follow watch hug kiss jog "
    "bark chew sniff lick fetch sway flutter flap soar hover land sink rise drip spill leap dash stroll wander "
    "march sprint juggle knit sew draw strum drum sip bite pet feed wash brush stir chop slice bake fry grill "
    "build dig plant lift drop swing stretch bend bow kneel lie rest wait pose hide stare yawn cry shout "
    "perform practice collide shatter break slide tumble wobble wear graze hunt trot rush travel paddle "
    "row skateboard snowboard fish"
)
_DOUBLING = _words(
    "run swim sit hop jog spin dig skip drop clap grab hug nod rub step wag chat cut hit put set shut win "
    "begin dip stir trot plan stop chop slip drum strum pat pet bat flap trip sip nap tap grin swap snap "
    "shop beg wrap drip pop trim hum"
)
_ING_NOUNS = _words(
    "building ceiling evening morning clothing king ring string thing wing spring painting lighting sibling "
    "pudding wedding earring duckling dumpling icing railing sling viking nothing something everything "
    "anything ping swimming-pool stuffing frosting"
)
_ADVERB_EXCEPTIONS = _words(
    "family butterfly lily jelly belly ugly curly holy early fly ally rally bully italy only jolly friendly "
    "lonely silly hilly chilly woolly sly"
)
_HUMANS = _words(
    "man men woman women person people boy boys girl girls child children kid kids baby astronaut dancer chef "
    "doctor soldier knight king queen princess prince farmer pilot musician guitarist pianist singer student "
    "teacher worker officer policeman firefighter cowboy athlete player runner surfer skier skateboarder "
    "swimmer cyclist couple lady gentleman grandmother grandfather mother father wizard witch ninja samurai "
    "pirate scientist nurse ballerina actress actor businessman monk detective hiker climber"
)
_FEMALE = _words("woman women girl girls lady queen princess mother grandmother ballerina actress witch")
_ANIMALS = _words(
    "cat dog horse bird fish cow sheep pig chicken duck goose rabbit bunny mouse rat lion tiger bear panda "
    "elephant giraffe zebra monkey gorilla fox wolf deer owl eagle parrot penguin dolphin whale shark turtle "
    "frog snake lizard butterfly bee ant spider squirrel koala kangaroo camel goat donkey puppy kitten corgi "
    "retriever dragon unicorn dinosaur octopus crab jellyfish swan pigeon hamster raccoon otter seal"
)
_STRUCTURES = _words(
    "house lighthouse tower building castle bridge church temple skyscraper mountain hill tree cliff statue "
    "monument pyramid windmill barn cabin tent wall fence volcano palace skyline"
)
_PLACES = _words(
    "club room kitchen street road city forest beach ocean sea field park moon space desert river lake garden "
    "sky stage studio office classroom restaurant cafe bar market highway alley meadow jungle valley town "
    "village world landscape background scene universe galaxy planet earth mars underwater sunlight"
)
_CLOTHING = _words(
    "dress shirt suit coat jacket hat cap uniform hoodie sweater gown skirt scarf helmet boots shoes spacesuit "
    "armor costume robe kimono t-shirt jeans raincoat tuxedo"
)
_MASS_NOUNS = _words(
    "water sand grass smoke fire coffee tea milk juice wine beer soup rice lava mud dust steam space fur hair "
    "light music food traffic"
)
_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "knives": "knife", "leaves": "leaf", "wolves": "wolf",
    "shelves": "shelf", "loaves": "loaf", "scarves": "scarf", "elves": "elf", "lives": "life", "wives": "wife",
}  # fmt: skip
_SINGULAR_ENDING_IN_S = _words("bus lens gas canvas chess news series species glass dress cactus octopus")
# time of day / weather words -> (yes/no question, sentence for explanation targets), and a tag
_CONDITIONS: dict[str, tuple[str, str, str]] = {}
for _word in sorted(_words("sunset sunrise dusk dawn twilight midnight noon")):
    _CONDITIONS[_word] = (f"Does the scene take place at {_word}?", f"The scene takes place at {_word}.", "time")
for _word, _phrase in (("night", "at night"), ("nighttime", "at night"), ("daytime", "during the day"),
                       ("day", "during the day"), ("morning", "in the morning"), ("evening", "in the evening"),
                       ("afternoon", "in the afternoon"), ("golden hour", "during golden hour")):  # fmt: skip
    _CONDITIONS[_word] = (f"Does the scene take place {_phrase}?", f"The scene takes place {_phrase}.", "time")
for _words_, _question, _sentence in (
    ("rain raining rainy rainfall", "Is it raining in the video?", "It is raining."),
    ("snow snowing snowy snowfall", "Is it snowing in the video?", "It is snowing."),
    ("fog foggy mist misty", "Is the scene foggy?", "The scene is foggy."),
    ("storm stormy thunderstorm", "Is there a storm in the video?", "There is a storm."),
    ("sunny", "Is it sunny in the video?", "It is sunny."),
    ("cloudy overcast", "Is the sky cloudy?", "The sky is cloudy."),
    ("windy", "Is it windy in the video?", "It is windy."),
):
    for _word in _words_.split():
        _CONDITIONS[_word] = (_question, _sentence, "weather")
# style phrases -> (question, sentence)
_STYLES: dict[str, tuple[str, str]] = {
    "black and white": ("Is the video in black and white?", "The video is in black and white."),
    "cinematic": ("Does the video look cinematic?", "The video looks cinematic."),
    "photorealistic": ("Does the video look photorealistic?", "The video looks photorealistic."),
    "realistic": ("Does the video look realistic?", "The video looks realistic."),
    "anime": ("Is the video in anime style?", "The video is in anime style."),
    "cartoon": ("Does the video look like a cartoon?", "The video looks like a cartoon."),
    "pixel art": ("Is the video in pixel art style?", "The video is in pixel art style."),
    "3d render": ("Does the video look like a 3D render?", "The video looks like a 3D render."),
    "claymation": ("Does the video look like claymation?", "The video looks like claymation."),
    "stop motion": ("Does the video look like stop-motion animation?", "The video looks like stop motion."),
    "film noir": ("Is the video in film noir style?", "The video is in film noir style."),
}
for _word in sorted(_words("watercolor watercolour oil pencil charcoal ink pastel acrylic")):
    _STYLES[_word] = (f"Does the video look like a {_word} painting?", f"The video looks like a {_word} painting.")
for _word in sorted(_words("vintage retro cyberpunk steampunk surreal impressionist minimalist documentary noir")):
    _STYLES[_word] = (f"Is the video in {_word} style?", f"The video is in {_word} style.")
_CAMERA_KIND_NOUNS = _words("video footage clip scene shot view close-up closeup")
_STYLE_KIND_NOUNS = _words(
    "painting drawing illustration sketch render rendering photo photograph picture image animation video "
    "footage clip scene shot view close-up"
)
# words the parser skips (adverbs without -ly, "style" after a style word)
_ADVERBS = _words(
    "together away back forward home outside upward downward upwards downwards alone again very style styled aesthetic"
)


@dataclass(frozen=True)
class _CameraMove:
    pattern: str  # regex on the lowercase clause
    question: str  # may contain {1} (first group) and {subject}
    sentence: str
    moving: bool = True


_CAMERA_MOVES: tuple[_CameraMove, ...] = (
    _CameraMove(r"\bpan(?:s|ning|ned)?\s+(?:to\s+(?:the\s+)?)?(left|right)\b", "Does the camera pan to the {1}?",
                "The camera pans to the {1}."),
    _CameraMove(r"\btilt(?:s|ing|ed)?\s+(up|down)\b", "Does the camera tilt {1}?", "The camera tilts {1}."),
    _CameraMove(r"\bzoom(?:s|ing|ed)?\s+(in|out)\b", "Does the camera zoom {1}?", "The camera zooms {1}."),
    _CameraMove(r"\b(?:dolly(?:ing)?|push(?:es|ing)?)\s+(?:in|forward)\b",
                "Does the camera move forward toward the {subject}?", "The camera moves forward."),
    _CameraMove(r"\b(?:dolly(?:ing)?|pull(?:s|ing)?)\s+(?:out|back)\b",
                "Does the camera move backward away from the {subject}?", "The camera moves backward."),
    _CameraMove(r"\btrack(?:s|ing|ed)?\b|\bfollow(?:s|ing|ed)?\b", "Does the camera follow the {subject}?",
                "The camera follows the {subject}."),
    _CameraMove(r"\borbit(?:s|ing)?\b|\bcircl(?:es|ing) around\b", "Does the camera orbit around the {subject}?",
                "The camera orbits around the {subject}."),
    _CameraMove(r"\bstatic\b|\bfixed camera\b|\blocked[- ]off\b|\bstill camera\b|\btripod\b",
                "Does the camera stay still?", "The camera stays still.", moving=False),
    _CameraMove(r"\bhandheld\b", "Does the video look like handheld camera footage?", "Handheld camera footage."),
    _CameraMove(r"\bdrone\b|\baerial\b|\bbird'?s[- ]eye\b", "Is this an aerial shot from above?",
                "An aerial drone shot from above."),
    _CameraMove(r"\bclose[- ]?up\b", "Is this a close-up shot?", "A close-up shot.", moving=False),
    _CameraMove(r"\bwide(?:[- ]angle)? shot\b|\bwide[- ]angle\b", "Is this a wide shot?", "A wide shot.", False),
    _CameraMove(r"\blow[- ]angle\b", "Is the shot taken from a low angle?", "A low-angle shot.", moving=False),
    _CameraMove(r"\bfirst[- ]person\b|\bpov\b", "Is the video filmed from a first-person view?",
                "A first-person view."),
    _CameraMove(r"\btime[- ]?lapse\b", "Is the video a time-lapse?", "A time-lapse video.", moving=False),
    _CameraMove(r"\bslow[- ]?(?:motion|mo)\b", "Is the video in slow motion?", "The video is in slow motion.", False),
)  # fmt: skip
_CAMERA_CLAUSE = re.compile(r"\bcamera\b|\bshot\b|\bangle\b|\bpov\b|\bdrone\b|\baerial\b|\bclose[- ]?up\b")
_LIGHTING = re.compile(r"\b((?:[a-z]+ )?[a-z]+) (lighting|light|lights)\b|\b(moonlight|candlelight|backlit)\b")
_PREFIX = re.compile(r"^(?:an? |the )?(?P<mods>(?:[\w'-]+ ){0,3}?)(?P<kind>[\w-]+) of (?P<rest>.+)$")
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_CLAUSE_SPLIT = re.compile(r"[,;:.!?]+|\bwhile\b|\band then\b|\bthen\b")
_MAX_PHY_ENTITIES = 3


def _ing(lemma: str) -> str:
    if lemma.endswith("ie"):
        return lemma[:-2] + "ying"
    if lemma.endswith("e") and not lemma.endswith(("ee", "oe", "ye")):
        return lemma[:-1] + "ing"
    if lemma in _DOUBLING:
        return lemma + lemma[-1] + "ing"
    return lemma + "ing"


def _third_person(lemma: str) -> str:
    if lemma.endswith(("s", "sh", "ch", "x", "z", "o")):
        return lemma + "es"
    if lemma.endswith("y") and lemma[-2:-1] not in "aeiou":
        return lemma[:-1] + "ies"
    return lemma + "s"


_VERB_FORMS = {form: lemma for lemma in sorted(_VERB_LEMMAS) for form in (lemma, _third_person(lemma), _ing(lemma))}


def _singular(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _SINGULAR_ENDING_IN_S or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    return word[:-1]


def _article(word: str) -> str:
    lower = word.lower()
    if lower.startswith(("hour", "honest", "heir")):
        return "an"
    if lower.startswith(("uni", "use", "eu", "one")):
        return "a"
    return "an" if lower[:1] in "aeiou" else "a"


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "." if text else ""


# =============================================================================================
# Rule-based decomposer: parsing
# =============================================================================================


@dataclass
class _Entity:
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

    @property
    def head(self) -> str:
        return self.key.split()[-1]

    @property
    def category(self) -> str:
        for category, lexicon in (("human", _HUMANS), ("animal", _ANIMALS), ("clothing", _CLOTHING),
                                  ("structure", _STRUCTURES), ("place", _PLACES), ("mass", _MASS_NOUNS)):  # fmt: skip
            if self.head in lexicon or self.name.split()[-1] in lexicon:
                return category
        return "structure" if self.head.endswith("house") else "object"

    def be(self) -> str:
        return "Are" if self.plural else "Is"

    def do(self) -> str:
        return "Do" if self.plural else "Does"

    def its(self) -> str:
        return "their" if self.plural else "its"

    def indefinite(self) -> str:
        if self.plural or self.category == "mass":
            return self.name
        return f"{_article(self.name)} {self.name}"


@dataclass
class _Action:
    """`subject` does `ing` (to `obj`) (`prep` `prep_obj`) (`condition`)."""

    subject: _Entity
    ing: str
    lemma: str
    obj: _Entity | None = None
    prep: str = ""
    prep_obj: _Entity | None = None
    condition: str = ""  # "in the rain"

    def phrase(self) -> str:
        text = self.ing + (f" the {self.obj.name}" if self.obj else "")
        text += f" {self.prep} the {self.prep_obj.name}" if self.prep_obj else ""
        return text + (f" {self.condition}" if self.condition else "")


@dataclass
class _Scene:
    """Everything the rules found in one prompt, in the order the prompt says it."""

    entities: dict[str, _Entity] = field(default_factory=dict)
    actions: list[_Action] = field(default_factory=list)
    relations: list[tuple[_Entity, str, _Entity]] = field(default_factory=list)
    wearing: list[tuple[_Entity, _Entity]] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    styles: list[tuple[str, str]] = field(default_factory=list)
    # (move, its regex group such as "left", the two words after it, which may name the subject)
    camera: list[tuple[_CameraMove, str, list[str]]] = field(default_factory=list)
    camera_clauses: list[str] = field(default_factory=list)
    subject_clauses: list[tuple[_Entity, str]] = field(default_factory=list)

    def add_entity(self, entity: _Entity) -> _Entity:
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

    def add_unique(self, items: list, item: Any) -> None:
        if item not in items:
            items.append(item)

    def main_subject(self) -> _Entity | None:
        ranked = [e for e in self.entities.values() if e.is_subject] + list(self.entities.values())
        return next((e for e in ranked if e.category not in ("place", "clothing")), None)

    def resolve_pronoun(self, pronoun: str) -> _Entity | None:
        kind = _PRONOUNS[pronoun]
        for entity in self.entities.values():
            if (kind == "female" and entity.head in _FEMALE) or (kind == "plural" and entity.plural):
                return entity
            if kind == "male" and entity.category == "human" and entity.head not in _FEMALE:
                return entity
        return self.main_subject()


_WORD_CLASSES: tuple[tuple[str, Any], ...] = (
    ("det", _DETERMINERS), ("aux", _AUXILIARIES), ("conj", _CONJUNCTIONS), ("color", _COLORS), ("size", _SIZES),
    ("attribute", _ATTRIBUTES), ("condition", _CONDITIONS), ("style", _STYLES),
)  # fmt: skip


def _classify(words: list[str], i: int) -> tuple[str, int, Any]:
    """(kind, number of words, value) of the longest lexicon match at `words[i]`."""
    phrase_tables = (
        ("quantity", _QUANTIFIERS),
        ("prep", _PREPOSITIONS),
        ("condition", _CONDITIONS),
        ("style", _STYLES),
    )
    for length in (3, 2):
        if len(words) - i >= length:
            phrase = " ".join(words[i : i + length])
            for kind, table in phrase_tables:
                if phrase in table:
                    return kind, length, phrase if kind in ("condition", "style") else table[phrase]
    word = words[i]
    following = words[i + 1] if i + 1 < len(words) else ""
    if word in _NUMBERS:
        return "number", 1, word
    if word.isdigit():
        return "number", 1, _NUMBER_WORDS.get(int(word), word)
    if word in _QUANTIFIERS:
        return "quantity", 1, _QUANTIFIERS[word]
    if word in _PRONOUNS and (word != "her" or not following or following in _PREPOSITIONS | _CONJUNCTIONS):
        return "pronoun", 1, word
    for kind, lexicon in _WORD_CLASSES:
        if word in lexicon:
            return kind, 1, word
    if word in _MATERIALS:
        return "material", 1, _MATERIALS[word]
    if word in _PREPOSITIONS:
        return "prep", 1, _PREPOSITIONS[word]
    if word in _VERB_FORMS:
        return "verb", 1, _VERB_FORMS[word]
    if word.endswith("ing") and len(word) > 5 and word not in _ING_NOUNS:
        return "verb", 1, ""
    if word in _ADVERBS or (word.endswith("ly") and len(word) > 4 and word not in _ADVERB_EXCEPTIONS):
        return "adverb", 1, word
    return "noun", 1, word


_NOUN_PHRASE_KINDS = ("det", "number", "quantity", "color", "size", "attribute", "material", "noun")
_MODIFIER_KINDS = ("noun", "color", "size", "attribute", "material")


class _ClauseParser:
    """Reads one lowercase clause left to right: noun phrases, verbs, prepositions, conditions, styles."""

    def __init__(self, scene: _Scene, text: str, target_text: str, previous_subject: _Entity | None) -> None:
        self.scene = scene
        self.words = _TOKEN.findall(text.lower())
        self.target_text = target_text
        self.previous_subject = previous_subject
        self.subjects: list[_Entity] = []
        self.last_np: _Entity | None = None
        self.action: _Action | None = None
        self.prep = ""
        self.prep_anchor: _Action | _Entity | None = None
        self.wear_next = False
        self.after_conjunction = False

    def parse(self) -> _Entity | None:
        """Record what the clause says in the scene; return the clause's subject (or the previous one)."""
        i = 0
        while i < len(self.words):
            kind, length, value = _classify(self.words, i)
            if kind in _NOUN_PHRASE_KINDS:
                i = self._noun_phrase(i)
                continue
            if kind == "verb":
                self._verb(self.words[i], value)
            elif kind == "prep":
                self._preposition(value)
            elif kind == "condition":
                self._condition(value)
            elif kind == "style":
                self.scene.add_unique(self.scene.styles, _STYLES[value])
            elif kind == "pronoun" and self.action is not None and self.action.obj is None:
                self.action.obj = self.scene.resolve_pronoun(value)
            self.after_conjunction = kind == "conj"
            i += length
        return self.subjects[0] if self.subjects else self.previous_subject

    def _noun_phrase(self, i: int) -> int:
        entity = _Entity(name="", key="", plural=False)
        names: list[str] = []
        premodifier_verbs: list[tuple[str, str]] = []
        while i < len(self.words):
            kind, length, value = _classify(self.words, i)
            word = self.words[i]
            following = _classify(self.words, i + length)[0] if i + length < len(self.words) else ""
            if names and kind != "noun":
                break  # after the first name word only more name words continue it ("jazz club")
            if kind == "det":
                entity.plural = entity.plural or word in ("these", "those")
            elif kind in ("number", "quantity"):
                entity.count, entity.plural = value, value != "one"
            elif kind in ("color", "size", "attribute"):
                getattr(entity, {"color": "colors", "size": "sizes", "attribute": "attributes"}[kind]).append(word)
            elif kind == "material" and following in _MODIFIER_KINDS:
                entity.materials.append(value)
            elif kind == "condition":
                self._condition(value)
            elif kind == "style":
                self.scene.add_unique(self.scene.styles, _STYLES[value])
            elif kind == "verb" and word.endswith("ing") and following == "noun":
                premodifier_verbs.append((word, value))  # "a running dog"
            elif kind in ("noun", "material") or (kind == "verb" and not word.endswith("ing")):
                names.append(word)  # a verb form right after a determiner is a noun: "a wave", "a race car"
            else:
                break
            i += length
        if not names:
            if self.last_np is not None:  # predicate adjectives: "the car is red"
                self._merge_attributes(self.last_np, entity)
            return i
        entity.name = entity.key = names[-1]
        if premodifier_verbs and entity.category not in ("human", "animal"):
            names = [ing for ing, _ in premodifier_verbs] + names  # "a swimming pool", "a burning candle"
            premodifier_verbs = []
        entity.name = " ".join(names)
        entity.key = " ".join([*names[:-1], _singular(names[-1])])
        if not entity.count:
            entity.plural = entity.plural or entity.key != entity.name
        entity = self.scene.add_entity(entity)
        self._attach(entity)
        for ing, lemma in premodifier_verbs:  # "a running dog"
            self.scene.add_unique(self.scene.actions, _Action(entity, _ing(lemma) if lemma else ing, lemma))
        return i

    def _merge_attributes(self, target: _Entity, source: _Entity) -> None:
        for name in ("colors", "materials", "sizes", "attributes"):
            for value in getattr(source, name):
                self.scene.add_unique(getattr(target, name), value)

    def _attach(self, entity: _Entity) -> None:
        anchor = self.prep_anchor
        owner = anchor.subject if isinstance(anchor, _Action) else anchor
        if self.wear_next or (self.prep in ("in", "with") and entity.category == "clothing"):
            owner = owner or (self.subjects[0] if self.subjects else self.previous_subject)
            if owner is not None:
                self.scene.add_unique(self.scene.wearing, (owner, entity))
            self.wear_next, self.prep = False, ""
        elif self.prep:
            if isinstance(anchor, _Action):
                anchor.prep, anchor.prep_obj = self.prep, entity
            if owner is not None and owner is not entity and (self.prep in _SPATIAL_PREPS or self.prep == "with"):
                self.scene.add_unique(self.scene.relations, (owner, self.prep, entity))
            of_phrase, self.prep = self.prep == "of", ""
            if of_phrase:  # "a cup of coffee": the cup stays the phrase's head
                return
        elif self.action is not None and self.action.obj is None and not self.action.prep:
            self.action.obj = entity
        elif not self.subjects or (self.after_conjunction and self.action is None):
            self.subjects.append(entity)
            entity.is_subject = True
            self.scene.add_unique(self.scene.subject_clauses, (entity, self.target_text))
        self.last_np = entity

    def _verb(self, word: str, lemma: str) -> None:
        subjects = self.subjects or ([self.previous_subject] if self.previous_subject else [])
        if lemma == "wear":
            self.wear_next = True
            return
        for subject in subjects:
            self.action = _Action(subject, _ing(lemma) if lemma else word, lemma)
            self.scene.add_unique(self.scene.actions, self.action)

    def _preposition(self, prep: str) -> None:
        action = self.action
        if action is not None and action.prep_obj is None and (action.obj is None or prep in _MOTION_PREPS):
            self.prep_anchor = action
        elif action is not None:
            self.prep_anchor = action.subject
        else:  # "two apples on a table next to a vase": both relations describe the subject
            self.prep_anchor = self.subjects[0] if self.subjects else self.last_np
        self.prep = prep

    def _condition(self, word: str) -> None:
        self.scene.add_unique(self.scene.conditions, word)
        anchor = self.prep_anchor
        if self.prep and isinstance(anchor, _Action) and anchor.prep_obj is None and not anchor.condition:
            _, sentence, tag = _CONDITIONS[word]
            anchor.condition = sentence.rstrip(".").split(" place ")[-1] if tag == "time" else f"{self.prep} the {word}"
        self.prep = ""


_CAMERA_START = re.compile(
    r"^(?:(?:slow|slowly|fast|quick|quickly|smooth|smoothly|gentle|gently)\s+)*"
    r"(?:pan|tilt|zoom|dolly|push|pull|track|orbit|static|handheld|time[- ]?lapse|slow[- ]?mo|wide|first[- ]person)"
)


def _parse_prompt(prompt: str) -> _Scene:
    """Split into clauses; lighting, "X painting/shot of" prefixes and camera clauses first, then the rest."""
    scene = _Scene()
    previous_subject: _Entity | None = None
    for raw_clause in _CLAUSE_SPLIT.split(prompt):
        clause = raw_clause.strip()
        text = clause.lower()
        if not text:
            continue
        for match in list(_LIGHTING.finditer(text)):
            phrase = match.group(0)
            if not match.group(1) or match.group(1).split()[0] not in _DETERMINERS | _PREPOSITIONS.keys():
                scene.add_unique(scene.styles, (f"Does the video have {phrase}?", f"The video has {phrase}."))
                text = text.replace(phrase, " ")
        prefix = _PREFIX.match(text.strip())
        if prefix and prefix.group("kind") in _STYLE_KIND_NOUNS:  # "a watercolor painting of ...", "a drone shot of"
            modifiers, kind = prefix.group("mods").strip(), prefix.group("kind")
            is_camera = _find_camera(scene, f"{modifiers} {kind}") or kind in _CAMERA_KIND_NOUNS
            if not is_camera and modifiers:
                described = f"{modifiers} {kind}"
                described = f"{_article(described)} {described}"
                style = _STYLES.get(
                    modifiers, (f"Does the video look like {described}?", f"The video looks like {described}.")
                )
                scene.add_unique(scene.styles, style)
            text = prefix.group("rest")
            clause = clause[-len(text) :] if is_camera else clause
        if _CAMERA_CLAUSE.search(text) or _CAMERA_START.match(text.strip()):
            end = _find_camera(scene, text)
            scene.add_unique(scene.camera_clauses, clause)
            rest = _TOKEN.findall(text[end:])  # "the camera zooms in on a cat sleeping": parse "a cat sleeping"
            if not rest or rest[0] not in _PREPOSITIONS.keys() | _DETERMINERS | _NUMBERS.keys():
                continue
            while rest and rest[0] in _PREPOSITIONS:
                rest.pop(0)
            text = clause = " ".join(rest)
        previous_subject = _ClauseParser(scene, text, clause, previous_subject).parse()
    return scene


def _find_camera(scene: _Scene, text: str) -> int:
    """Record the camera moves named in `text`; return where the last one ends (0: none)."""
    end = 0
    for move in _CAMERA_MOVES:
        match = re.search(move.pattern, text)
        if match:
            end = max(end, match.end())
            following = _TOKEN.findall(text[match.end() :])
            group = (match.group(1) or "") if match.groups() else ""
            scene.add_unique(scene.camera, (move, group, following[:2]))
    return end


# =============================================================================================
# Rule-based decomposer: questions
# =============================================================================================


def _refer(scene: _Scene, words: list[str]) -> _Entity | None:
    """The entity a camera clause names after its verb ("tracks her", "follows the dog")."""
    for word in words:
        if word in _PRONOUNS:
            return scene.resolve_pronoun(word)
        if word in scene.entities or _singular(word) in scene.entities:
            return scene.entities.get(word) or scene.entities[_singular(word)]
    return scene.main_subject() or next(iter(scene.entities.values()), None)


def _camera_texts(scene: _Scene) -> tuple[list[str], str]:
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
            if word.lower() in _PRONOUNS and (referent := _refer(scene, [word.lower()])) is not None:
                words[index] = f"the {referent.name}"
        described.append(_sentence(" ".join(words)) if "camera" in clause.lower() else "")
    target = " ".join(d for d in described if d) or " ".join(dict.fromkeys(sentences))
    return questions, target


def _ta_questions(scene: _Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
    yes_no: list[YesNoQuestion] = []
    worn = [clothing for _, clothing in scene.wearing]
    for entity in scene.entities.values():
        be, name = entity.be(), entity.name
        if entity not in worn:
            yes_no.append(YesNoQuestion(f"{be} there {entity.indefinite()}?", tag="object"))
        if entity.count in ("one", "1"):
            yes_no.append(YesNoQuestion(f"Is there exactly one {name}?", tag="count"))
        elif entity.count in _NUMBERS or entity.count.isdigit():
            yes_no.append(YesNoQuestion(f"Are there exactly {entity.count} {name}?", tag="count"))
        elif entity.count:
            yes_no.append(YesNoQuestion(f"Are there {entity.count} {name}?", tag="count"))
        if entity.colors:
            yes_no.append(YesNoQuestion(f"{be} the {name} {' and '.join(entity.colors)}?", tag="color"))
        yes_no += [YesNoQuestion(f"{be} the {name} made of {m}?", tag="material") for m in entity.materials]
        yes_no += [YesNoQuestion(f"{be} the {name} {size}?", tag="size") for size in entity.sizes]
        yes_no += [YesNoQuestion(f"{be} the {name} {attr}?", tag="attribute") for attr in entity.attributes]
    for owner, clothing in scene.wearing:
        yes_no.append(YesNoQuestion(f"{owner.be()} the {owner.name} wearing {clothing.indefinite()}?", tag="attribute"))
    for action in scene.actions:
        yes_no.append(
            YesNoQuestion(f"{action.subject.be()} the {action.subject.name} {action.phrase()}?", tag="action")
        )
    for subject, prep, obj in scene.relations:
        if prep == "with":
            question = f"{subject.do()} the {subject.name} have {obj.indefinite()}?"
        else:
            question = f"{subject.be()} the {subject.name} {prep} the {obj.name}?"
        yes_no.append(YesNoQuestion(question, tag="relation"))
    yes_no += [YesNoQuestion(_CONDITIONS[c][0], tag=_CONDITIONS[c][2]) for c in scene.conditions]
    yes_no += [YesNoQuestion(q, tag="lighting" if " light" in q else "style") for q, _ in scene.styles]
    camera_questions, camera_target = _camera_texts(scene)
    yes_no += [YesNoQuestion(question, tag="camera") for question in camera_questions]
    yes_no.append(YesNoQuestion(vanilla_question(prompt), tag="overall"))

    explanations = [
        ExplanationQuery(f"Describe the {entity.name} in the video.", _sentence(text), tag="object")
        for entity, text in scene.subject_clauses
    ]
    if scene.conditions:
        target = " ".join(dict.fromkeys(_CONDITIONS[c][1] for c in scene.conditions))
        explanations.append(ExplanationQuery("Describe the time of day and weather in the video.", target, "time"))
    if scene.styles:
        target = " ".join(sentence for _, sentence in scene.styles)
        explanations.append(ExplanationQuery("Describe the visual style of the video.", target, tag="style"))
    if camera_target:
        explanations.append(ExplanationQuery("Describe how the camera moves.", camera_target, tag="camera"))
    if not scene.subject_clauses:
        explanations.insert(0, ExplanationQuery("Describe what the video shows.", _sentence(prompt), tag="overall"))
    return yes_no, explanations


def _physical_entities(scene: _Scene) -> list[_Entity]:
    ranked = sorted(scene.entities.values(), key=lambda e: not e.is_subject)
    return [e for e in ranked if e.category not in ("place", "clothing", "mass")][:_MAX_PHY_ENTITIES]


_PHY_BY_CATEGORY: dict[str, tuple[tuple[str, str], ...]] = {
    "human": (("{do} the {name} keep a consistent body and face across frames?", "shape"),
              ("{do} the {name} have natural anatomy, with the right number of arms, legs and fingers?", "anatomy")),
    "animal": (("{do} the {name} keep a consistent body across frames?", "shape"),
               ("{do} the {name} have natural anatomy, without extra or missing body parts?", "anatomy")),
    "structure": (("{do} the {name} keep {its} shape across frames?", "shape"),
                  ("{do} the {name} stay fixed in place?", "stability")),
    "object": (("{do} the {name} keep {its} shape across frames?", "shape"),),
}  # fmt: skip
_BOUNCING_VERBS = _words("bounce jump hop leap")
_WATER = _words("water lake sea ocean river pool pond")


def _contact_question(subject: _Entity, surface: _Entity) -> str:
    if surface.head in _WATER:
        return f"{subject.do()} the {subject.name} stay on the surface of the {surface.name}?"
    return f"{subject.do()} the {subject.name} stay on the {surface.name} without floating?"


_FALLING_CONDITIONS = {"rain": "Does the rain fall downward naturally?", "snow": "Does the snow fall naturally?"}


def _phy_questions(scene: _Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
    yes_no: list[YesNoQuestion] = []
    for entity in _physical_entities(scene):
        fill = {"do": entity.do(), "name": entity.name, "its": entity.its()}
        for template, tag in _PHY_BY_CATEGORY[entity.category]:
            yes_no.append(YesNoQuestion(template.format(**fill), tag=tag))
        permanence = f"{entity.do()} the {entity.name} persist without suddenly appearing, disappearing or multiplying?"
        yes_no.append(YesNoQuestion(permanence, tag="permanence"))
    bouncing = [a.subject for a in scene.actions if a.lemma in _BOUNCING_VERBS]
    for action in scene.actions:
        subject, surface = action.subject, action.prep_obj
        if action.lemma in _BOUNCING_VERBS and surface is not None and action.prep in _SURFACE_PREPS:
            question = (
                f"{subject.do()} the {subject.name} come back down to the {surface.name} after each {action.lemma}?"
            )
            yes_no.append(YesNoQuestion(question, tag="gravity"))
    for subject, prep, surface in scene.relations + [(a.subject, a.prep, a.prep_obj) for a in scene.actions]:
        if prep in _SURFACE_PREPS and surface is not None and subject not in bouncing:
            yes_no.append(YesNoQuestion(_contact_question(subject, surface), tag="contact"))
    for action in scene.actions:
        subject = action.subject
        question = f"{subject.do()} the {subject.name} move in a physically plausible way while {action.phrase()}?"
        yes_no.append(YesNoQuestion(question, tag="motion"))
    for condition in scene.conditions:
        kind = _singular(condition).removesuffix("ing").removesuffix("y").removesuffix("fall")
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
        action = next((a for a in scene.actions if a.subject is entity), None)
        surface = next(((p, o) for s_, p, o in scene.relations if s_ is entity and p in _SURFACE_PREPS), None)
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


def _vq_questions(scene: _Scene, prompt: str) -> tuple[list[YesNoQuestion], list[ExplanationQuery]]:
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


AspectWriter = Callable[["_Scene", str], tuple[list[YesNoQuestion], list[ExplanationQuery]]]
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
    scene = _parse_prompt(text)
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

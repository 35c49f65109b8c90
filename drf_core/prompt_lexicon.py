"""The rule decomposer's lexicon: word classes, prepositions, conditions, styles, camera moves.

Hand-written tables of the closed word classes a text-to-video prompt uses (determiners,
prepositions, particles, negations), of the words that decide a question's kind (colours,
materials, sizes, conditions, styles, camera moves), and of nouns by category (humans, animals,
clothing, places...) that choose the physics questions. Word forms (plurals, -ing forms, parts
of speech) come from `wordforms`, not from tables here.

Knows nothing about parsing or questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def word_set(text: str) -> set[str]:
    return set(text.split())


NUMBERS = {
    w: i + 1
    for i, w in enumerate(
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS = {i: w for w, i in NUMBERS.items()}
NUMBERS["a dozen"] = NUMBERS["dozen"] = 12
QUANTIFIERS = {
    "several": "several", "many": "many", "a few": "a few", "few": "a few", "a couple of": "two",
    "a pair of": "two", "a group of": "several", "a herd of": "several", "a flock of": "several",
    "a pack of": "several", "a school of": "several", "a bunch of": "several", "a pile of": "several",
    "a crowd of": "many", "lots of": "many", "a lot of": "many", "dozens of": "many", "numerous": "many",
    "a single": "one", "single": "one", "a lone": "one", "lone": "one",
}  # fmt: skip
DETERMINERS = word_set("a an the this that these those some any his her their its my your our")
AUXILIARIES = word_set("is are was were be being been has have had can will there it's do does did")
CONJUNCTIONS = word_set("and or but")
PRONOUNS = {"her": "female", "she": "female", "him": "male", "he": "male", "it": "thing", "them": "plural"}
COLORS = word_set(
    "red orange yellow green blue purple violet pink brown black white gray grey silver golden beige "
    "turquoise teal cyan magenta maroon navy crimson scarlet indigo lavender"
)
MATERIALS = {
    "wooden": "wood", "wood": "wood", "metal": "metal", "metallic": "metal", "glass": "glass", "stone": "stone",
    "plastic": "plastic", "gold": "gold", "steel": "steel", "iron": "iron", "brick": "brick", "marble": "marble",
    "paper": "paper", "leather": "leather", "concrete": "concrete", "ceramic": "ceramic", "porcelain": "porcelain",
    "crystal": "crystal", "velvet": "velvet", "cotton": "cotton", "wool": "wool", "woolen": "wool",
    "woollen": "wool", "copper": "copper", "bronze": "bronze", "rubber": "rubber", "cardboard": "cardboard",
    "silk": "silk", "denim": "denim", "clay": "clay", "straw": "straw", "bamboo": "bamboo", "chrome": "chrome",
    "granite": "granite", "ice": "ice", "wicker": "wicker", "lego": "LEGO bricks",
}  # fmt: skip
SIZES = word_set("big large small tiny huge giant little tall short enormous massive miniature long")
ATTRIBUTES = word_set(
    "old young elderly fluffy furry shiny wet dry happy sad smiling angry cute fat thin muscular ancient modern "
    "futuristic rusty broken empty full bright dark dirty clean colorful colourful transparent glowing spotted "
    "striped curly bald bearded sleepy playful majestic hairy abstract busy crowded calm"
)
# prepositions -> the phrase used in questions; spatial ones make "relation" questions
PREPOSITIONS = {
    "on top of": "on top of", "in front of": "in front of", "next to": "next to", "close to": "near",
    "out of": "out of", "inside of": "inside", "on": "on", "under": "under", "beside": "beside",
    "behind": "behind", "above": "above", "below": "below", "inside": "inside", "near": "near", "in": "in",
    "at": "at", "beneath": "beneath", "underneath": "underneath", "over": "over", "along": "along",
    "across": "across", "through": "through", "into": "into", "onto": "onto", "around": "around",
    "toward": "toward", "towards": "toward", "past": "past", "from": "from", "to": "to", "with": "with",
    "of": "of", "by": "by", "among": "among", "against": "against", "down": "down", "up": "up",
}  # fmt: skip
SPATIAL_PREPS = word_set("on in at under beside behind above below inside near beneath underneath") | {
    "on top of", "in front of", "next to",
}  # fmt: skip
MOTION_PREPS = word_set("along across through into onto over around toward past from to down up") | {"out of"}
SURFACE_PREPS = word_set("on onto along across") | {"on top of"}
VERB_LEMMAS = word_set(
    "run walk jump bounce drive fly swim dance play ride sit stand eat drink fall roll spin sing read write "
    "cook climb sleep smile laugh talk look pour melt burn float sail surf skate ski fight chase hold carry "
    "throw catch kick push pull open close wave paint type drift glide crash explode grow bloom rotate turn "
    "move race gallop hop crawl dive splash flow shine blow shake cross enter leave follow watch hug kiss jog "
    "bark chew sniff lick fetch sway flutter flap soar hover land sink rise drip spill leap dash stroll wander "
    "march sprint juggle knit sew draw strum drum sip bite pet feed wash brush stir chop slice bake fry grill "
    "build dig plant lift drop swing stretch bend bow kneel lie rest wait pose hide stare yawn cry shout "
    "perform practice collide shatter break slide tumble wobble wear graze hunt trot rush travel paddle "
    "row skateboard snowboard fish stop start get take put pick give turn switch blow light lean open close "
    "arrive depart approach reach grab toss wipe clean sweep mop scrub peel pour fill empty tap knock ring "
    "nod shrug blink wink frown glance point clap wag scratch sneeze cough breathe whisper scream chat argue "
    "flicker glow sparkle glitter twinkle flash blink ripple wave erupt collapse"
)
ING_NOUNS = word_set(
    "building ceiling evening morning clothing king ring string thing wing spring painting lighting sibling "
    "pudding wedding earring duckling dumpling icing railing sling viking nothing something everything "
    "anything ping swimming-pool stuffing frosting"
)
ADVERB_EXCEPTIONS = word_set(
    "family butterfly lily jelly belly ugly curly holy early fly ally rally bully italy only jolly friendly "
    "lonely silly hilly chilly woolly sly"
)
HUMANS = word_set(
    "man men woman women person people boy boys girl girls child children kid kids baby astronaut dancer chef "
    "doctor soldier knight king queen princess prince farmer pilot musician guitarist pianist singer student "
    "teacher worker officer policeman firefighter cowboy athlete player runner surfer skier skateboarder "
    "swimmer cyclist couple lady gentleman grandmother grandfather mother father wizard witch ninja samurai "
    "pirate scientist nurse ballerina actress actor businessman monk detective hiker climber"
)
FEMALE = word_set("woman women girl girls lady queen princess mother grandmother ballerina actress witch")
ANIMALS = word_set(
    "cat dog horse bird fish cow sheep pig chicken duck goose rabbit bunny mouse rat lion tiger bear panda "
    "elephant giraffe zebra monkey gorilla fox wolf deer owl eagle parrot penguin dolphin whale shark turtle "
    "frog snake lizard butterfly bee ant spider squirrel koala kangaroo camel goat donkey puppy kitten corgi "
    "retriever dragon unicorn dinosaur octopus crab jellyfish swan pigeon hamster raccoon otter seal"
)
STRUCTURES = word_set(
    "house lighthouse tower building castle bridge church temple skyscraper mountain hill tree cliff statue "
    "monument pyramid windmill barn cabin tent wall fence volcano palace skyline"
)
PLACES = word_set(
    "club room kitchen street road city forest beach ocean sea field park moon space desert river lake garden "
    "sky stage studio office classroom restaurant cafe bar market highway alley meadow jungle valley town "
    "village world landscape background scene universe galaxy planet earth mars underwater sunlight"
)
CLOTHING = word_set(
    "dress shirt suit coat jacket hat cap uniform hoodie sweater gown skirt scarf helmet boots shoes spacesuit "
    "armor costume robe kimono t-shirt jeans raincoat tuxedo"
)
MASS_NOUNS = word_set(
    "water sand grass smoke fire coffee tea milk juice wine beer soup rice lava mud dust steam space fur hair "
    "light music food traffic"
)
# time of day / weather words -> (yes/no question, sentence for explanation targets), and a tag
CONDITIONS: dict[str, tuple[str, str, str]] = {}
for _word in sorted(word_set("sunset sunrise dusk dawn twilight midnight noon")):
    CONDITIONS[_word] = (f"Does the scene take place at {_word}?", f"The scene takes place at {_word}.", "time")
for _word, _phrase in (("night", "at night"), ("nighttime", "at night"), ("daytime", "during the day"),
                       ("day", "during the day"), ("morning", "in the morning"), ("evening", "in the evening"),
                       ("afternoon", "in the afternoon"), ("golden hour", "during golden hour")):  # fmt: skip
    CONDITIONS[_word] = (f"Does the scene take place {_phrase}?", f"The scene takes place {_phrase}.", "time")
for _words_, _question, _sentence in (
    ("rain raining rainy rainfall", "Is it raining in the video?", "It is raining."),
    ("snow snowing snowy snowfall snowstorm blizzard", "Is it snowing in the video?", "It is snowing."),
    ("fog foggy mist misty", "Is the scene foggy?", "The scene is foggy."),
    ("storm stormy thunderstorm", "Is there a storm in the video?", "There is a storm."),
    ("sunny", "Is it sunny in the video?", "It is sunny."),
    ("cloudy overcast", "Is the sky cloudy?", "The sky is cloudy."),
    ("windy wind breeze", "Is it windy in the video?", "It is windy."),
):
    for _word in _words_.split():
        CONDITIONS[_word] = (_question, _sentence, "weather")
# style phrases -> (question, sentence)
STYLES: dict[str, tuple[str, str]] = {
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
for _word in sorted(word_set("watercolor watercolour oil pencil charcoal ink pastel acrylic")):
    _a = "an" if _word[0] in "aeiou" else "a"
    STYLES[_word] = (f"Does the video look like {_a} {_word} painting?", f"The video looks like {_a} {_word} painting.")
for _word in sorted(word_set("vintage retro cyberpunk steampunk surreal impressionist minimalist documentary noir")):
    STYLES[_word] = (f"Is the video in {_word} style?", f"The video is in {_word} style.")
CAMERA_KIND_NOUNS = word_set("video footage clip scene shot view close-up closeup")
STYLE_KIND_NOUNS = word_set(
    "painting drawing illustration sketch render rendering photo photograph picture image animation video "
    "footage clip scene shot view close-up"
)
# words the parser skips (adverbs without -ly, "style" after a style word)
ADVERBS = word_set(
    "together away back forward home outside upward downward upwards downwards alone again very style styled aesthetic"
)


@dataclass(frozen=True)
class CameraMove:
    """A camera move or shot type: its regex on the lowercase clause and the texts it writes."""

    kind: str  # one question per kind: a directed "pan left" wins over a bare "pans"
    pattern: str
    question: str  # may contain {1} (first group) and {subject}
    sentence: str
    moving: bool = True


CAMERA_MOVES: tuple[CameraMove, ...] = (
    CameraMove("pan", r"\bpan(?:s|ning|ned)?\s+(?:to\s+(?:the\s+)?)?(left|right)\b", "Does the camera pan to the {1}?",
               "The camera pans to the {1}."),
    CameraMove("pan", r"\bpan(?:s|ning|ned)?\b", "Does the camera pan across the scene?", "The camera pans."),
    CameraMove("tilt", r"\btilt(?:s|ing|ed)?\s+(up|down|upward|downward)\b", "Does the camera tilt {1}?",
               "The camera tilts {1}."),
    CameraMove("tilt", r"\btilt(?:s|ing|ed)?\b", "Does the camera tilt up or down?", "The camera tilts."),
    CameraMove("zoom", r"\bzoom(?:s|ing|ed)?\s+(in|out)\b", "Does the camera zoom {1}?", "The camera zooms {1}."),
    CameraMove("zoom", r"\bzoom(?:s|ing|ed)?\b", "Does the camera zoom?", "The camera zooms."),
    CameraMove("dolly", r"\b(?:dolly|dollies|dollying|push(?:es|ing)?)\s+(?:in|forward)\b",
               "Does the camera move forward toward the {subject}?", "The camera moves forward."),
    CameraMove("dolly", r"\b(?:dolly|dollies|dollying|pull(?:s|ing)?)\s+(?:out|back)\b",
               "Does the camera move backward away from the {subject}?", "The camera moves backward."),
    CameraMove("dolly", r"\bdolly\b", "Does the camera move smoothly through the scene?", "The camera dollies."),
    CameraMove("track", r"\btrack(?:s|ing|ed)?\b|\bfollow(?:s|ing|ed)?\b", "Does the camera follow the {subject}?",
               "The camera follows the {subject}."),
    CameraMove("orbit", r"\borbit(?:s|ing)?\b|\bcircl(?:es|ing) around\b|\barc shot\b",
               "Does the camera orbit around the {subject}?", "The camera orbits around the {subject}."),
    CameraMove("crane", r"\bcrane(?:s|ing)?\s+(up|down)\b|\bcrane shot\b", "Does the camera rise or descend smoothly?",
               "The camera cranes."),
    CameraMove("static", r"\bstatic\b|\bfixed camera\b|\blocked[- ]off\b|\bstill camera\b|\btripod\b",
               "Does the camera stay still?", "The camera stays still.", moving=False),
    CameraMove("handheld", r"\bhandheld\b|\bhand-held\b", "Does the video look like handheld camera footage?",
               "Handheld camera footage."),
    CameraMove("aerial", r"\bdrone\b|\baerial\b|\bbird'?s[- ]eye\b|\boverhead shot\b",
               "Is this an aerial shot from above?", "An aerial drone shot from above."),
    CameraMove("close-up", r"\bclose[- ]?up\b", "Is this a close-up shot?", "A close-up shot.", moving=False),
    CameraMove("wide", r"\bwide(?:[- ]angle)? shot\b|\bwide[- ]angle\b|\bestablishing shot\b", "Is this a wide shot?",
               "A wide shot.", moving=False),
    CameraMove("low-angle", r"\blow[- ]angle\b", "Is the shot taken from a low angle?", "A low-angle shot.",
               moving=False),
    CameraMove("pov", r"\bfirst[- ]person\b|\bpov\b", "Is the video filmed from a first-person view?",
               "A first-person view."),
    CameraMove("time-lapse", r"\btime[- ]?lapse\b", "Is the video a time-lapse?", "A time-lapse video.",
               moving=False),
    CameraMove("slow-motion", r"\bslow[- ]?(?:motion|mo)\b", "Is the video in slow motion?",
               "The video is in slow motion.", moving=False),
)  # fmt: skip
# a clause about the camera: it starts with the camera or a shot, or the camera is its subject
CAMERA_CLAUSE = re.compile(
    r"^(?:the |a |an )?(?:\w+ ){0,2}(?:camera|shot|angle|pov|close[- ]?up)\b|"
    r"^(?:an? )?(?:drone|aerial|overhead)(?: \w+)? (?:shot|view|footage)\b|\bthe camera (?:\w+ly )?\w+s\b"
)
LIGHTING = re.compile(r"\b((?:[a-z]+ )?[a-z]+) (lighting|light|lights)\b|\b(moonlight|candlelight|backlit)\b")
PREFIX = re.compile(r"^(?:an? |the )?(?P<mods>(?:[\w'-]+ ){0,3}?)(?P<kind>[\w-]+) of (?P<rest>.+)$")
TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# clause boundaries; a boundary named in SEQUENCE_SPLIT also starts the next step of a sequence
CLAUSE_SPLIT = re.compile(r"([,;:.!?]+|\bwhile\b|\band then\b|\bthen\b|\bafter that\b|\bafterwards\b|\bfinally\b)")
SEQUENCE_SPLIT = frozenset({"and then", "then", "after that", "afterwards", "finally"})
MAX_PHY_ENTITIES = 3

# ---- negation, particles, on-screen text ------------------------------------------------------

# words that make the next noun phrase absent ("no people", "without a hat", "neither ... wears X")
NEGATORS = word_set("no without neither nor none nobody")
# negate the clause's verb ("the dog does not bark", "never stops")
VERB_NEGATORS = word_set("not never n't")
# "neither of them", "none of them": subjects that negate what they wear / have
NEGATIVE_SUBJECTS = ("neither of them", "none of them", "neither of the", "none of the", "no one", "nobody")
# verb particles: with a verb they are part of it ("lies down", "drives away"), never a thing
PARTICLES = word_set(
    "off up down away out back over around on in along aside apart together forward backward outside indoors "
    "outdoors upstairs downstairs home"
)
# verb + particle pairs that keep the particle when an object follows ("turns off the lamp")
TRANSITIVE_PHRASAL = {
    ("turn", "off"), ("turn", "on"), ("turn", "up"), ("turn", "down"), ("switch", "on"), ("switch", "off"),
    ("pick", "up"), ("put", "down"), ("put", "on"), ("put", "away"), ("put", "out"), ("take", "off"),
    ("take", "out"), ("blow", "out"), ("light", "up"), ("hold", "up"), ("lift", "up"), ("set", "down"),
    ("throw", "away"), ("give", "away"), ("wipe", "off"), ("wash", "off"), ("shake", "off"), ("fill", "up"),
    ("clean", "up"), ("roll", "up"), ("tear", "down"), ("knock", "over"), ("knock", "down"), ("pull", "out"),
    ("pull", "up"), ("try", "on"), ("zip", "up"), ("write", "down"), ("cut", "down"), ("pour", "out"),
    ("hand", "over"), ("bring", "back"), ("give", "back"), ("open", "up"), ("close", "up"), ("pick", "out"),
}  # fmt: skip
# verbs that show quoted text: the owner displays it ("a sign that reads 'OPEN'"); the verb is not an action
TEXT_SHOWING_VERBS = word_set(
    "read reads reading say says saying spell spells spelling display displays displaying show shows showing "
    "flash flashes flashing"
)
# verbs that make quoted text: the subject writes it ("a child writes 'HELLO'"); the verb stays an action
TEXT_WRITING_VERBS = word_set("write writes paint paints type types draw draws spray sprays carve carves print prints")
TEXT_NOUNS = word_set("text word words letters sign title caption message label")
RELATIVE_PRONOUNS = word_set("that which who whose")
BODY_PARTS = word_set(
    "hand hands arm arms head face eye eyes leg legs foot feet tail wing wings paw paws mouth nose ear ears "
    "finger fingers shoulder shoulders lips hair fist fists knee knees"
)
# multi-word spatial prepositions of attribute-binding prompts ("a red cube to the left of a blue sphere")
SIDE_PREPOSITIONS = {
    "to the left of": "to the left of", "to the right of": "to the right of", "on the left of": "to the left of",
    "on the right of": "to the right of", "on the left side of": "to the left of",
    "on the right side of": "to the right of", "left of": "to the left of", "right of": "to the right of",
    "on top of": "on top of", "in front of": "in front of", "next to": "next to", "in between": "between",
    "away from": "away from", "off of": "off",
}  # fmt: skip
PREPOSITIONS.update(SIDE_PREPOSITIONS)
PREPOSITIONS.update({"off": "off", "between": "between", "out": "out of", "within": "inside", "during": "during",
                     "amid": "amid", "beyond": "beyond", "throughout": "throughout"})  # fmt: skip
SPATIAL_PREPS |= {"to the left of", "to the right of", "between"}
MOTION_PREPS |= {"off", "away from"}
# words no thing in a prompt is named by (a question "Is there an off?" is nonsense)
CLOSED_CLASS = (
    DETERMINERS
    | AUXILIARIES
    | CONJUNCTIONS
    | set(PRONOUNS)
    | NEGATORS
    | VERB_NEGATORS
    | PARTICLES
    | {p for p in PREPOSITIONS if " " not in p}
    | RELATIVE_PRONOUNS
    | word_set("then first next finally any")
)

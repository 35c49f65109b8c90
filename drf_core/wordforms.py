"""English word forms for the question writers: verb forms, noun number, parts of speech, articles.

A thin layer over `lemminflect` (a dictionary of English word forms with their parts of speech,
bundled with the package: nothing is downloaded). It answers "what is the -ing form of lie",
"what is the singular of wolves", "can 'flickers' be a verb"; the few overrides below are forms
where the dictionary's first answer is not the one a video prompt means ("leaves" -> "leaf").

Knows nothing about prompts, questions or models.
"""

from __future__ import annotations

from functools import lru_cache

import lemminflect

# the dictionary offers both readings; a video prompt means these
_SINGULAR_OVERRIDES = {"people": "person", "leaves": "leaf", "dice": "die", "lives": "life", "staves": "staff"}
# nouns that are plural in form and meaning but have no singular a question could use
_PLURAL_ONLY = frozenset(
    "jeans pants trousers shorts clothes glasses sunglasses goggles scissors pajamas headphones earphones "
    "binoculars stairs cattle police".split()
)
_UNCOUNTABLE_S = frozenset("news chess physics mathematics series species lens gas canvas bus glass dress".split())


@lru_cache(maxsize=4096)
def parts_of_speech(word: str) -> frozenset[str]:
    """The universal POS tags the dictionary knows for `word` (NOUN, VERB, ADJ, ADV...); empty if unknown."""
    return frozenset(lemminflect.getAllLemmas(word.lower()))


def can_be(word: str, pos: str) -> bool:
    return pos in parts_of_speech(word)


@lru_cache(maxsize=4096)
def verb_lemma(word: str) -> str:
    """The verb lemma of `word` ("flickers" -> "flicker", "lying" -> "lie"), or "" if it is no verb form."""
    lemmas = lemminflect.getAllLemmas(word.lower()).get("VERB")
    return lemmas[0] if lemmas else ""


def ing_form(lemma: str) -> str:
    """The present participle: run -> running, lie -> lying, flicker -> flickering."""
    forms = lemminflect.getInflection(lemma, "VBG")
    return forms[0] if forms else lemma + "ing"


def third_person(lemma: str) -> str:
    """The third person singular present: run -> runs, watch -> watches, fly -> flies."""
    forms = lemminflect.getInflection(lemma, "VBZ")
    return forms[0] if forms else lemma + "s"


@lru_cache(maxsize=4096)
def singular(noun: str) -> str:
    """The singular of a noun (plural-only nouns and nouns already singular stay as they are)."""
    word = noun.lower()
    if word in _SINGULAR_OVERRIDES:
        return _SINGULAR_OVERRIDES[word]
    if word in _PLURAL_ONLY or word in _UNCOUNTABLE_S:
        return word
    lemmas = lemminflect.getLemma(word, "NOUN", lemmatize_oov=False)
    if lemmas and lemmas[0]:
        return lemmas[0]
    if word.endswith(("ss", "us", "is")) or not word.endswith("s"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    return word[:-1]


def plural(noun: str) -> str:
    """The plural of a singular noun: cat -> cats, person -> people, child -> children."""
    if noun in _PLURAL_ONLY or noun == "people":
        return noun
    if noun == "person":
        return "people"
    forms = lemminflect.getInflection(noun, "NNS")
    return forms[0] if forms else noun + "s"


def is_plural(noun: str) -> bool:
    """True for a plural noun form: apples, children, people, jeans."""
    word = noun.lower()
    return word in _PLURAL_ONLY or word == "people" or singular(word) != word


def article(word: str) -> str:
    """ "a" or "an" before `word` (by sound for the common exceptions: an hour, a unicorn, a one-way sign)."""
    lower = word.lower()
    if lower.startswith(("hour", "honest", "heir")):
        return "an"
    if lower.startswith(("uni", "use", "usu", "eu", "one", "ewe")):
        return "a"
    return "an" if lower[:1] in "aeiou" else "a"


def sentence(text: str) -> str:
    """`text` as one sentence: capitalised, one final full stop."""
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "." if text else ""

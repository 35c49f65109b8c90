"""QuestionSet: JSON round trips, strict validation with field paths, fingerprints, files, edits."""

from __future__ import annotations

import copy
import json

import pytest

from drf_core.errors import DRFInputError
from drf_core.questions import (
    DEFAULT_ASPECTS,
    Aspect,
    ExplanationQuery,
    QuestionSet,
    YesNoQuestion,
)


def make_set() -> QuestionSet:
    return QuestionSet(
        prompt="two red apples on a wooden table — café ☕",
        aspects=[
            Aspect(
                "TA",
                "alignment",
                0.5,
                [YesNoQuestion("Are there exactly two apples?", "yes", "count"), YesNoQuestion("Are the apples red?")],
                [ExplanationQuery("Describe the apples in the video.", "Two red apples on a wooden table.", "object")],
            ),
            Aspect("PHY", "physics", 0.25, [YesNoQuestion("Do the apples float?", "no", "contact", 2.0)], []),
            Aspect("VQ", "quality", 0.25, [YesNoQuestion("Is there flicker?", "no", "flicker")], []),
        ],
    )


def test_default_aspects_are_ta_phy_vq_with_documented_weights():
    assert [(a.name, a.weight) for a in DEFAULT_ASPECTS] == [("TA", 0.5), ("PHY", 0.25), ("VQ", 0.25)]
    assert all(a.description for a in DEFAULT_ASPECTS)


def test_json_round_trip_is_equal_and_readable():
    original = make_set()
    text = original.to_json()
    assert QuestionSet.from_json(text) == original
    assert QuestionSet.from_dict(json.loads(text)) == original
    # readable: two-space indents, UTF-8 kept as is, fixed key order
    assert '\n  "prompt": "two red apples on a wooden table — café ☕"' in text
    assert list(json.loads(text)) == ["prompt", "version", "aspects"]
    assert list(json.loads(text)["aspects"][0]) == ["name", "description", "weight", "yes_no", "explanations"]
    assert list(json.loads(text)["aspects"][0]["yes_no"][0]) == ["question", "expected", "tag", "weight"]
    assert text.endswith("}\n")


def test_hand_edited_json_with_omitted_optional_fields_loads_with_defaults():
    text = """{
      "prompt": "a dog runs",
      "aspects": [
        {"name": "TA", "weight": 1, "yes_no": [{"question": "Is there a dog?"}]},
        {"name": "Brand", "explanations": [{"question": "Describe the logo.", "target": "A red logo."}]}
      ]
    }"""
    loaded = QuestionSet.from_json(text)
    assert loaded.version == 1
    ta, brand = loaded.aspects
    assert ta.yes_no == [YesNoQuestion("Is there a dog?", "yes", "", 1.0)]
    assert isinstance(ta.weight, float) and ta.weight == 1.0
    assert ta.explanations == [] and ta.description == ""
    assert brand.weight == 1.0 and brand.yes_no == []
    assert brand.explanations == [ExplanationQuery("Describe the logo.", "A red logo.", "", 1.0)]


def _bad(mutate) -> dict:
    data = make_set().to_dict()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["aspects"][1]["yes_no"][0].update(expected="maybe"),
            'aspects[1].yes_no[0].expected: must be "yes" or "no", got "maybe"',
        ),
        (
            lambda d: d["aspects"][0]["yes_no"][1].update(expected="Yes"),
            'aspects[0].yes_no[1].expected: must be "yes" or "no", got "Yes"',
        ),
        (
            lambda d: d["aspects"][0]["yes_no"][0].update(expcted="no"),
            "aspects[0].yes_no[0]: unknown field(s) 'expcted' (did you mean 'expected'?)",
        ),
        (lambda d: d.update(promt="x"), "the question set: unknown field(s) 'promt' (did you mean 'prompt'?)"),
        (lambda d: d["aspects"][2].update(wieght=1.0), "aspects[2]: unknown field(s) 'wieght'"),
        (lambda d: d.update(prompt="  "), "prompt: is empty"),
        (lambda d: d["aspects"][0]["yes_no"][1].update(question=" "), "aspects[0].yes_no[1].question: is empty"),
        (
            lambda d: d["aspects"][0]["explanations"][0].update(question=""),
            "aspects[0].explanations[0].question: is empty",
        ),
        (lambda d: d["aspects"][2].update(name="TA"), "aspects[2].name: duplicate aspect name 'TA' (also aspects[0])"),
        (lambda d: d["aspects"][1].update(name=""), "aspects[1].name: is empty"),
        (lambda d: d["aspects"][1].update(weight=-0.5), "aspects[1].weight: must not be negative, got -0.5"),
        (lambda d: d["aspects"][1]["yes_no"][0].update(weight=-1), "aspects[1].yes_no[0].weight: must not be negative"),
        (lambda d: d["aspects"][0].update(weight=float("nan")), "aspects[0].weight: must be a finite number"),
        (lambda d: d["aspects"][2].update(yes_no=[]), "aspects[2]: aspect 'VQ' has no questions"),
        (
            lambda d: d["aspects"][0]["explanations"][0].update(target=" "),
            "aspects[0].explanations[0].target: is empty",
        ),
        (lambda d: [a.update(weight=0.0) for a in d["aspects"]], "aspects: every aspect weight is 0"),
        (lambda d: d.update(aspects=[]), "aspects: is empty"),
        (lambda d: d["aspects"][0].update(weight="high"), "aspects[0].weight: expected a number, got a string"),
        (lambda d: d["aspects"][0].update(weight=True), "aspects[0].weight: expected a number, got true/false"),
        (lambda d: d["aspects"][0].update(yes_no={"q": 1}), "aspects[0].yes_no: expected a list [...], got an object"),
        (lambda d: d["aspects"][0]["yes_no"][0].pop("question"), "aspects[0].yes_no[0].question: missing"),
        (lambda d: d["aspects"][0]["explanations"][0].pop("target"), "aspects[0].explanations[0].target: missing"),
        (lambda d: d["aspects"][1]["yes_no"].append("Is it?"), "aspects[1].yes_no[1]: expected an object"),
        (lambda d: d.update(version=2), "version: must be 1"),
    ],
)
def test_invalid_question_sets_name_the_field(mutate, message):
    with pytest.raises(DRFInputError) as error:
        QuestionSet.from_dict(_bad(mutate))
    assert message in str(error.value)


def test_source_prefix_and_top_level_type():
    with pytest.raises(DRFInputError, match=r"^q\.json: the question set: expected an object \{\.\.\.\}, got a list"):
        QuestionSet.from_dict([1, 2], source="q.json")


def test_invalid_json_reports_line_and_column():
    text = '{\n  "prompt": "a dog",\n  "aspects": [\n    {"name": "TA" "weight": 1}\n  ]\n}'
    with pytest.raises(DRFInputError, match=r"not valid JSON at line 4, column 19: Expecting ',' delimiter"):
        QuestionSet.from_json(text)


def test_duplicate_json_keys_are_errors_not_silently_merged():
    text = '{"prompt": "a", "prompt": "b", "aspects": []}'
    with pytest.raises(DRFInputError, match="duplicate key 'prompt'"):
        QuestionSet.from_json(text)


def test_validate_catches_problems_in_sets_built_in_code():
    bad = make_set()
    bad.aspects[0].yes_no[0].expected = "maybe"  # type: ignore[assignment]
    with pytest.raises(DRFInputError, match=r"aspects\[0\]\.yes_no\[0\]\.expected"):
        bad.validate()
    with pytest.raises(DRFInputError):
        bad.save("/nonexistent-never-written.json")


def test_fingerprint_is_stable_and_sensitive_to_every_edit():
    base = make_set()
    fingerprint = base.fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert make_set().fingerprint() == fingerprint
    # key order of the input and int-vs-float weights do not matter
    reordered = json.loads(base.to_json())
    reordered = {"aspects": reordered["aspects"], "version": 1, "prompt": reordered["prompt"]}
    reordered["aspects"][0]["weight"] = 0.5
    reordered["aspects"][0]["yes_no"][0] = {"weight": 1, "tag": "count", "expected": "yes",
                                            "question": "Are there exactly two apples?"}  # fmt: skip
    assert QuestionSet.from_dict(reordered).fingerprint() == fingerprint

    edits = [
        lambda s: setattr(s, "prompt", s.prompt + "!"),
        lambda s: setattr(s.aspects[0].yes_no[0], "question", "Are there exactly three apples?"),
        lambda s: setattr(s.aspects[0].yes_no[0], "expected", "no"),
        lambda s: setattr(s.aspects[0].yes_no[0], "tag", "object"),
        lambda s: setattr(s.aspects[0].yes_no[0], "weight", 1.5),
        lambda s: setattr(s.aspects[0].explanations[0], "target", "Two apples."),
        lambda s: setattr(s.aspects[1], "weight", 0.3),
        lambda s: setattr(s.aspects[1], "description", "other"),
        lambda s: s.aspects.reverse(),
        lambda s: s.aspects[0].yes_no.reverse(),
    ]
    seen = {fingerprint}
    for edit in edits:
        edited = make_set()
        edit(edited)
        seen.add(edited.fingerprint())
    assert len(seen) == len(edits) + 1


def test_save_and_load_files(tmp_path):
    path = tmp_path / "sub" / "questions.json"
    original = make_set()
    assert original.save(path) == path
    assert path.read_text(encoding="utf-8") == original.to_json()
    assert QuestionSet.load(path) == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["questions.json"]  # no temp file left


def test_failed_save_leaves_the_old_file_untouched(tmp_path):
    path = tmp_path / "questions.json"
    make_set().save(path)
    before = path.read_bytes()
    broken = make_set()
    broken.aspects[2].yes_no = []
    with pytest.raises(DRFInputError, match="has no questions"):
        broken.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["questions.json"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DRFInputError, match="does not exist"):
        QuestionSet.load(tmp_path / "missing.json")
    path = tmp_path / "bad.json"
    data = make_set().to_dict()
    data["aspects"][0]["yes_no"][0]["expected"] = "maybe"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with pytest.raises(DRFInputError, match=r"bad\.json: aspects\[0\]\.yes_no\[0\]\.expected"):
        QuestionSet.load(path)
    path.write_text("{\n  oops\n}", encoding="utf-8")
    with pytest.raises(DRFInputError, match=r"bad\.json: not valid JSON at line 2, column 3"):
        QuestionSet.load(path)


def test_counts_and_iteration_in_file_order():
    qs = make_set()
    assert qs.num_questions() == 5 and qs.num_yes_no() == 4 and qs.num_explanations() == 1
    assert [(a.name, q.question) for a, q in qs.iter_yes_no()] == [
        ("TA", "Are there exactly two apples?"),
        ("TA", "Are the apples red?"),
        ("PHY", "Do the apples float?"),
        ("VQ", "Is there flicker?"),
    ]
    assert [(a.name, q.target) for a, q in qs.iter_explanations()] == [("TA", "Two red apples on a wooden table.")]
    assert qs.aspect("PHY") is qs.aspects[1]
    with pytest.raises(DRFInputError, match="no aspect named 'XX'; this question set has: TA, PHY, VQ"):
        qs.aspect("XX")


def test_with_weights_returns_a_validated_copy():
    qs = make_set()
    snapshot = copy.deepcopy(qs)
    reweighted = qs.with_weights({"PHY": 1.0, "VQ": 0})
    assert [a.weight for a in reweighted.aspects] == [0.5, 1.0, 0.0]
    assert qs == snapshot  # unchanged
    assert reweighted.normalized_weights() == pytest.approx({"TA": 1 / 3, "PHY": 2 / 3, "VQ": 0.0})
    with pytest.raises(DRFInputError, match=r"unknown aspect\(s\) \['XX'\]"):
        qs.with_weights({"XX": 1.0})
    with pytest.raises(DRFInputError, match="must not be negative"):
        qs.with_weights({"TA": -1.0})
    with pytest.raises(DRFInputError, match="every aspect weight is 0"):
        qs.with_weights({"TA": 0, "PHY": 0, "VQ": 0})


def test_merge_adds_new_aspects_and_only_new_questions():
    qs = make_set()
    extra = QuestionSet(
        "ignored",
        [
            Aspect("TA", "other", 9.0, [YesNoQuestion("  are the APPLES red? "), YesNoQuestion("Is it day?")], []),
            Aspect("BRAND", "logo", 0.1, [YesNoQuestion("Is the logo visible?")], []),
        ],
    )
    merged = qs.merge(extra)
    assert merged.prompt == qs.prompt
    assert merged.aspect_names() == ["TA", "PHY", "VQ", "BRAND"]
    ta = merged.aspect("TA")
    assert ta.weight == 0.5 and ta.description == "alignment"
    assert [q.question for q in ta.yes_no] == ["Are there exactly two apples?", "Are the apples red?", "Is it day?"]
    assert merged.aspect("BRAND").weight == 0.1
    assert qs.aspect_names() == ["TA", "PHY", "VQ"]  # unchanged

"""Prompt decomposition: the rule-based questions, Vanilla-DRF, and the language-model path with repair/fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drf_core.decompose import (
    _LM_EXAMPLE,
    DECOMPOSERS,
    LM_INSTRUCTION_TEMPLATE,
    LM_SYSTEM_PROMPT,
    CausalLMChat,
    build_lm_instruction,
    decompose,
    resolve_aspects,
)
from drf_core.errors import DRFInputError, ModelFolderError
from drf_core.questions import AspectSpec, QuestionSet

APPLES = "two red apples on a wooden table, the camera slowly pans left"
FALLBACK_MESSAGE = "using the rule-based decomposer instead"


def yes_no(qs: QuestionSet, aspect: str) -> dict[str, tuple[str, str]]:
    """question -> (tag, expected)"""
    return {q.question: (q.tag, q.expected) for q in qs.aspect(aspect).yes_no}


def explanations(qs: QuestionSet, aspect: str) -> dict[str, str]:
    return {q.question: q.target for q in qs.aspect(aspect).explanations}


# ---- rules -------------------------------------------------------------------------------------


def test_apples_prompt_gives_every_required_question():
    qs = decompose(APPLES)
    assert [(a.name, a.weight) for a in qs.aspects] == [("TA", 0.5), ("PHY", 0.25), ("VQ", 0.25)]
    ta = yes_no(qs, "TA")
    required = {
        "Are there apples?": "object",
        "Are there exactly two apples?": "count",
        "Are the apples red?": "color",
        "Is there a table?": "object",
        "Is the table made of wood?": "material",
        "Are the apples on the table?": "relation",
        "Does the camera pan to the left?": "camera",
    }
    for question, tag in required.items():
        assert ta.get(question) == (tag, "yes"), question
    assert explanations(qs, "TA") == {
        "Describe the apples in the video.": "Two red apples on a wooden table.",
        "Describe how the camera moves.": "The camera slowly pans left.",
    }
    phy = yes_no(qs, "PHY")
    assert phy["Do the apples keep their shape across frames?"] == ("shape", "yes")
    assert phy["Do the apples stay on the table without floating?"] == ("contact", "yes")
    assert ("permanence", "yes") in phy.values()
    assert ("contact", "no") in phy.values()  # a question a faithful video answers "no"
    assert explanations(qs, "PHY")  # PHY has an explanation too
    vq = yes_no(qs, "VQ")
    assert vq["Is the video sharp and free of artifacts?"] == ("sharpness", "yes")
    assert vq["Is the video free of flicker between frames?"] == ("flicker", "yes")
    assert any(expected == "no" for _, expected in vq.values())
    assert "two red apples on a wooden table" in next(iter(explanations(qs, "VQ").values()))
    # nothing the prompt does not say: no size, action, style or weather questions
    assert not {tag for tag, _ in ta.values()} & {"size", "action", "style", "weather", "time"}


def test_rules_are_deterministic_across_calls_and_hash_seeds():
    prompts = [APPLES, "a woman in a yellow dress walking in the rain, the camera tracks her"]
    assert decompose(prompts[0]).to_json() == decompose(prompts[0]).to_json()
    script = (
        "import json, sys; from drf_core.decompose import decompose; "
        "print(json.dumps([decompose(p).to_dict() for p in json.loads(sys.argv[1])]))"
    )
    root = Path(__file__).resolve().parents[1]
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        result = subprocess.run(
            [sys.executable, "-c", script, json.dumps(prompts)], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]) == [decompose(p).to_dict() for p in prompts]


VARIED = {
    "a cat playing piano in a jazz club, cinematic lighting": (
        ["cat", "piano", "jazz club"],
        {"Is the cat playing the piano?": "action", "Is the cat in the jazz club?": "relation",
         "Does the video have cinematic lighting?": "lighting"},
    ),
    "a red car drives along a coastal road at sunset, drone shot": (
        ["car", "coastal road"],
        {"Is the car red?": "color", "Is the car driving along the coastal road?": "action",
         "Does the scene take place at sunset?": "time", "Is this an aerial shot from above?": "camera"},
    ),
    "an astronaut riding a horse on the moon": (
        ["astronaut", "horse", "moon"],
        {"Is there an astronaut?": "object", "Is the astronaut riding the horse?": "action",
         "Is the astronaut on the moon?": "relation"},
    ),
    "three blue balls bounce on a glass floor": (
        ["balls", "floor"],
        {"Are there exactly three balls?": "count", "Are the balls blue?": "color",
         "Is the floor made of glass?": "material", "Are the balls bouncing on the floor?": "action"},
    ),
    "a woman in a yellow dress walking in the rain, the camera tracks her": (
        ["woman", "dress"],
        {"Is the woman wearing a dress?": "attribute", "Is the dress yellow?": "color",
         "Is the woman walking in the rain?": "action", "Is it raining in the video?": "weather",
         "Does the camera follow the woman?": "camera"},
    ),
    "a watercolor painting of a lighthouse": (
        ["lighthouse"],
        {"Is there a lighthouse?": "object", "Does the video look like a watercolor painting?": "style"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("prompt", list(VARIED))
def test_varied_prompts_give_tailored_questions_in_every_aspect(prompt):
    subjects, required = VARIED[prompt]
    qs = decompose(prompt)
    assert QuestionSet.from_json(qs.to_json()) == qs
    for aspect in qs.aspects:
        assert aspect.yes_no and aspect.explanations, aspect.name
        texts = [q.question.casefold() for q in aspect.yes_no] + [q.question.casefold() for q in aspect.explanations]
        assert len(texts) == len(set(texts)), f"duplicate questions in {aspect.name}"
    ta_text = " ".join(yes_no(qs, "TA"))
    for subject in subjects:
        assert f" {subject}" in ta_text, subject
    for question, tag in required.items():
        assert yes_no(qs, "TA").get(question) == (tag, "yes"), question
    main = subjects[0]
    assert any(main in question for question in yes_no(qs, "PHY")), "PHY questions should name the main subject"
    assert any(main in question for question in yes_no(qs, "VQ")), "VQ composition should name the main subject"
    assert any(main in question for question in explanations(qs, "TA"))


def test_tailored_physics_for_actions_and_bounces():
    balls = yes_no(decompose("three blue balls bounce on a glass floor"), "PHY")
    assert balls["Do the balls come back down to the floor after each bounce?"] == ("gravity", "yes")
    assert "Do the balls stay on the floor without floating?" not in balls  # they bounce, they leave the floor
    car = yes_no(decompose("a red car drives along a coastal road at sunset, drone shot"), "PHY")
    assert car["Does the car stay on the coastal road without floating?"] == ("contact", "yes")
    assert car["Does the car move in a physically plausible way while driving along the coastal road?"][0] == "motion"
    assert car["Does the scene keep a consistent 3D layout as the camera moves?"] == ("3d", "yes")
    woman = yes_no(decompose("a woman walking in the rain"), "PHY")
    assert (
        woman["Does the woman have natural anatomy, with the right number of arms, legs and fingers?"][0] == "anatomy"
    )
    assert "Does the rain fall downward naturally?" in woman


@pytest.mark.parametrize(
    ("prompt", "question"),
    [
        ("a dog runs", "Is the dog running?"),
        ("two dogs run", "Are the dogs running?"),
        ("a woman walking", "Is the woman walking?"),
        ("a running dog", "Is the dog running?"),
        ("an owl", "Is there an owl?"),
        ("3 cats sleep", "Are there exactly three cats?"),
        ("several birds fly over the sea", "Are there several birds?"),
        ("many leaves", "Are there many leaves?"),
        ("a couple of dogs", "Are there exactly two dogs?"),
        ("one apple", "Is there exactly one apple?"),
        ("a huge old ship", "Is the ship huge?"),
        ("a huge old ship", "Is the ship old?"),
        ("a metal robot", "Is the robot made of metal?"),
        ("a cat under a table", "Is the cat under the table?"),
        ("a lamp next to a bed", "Is the lamp next to the bed?"),
        ("a lamp beside a bed", "Is the lamp beside the bed?"),
        ("a dog in front of a house", "Is the dog in front of the house?"),
        ("a man behind a car", "Is the man behind the car?"),
        ("a bird above a lake", "Is the bird above the lake?"),
        ("a lamp below a shelf", "Is the lamp below the shelf?"),
        ("a ball inside a box", "Is the ball inside the box?"),
        ("a bench near a tree", "Is the bench near the tree?"),
        ("a vase on top of a piano", "Is the vase on top of the piano?"),
        ("a cup of coffee on a desk next to a laptop", "Is the cup next to the laptop?"),
        ("a girl with a red umbrella", "Does the girl have an umbrella?"),
        ("a city, pan right", "Does the camera pan to the right?"),
        ("a car, tilt down", "Does the camera tilt down?"),
        ("a city, zoom out", "Does the camera zoom out?"),
        ("a dog, dolly in", "Does the camera move forward toward the dog?"),
        ("tracking shot of a runner", "Does the camera follow the runner?"),
        ("a statue, the camera orbits around it", "Does the camera orbit around the statue?"),
        ("a vase, static camera", "Does the camera stay still?"),
        ("the camera zooms in on a cat sleeping under a table", "Is the cat sleeping under the table?"),
        ("a dog chases two foxes, the camera follows the fox", "Does the camera follow the foxes?"),
        ("a dog chases the children, the camera tracks the child", "Does the camera follow the children?"),
        ("a glass on a table", "Is there a glass?"),
        ("a bus drives through the city", "Is the bus driving through the city?"),
        ("berries in a bowl", "Are the berries in the bowl?"),
        ("a dog, anime style", "Is the video in anime style?"),
        ("a black and white photo of a dog", "Is the video in black and white?"),
        ("a photorealistic cat", "Does the video look photorealistic?"),
        ("an owl at night", "Does the scene take place at night?"),
        ("people walk in the snow", "Is it snowing in the video?"),
        ("a foggy harbor", "Is the scene foggy?"),
    ],
)
def test_rule_patterns(prompt, question):
    assert question in yes_no(decompose(prompt), "TA")


@pytest.mark.parametrize("method", ["rules", "llm"])
def test_prompt_is_kept_verbatim_and_questions_use_normalised_text(method):
    prompt = " two red apples\non a  wooden table, the camera slowly pans left  "
    qs = decompose(prompt, method=method, chat=lambda text: "no json")
    assert qs.prompt == prompt
    assert qs.aspects == decompose(APPLES).aspects


def test_prompt_without_known_words_still_gets_every_aspect():
    qs = decompose("xyzzy")
    ta = yes_no(qs, "TA")
    assert ta['Does this video show: "xyzzy"?'] == ("overall", "yes")
    assert all(aspect.num_questions() > 0 for aspect in qs.aspects)


def test_aspect_choices_and_custom_aspects():
    only_ta = decompose(APPLES, aspects={"TA": 1.0})
    assert only_ta.aspect_names() == ["TA"] and only_ta.aspects[0].weight == 1.0
    assert decompose(APPLES, aspects=["VQ", "TA"]).aspect_names() == ["VQ", "TA"]
    custom = decompose(APPLES, aspects=[*resolve_aspects(None), AspectSpec("BRAND", "The apples look glossy.", 0.1)])
    brand = custom.aspect("BRAND")
    assert brand.weight == 0.1
    assert [q.question for q in brand.yes_no] == ['Does the video meet this requirement: "The apples look glossy."?']
    with pytest.raises(DRFInputError, match="aspect 'BRAND' has no description"):
        decompose(APPLES, aspects={"TA": 0.5, "BRAND": 0.5})
    with pytest.raises(DRFInputError, match="every weight is 0"):
        decompose(APPLES, aspects={"TA": 0.0})
    with pytest.raises(DRFInputError, match="weight must be a finite number >= 0"):
        decompose(APPLES, aspects={"TA": -1.0})
    with pytest.raises(DRFInputError, match="listed twice"):
        decompose(APPLES, aspects=["TA", "TA"])
    assert decompose(APPLES, aspects="PHY").aspect_names() == ["PHY"]


def test_vanilla_preset_is_one_alignment_question():
    qs = decompose("  a dog   runs ", method="vanilla")
    assert qs.prompt == "  a dog   runs "  # verbatim: the trainer matches question sets to prompts by it
    assert qs.to_dict()["aspects"] == [
        {
            "name": "TA",
            "description": qs.aspects[0].description,
            "weight": 1.0,
            "yes_no": [{"question": 'Does this video show: "a dog runs"?', "expected": "yes", "tag": "overall",
                        "weight": 1.0}],
            "explanations": [],
        }
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["rules", "llm", "vanilla"])
@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_an_error(method, prompt):
    with pytest.raises(DRFInputError, match="the prompt is empty; "):
        decompose(prompt, method=method, chat=lambda text: "{}")


def test_registry_names_and_unknown_method():
    assert DECOMPOSERS.names() == ["vanilla", "rules", "llm"]
    with pytest.raises(DRFInputError, match="unknown decomposer 'gpt'; choose one of: 'vanilla', 'rules', 'llm'"):
        decompose(APPLES, method="gpt")


# ---- language model -----------------------------------------------------------------------------

LM_REPLY = {
    "prompt": APPLES,
    "version": 1,
    "aspects": [
        {"name": "TA", "description": "Alignment as the model wrote it.", "weight": 0.5,
         "yes_no": [{"question": "Are there two apples?", "expected": "yes", "tag": "count", "weight": 1.0},
                    {"question": "Is the table made of glass?", "expected": "no", "tag": "material", "weight": 0.5}],
         "explanations": [{"question": "Describe the table.", "target": "A wooden table.", "tag": "object",
                           "weight": 1.0}]},
        {"name": "PHY", "description": "Physics.", "weight": 0.25,
         "yes_no": [{"question": "Do the apples float?", "expected": "no", "tag": "gravity", "weight": 1.0}],
         "explanations": []},
        {"name": "VQ", "description": "Quality.", "weight": 0.25,
         "yes_no": [{"question": "Is the video blurry?", "expected": "no", "tag": "sharpness", "weight": 1.0}],
         "explanations": []},
    ],
}  # fmt: skip
LM_JSON = json.dumps(LM_REPLY, indent=2)


def decompose_with_reply(reply):
    return decompose(APPLES, method="llm", chat=lambda text: reply)


def test_lm_valid_json_is_accepted_as_is(caplog):
    with caplog.at_level(logging.INFO, logger="drf_core.decompose"):
        qs = decompose_with_reply(LM_JSON)
    assert qs.to_dict() == LM_REPLY
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "reply",
    [
        "```json\n" + LM_JSON + "\n```",
        "Sure! Here are the questions:\n```\n" + LM_JSON + "\n```\nLet me know if you need more.",
        "Here is the JSON you asked for: " + json.dumps(LM_REPLY) + " I hope this helps.",
        LM_JSON.replace('"weight": 1.0\n', '"weight": 1.0,\n').replace("}\n  ]", "},\n  ]"),
        repr(LM_REPLY),  # single quotes (Python style)
        LM_JSON.replace('"expected": "yes"', '"expected": "Yes"').replace('"expected": "no"', '"expected": "No."'),
    ],
    ids=["fenced", "prose-fenced", "prose", "trailing-commas", "single-quotes", "capitalised-expected"],
)
def test_lm_common_faults_are_repaired(reply, caplog):
    with caplog.at_level(logging.WARNING, logger="drf_core.decompose"):
        qs = decompose_with_reply(reply)
    assert qs.to_dict() == LM_REPLY
    assert not caplog.records


def test_lm_missing_parts_are_filled():
    rules = decompose(APPLES)
    reply = {"aspects": {  # aspects as a mapping, missing optional fields, lowercase names, an extra aspect
        "ta": {"questions": ["Are the apples red?", {"question": "Is there a pear?", "expected": False},
                             "are the apples  RED?", {"question": "Is it?", "expected": "perhaps"}]},
        "Lighting": {"weight": 0.2, "yes_no": [{"question": "Is the scene lit warmly?"}]},
    }}  # fmt: skip
    qs = decompose_with_reply(json.dumps(reply))
    assert qs.aspect_names() == ["TA", "PHY", "VQ", "Lighting"]
    ta = qs.aspect("TA")
    assert [(q.question, q.expected, q.tag, q.weight) for q in ta.yes_no] == [
        ("Are the apples red?", "yes", "", 1.0),
        ("Is there a pear?", "no", "", 1.0),
    ]
    assert ta.weight == 0.5 and ta.description  # the requested weight, the default description
    assert qs.aspect("PHY") == rules.aspect("PHY") and qs.aspect("VQ") == rules.aspect("VQ")
    assert qs.aspect("Lighting").weight == 0.2
    assert qs.prompt == APPLES


def test_lm_uses_the_callers_weights():
    qs = decompose(APPLES, method="llm", aspects={"TA": 0.7, "PHY": 0.2, "VQ": 0.1}, chat=lambda text: LM_JSON)
    assert [a.weight for a in qs.aspects] == [0.7, 0.2, 0.1]
    assert [q.question for q in qs.aspect("TA").yes_no] == ["Are there two apples?", "Is the table made of glass?"]


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, I cannot help with that.",
        "",
        "   ",
        None,
        42,
        "[1, 2, 3]",
        '{"aspects": [{"name": "TA", "yes_no": [{"question": "", "expected": "maybe"}]}]}',
        '{"aspects": [{"name": "TA", "yes_no": [{"question": "Is it red?"',
        '{"prompt": "x", "aspects": "none"}',
        "{'aspects': [os.system('echo hi')]}",  # parsed as a literal, never evaluated
        "[" * 50_000 + "]" * 50_000,
        '{"aspects": [{"name": 5, "yes_no": ["Is it red?"]}, {"name": "TA", "yes_no": [{"question": ["x"]}]}]}',
    ],
)
def test_lm_garbage_falls_back_to_rules_with_a_warning(reply, caplog):
    with caplog.at_level(logging.WARNING, logger="drf_core.decompose"):
        qs = decompose_with_reply(reply)
    assert qs == decompose(APPLES)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and FALLBACK_MESSAGE in warnings[0]


def test_lm_chat_objects_get_the_template_system_prompt_and_token_budget():
    calls = []

    class FakeCritic:
        def chat(self, prompt, system=None, max_new_tokens=512):
            calls.append((prompt, system, max_new_tokens))
            return LM_JSON

    qs = decompose(APPLES, method="llm", chat=FakeCritic(), max_new_tokens=77)
    assert qs.to_dict() == LM_REPLY
    ((prompt, system, max_new_tokens),) = calls
    assert system == LM_SYSTEM_PROMPT and max_new_tokens == 77
    assert prompt == build_lm_instruction(APPLES, resolve_aspects(None))
    assert f'Prompt: "{APPLES}"' in prompt and "- TA, 0.5: Text-video alignment" in prompt
    with pytest.raises(DRFInputError, match="needs a language model"):
        decompose(APPLES, method="llm")


def test_lm_template_example_is_a_valid_question_set():
    example = QuestionSet.from_dict(_LM_EXAMPLE)
    assert example.aspect_names() == ["TA", "PHY", "VQ"]
    assert json.dumps(_LM_EXAMPLE, indent=1) in LM_INSTRUCTION_TEMPLATE
    assert "<PROMPT>" in LM_INSTRUCTION_TEMPLATE and "<ASPECTS>" in LM_INSTRUCTION_TEMPLATE


def test_causal_lm_chat_with_a_tiny_random_model_falls_back(tiny_causal_lm, caplog):
    chat = CausalLMChat(tiny_causal_lm, dtype="fp32", device="cpu", max_new_tokens=8)
    reply = chat.chat("Say hello.", system="Be brief.", max_new_tokens=8)
    assert isinstance(reply, str) and reply == chat.chat("Say hello.", system="Be brief.", max_new_tokens=8)
    assert isinstance(chat("Say hello."), str)
    wrapped = CausalLMChat.from_loaded(chat.model, chat.tokenizer, max_new_tokens=8)
    assert wrapped.chat("Say hello.", system="Be brief.") == reply
    with caplog.at_level(logging.WARNING, logger="drf_core.decompose"):
        qs = decompose(APPLES, method="llm", chat=chat, max_new_tokens=32)
    assert qs == decompose(APPLES)
    assert any(FALLBACK_MESSAGE in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_causal_lm_chat_without_a_chat_template(tiny_causal_lm, tmp_path):
    import shutil

    folder = tmp_path / "base_lm"
    shutil.copytree(tiny_causal_lm, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    chat = CausalLMChat(folder, dtype="fp32", device="cpu")
    assert not getattr(chat.tokenizer, "chat_template", None)
    assert isinstance(chat.chat("hello", system="sys", max_new_tokens=4), str)


def test_causal_lm_chat_folder_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        CausalLMChat(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match=r"has no config\.json"):
        CausalLMChat(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no_such_model_type"}')
    with pytest.raises(ModelFolderError, match="could not be loaded as a causal language model"):
        CausalLMChat(tmp_path)

"""The language-model decomposer held to the question checks, and the model folders it chats with:
a Qwen2.5-VL folder through the critic (as `decompose --method llm --model` loads it), a causal LM."""

from __future__ import annotations

import json
import logging

import pytest

from drf_core.chat_models import CHAT_MODEL_LOADERS, CausalLMChat, chat_model_kind, load_chat_model
from drf_core.cli import main
from drf_core.critics import QwenVLCritic
from drf_core.decompose import decompose, decompose_with_report
from drf_core.errors import ModelFolderError
from drf_core.question_checks import check_question_set
from drf_core.questions import QuestionSet
from drf_core.tiny import write_tiny_qwen2_5_vl

CAT = "a cat jumps off a table, no people in the room"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return write_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vlm"))


def reply(ta: list[tuple[str, str]], phy: list[tuple[str, str]] | None = None) -> str:
    def items(pairs):
        return [{"question": q, "expected": e, "tag": "x", "weight": 1.0} for q, e in pairs]

    aspects = [{"name": "TA", "yes_no": items(ta), "explanations": []}]
    if phy is not None:
        aspects.append({"name": "PHY", "yes_no": items(phy), "explanations": []})
    return json.dumps({"prompt": CAT, "aspects": aspects})


class FakeChatModel:
    """A chat model that answers with a fixed reply (what a well-behaved instruct model would write)."""

    def __init__(self, text: str) -> None:
        self.text, self.asked = text, []

    def chat(self, prompt, system=None, max_new_tokens=512):
        self.asked.append(prompt)
        return self.text


def test_a_sensible_reply_is_used_as_written():
    good = reply(
        [("Is there a cat?", "yes"), ("Is the cat jumping off the table?", "yes"), ("Is there a room?", "yes"),
         ("Are there any people in the room?", "no")],
        [("Does the cat land on its feet?", "yes")],
    )  # fmt: skip
    model = FakeChatModel(good)
    result = decompose_with_report(CAT, "llm", {"TA": 0.5, "PHY": 0.5}, model)
    assert (result.method, result.requested, result.notes, result.fallback_reason) == ("llm", "llm", [], "")
    assert [q.question for q in result.question_set.aspect("TA").yes_no][-1] == "Are there any people in the room?"
    assert len(model.asked) == 1 and CAT in model.asked[0]
    assert result.summary() == "questions by llm"


def test_nonsense_is_dropped_and_gaps_are_filled_from_the_rules():
    bad = reply(
        [("Is there a cat?", "yes"), ("Is there an off?", "yes"), ("Is the cat jumping the off?", "yes"),
         ("Is the cat jumping off the table?", "yes"), ("Is there a room?", "yes"),
         ("Is the cat grey?", "yes"), ("Is the cat fluffy?", "yes")],
        [("Do the people have natural anatomy?", "yes"), ("Does the cat land softly?", "yes")],
    )  # fmt: skip
    result = decompose_with_report(CAT, "llm", {"TA": 0.5, "PHY": 0.5}, FakeChatModel(bad))
    assert result.method == "llm" and not result.fallback_reason
    ta = [(q.question, q.expected) for q in result.question_set.aspect("TA").yes_no]
    assert ("Is there an off?", "yes") not in ta and ("Is the cat jumping the off?", "yes") not in ta
    assert ("Are there any people in the video?", "no") in ta  # the absence the model missed, from the rules
    phy = [q.question for q in result.question_set.aspect("PHY").yes_no]
    assert phy == ["Does the cat land softly?"]
    assert any("'Is there an off?'" in note for note in result.notes)
    assert any("do not cover absent: person" in note for note in result.notes)
    assert "repaired: " in result.summary() and "Is there an off?" in result.summary()
    check = check_question_set(result.question_set)
    assert check.problems == [] and check.missing == []


def test_a_mostly_nonsense_reply_is_replaced_by_the_rules_with_the_reason(caplog):
    nonsense = reply([("Is there an off?", "yes"), ("Are there people?", "yes"), ("Is there a cat?", "yes")])
    with caplog.at_level(logging.WARNING, logger="drf_core.decompose"):
        result = decompose_with_report(CAT, "llm", None, FakeChatModel(nonsense))
    assert result.question_set == decompose(CAT) and (result.method, result.requested) == ("rules", "llm")
    assert result.fallback_reason == "2 of the model's 3 questions are nonsense for this prompt"
    assert result.fallback_reason in result.summary() and "not used" in result.summary()
    assert any(result.fallback_reason in r.getMessage() for r in caplog.records)


def test_the_loader_is_chosen_from_the_folders_config(tiny_vlm, tiny_causal_lm, tmp_path):
    assert CHAT_MODEL_LOADERS.names() == ["critic", "causal_lm"]
    assert chat_model_kind(tiny_vlm) == "critic" and chat_model_kind(tiny_causal_lm) == "causal_lm"
    vlm = load_chat_model(tiny_vlm, "fp32", "cpu")
    assert isinstance(vlm, QwenVLCritic) and isinstance(vlm.chat("Say hi.", max_new_tokens=4), str)
    lm = load_chat_model(tiny_causal_lm, "fp32", "cpu", max_new_tokens=4)
    assert isinstance(lm, CausalLMChat) and isinstance(lm.chat("Say hi."), str)
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_chat_model(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match=r"has no config\.json"):
        load_chat_model(tmp_path)


def test_the_tiny_vlm_writes_invalid_json_and_the_rules_take_over_with_the_reason(tiny_vlm, caplog):
    critic = load_chat_model(tiny_vlm, "fp32", "cpu")
    with caplog.at_level(logging.WARNING, logger="drf_core.decompose"):
        result = decompose_with_report(CAT, "llm", None, critic, max_new_tokens=24)
    assert result.question_set == decompose(CAT) and result.method == "rules"
    assert result.fallback_reason  # e.g. "no JSON object in the reply"
    assert any("using the rule-based decomposer instead" in r.getMessage() for r in caplog.records)


def test_cli_decompose_with_a_qwen2_5_vl_folder(tiny_vlm, capsys, caplog):
    prompt = "a girl waves her hand at the camera and smiles"
    with caplog.at_level(logging.INFO):
        code = main(["decompose", "--prompt", prompt, "--method", "llm", "--model", str(tiny_vlm),
                     "--max-new-tokens", "16", "--dtype", "fp32", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert QuestionSet.from_json(capsys.readouterr().out) == decompose(prompt)
    assert any("the language model's reply was not used" in r.getMessage() for r in caplog.records)

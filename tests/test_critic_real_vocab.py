"""The critic's text side with Qwen2.5's real tokenizer: prompts, special tokens, answer positions,
Yes/No token ids and token weights are the ones a real Qwen2.5-VL sees.

The tokenizer files come from a ComfyUI checkout (`comfy/text_encoders/qwen25_tokenizer`), found
through `DRF_QWEN25_TOKENIZER` (the folder itself), `COMFYUI_DIR`, or a `shared/ComfyUI-*` folder
next to one of the repository's parent folders; the tests skip, saying so, when none is there. The
files are read where they are and only saved into a temporary model folder: nothing is copied into
the repository. ComfyUI ships the text-only Qwen2.5 chat template, so the folder gets Qwen2.5-VL-
Instruct's own (`drf_core.tiny.QWEN2_5_VL_CHAT_TEMPLATE`). The model is a tiny random Qwen2.5-VL with
the real 151,936-entry vocabulary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from drf_core.config import CriticInputConfig
from drf_core.critics import load_critic, yes_no_prompt
from drf_core.reward import token_weights
from drf_core.tiny import QWEN2_5_VL_VOCAB_SIZE, write_tiny_qwen2_5_vl

TOKENIZER_SUBDIR = Path("comfy") / "text_encoders" / "qwen25_tokenizer"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Token ids of the real Qwen2.5 vocabulary.
YES_ID, NO_ID = 9454, 2753
IM_START, IM_END, VISION_START, VISION_END, VIDEO_PAD = 151644, 151645, 151652, 151653, 151656
ASSISTANT, NEWLINE = 77091, 198


def _tokenizer_dir() -> Path | None:
    if os.environ.get("DRF_QWEN25_TOKENIZER"):
        return Path(os.environ["DRF_QWEN25_TOKENIZER"])
    candidates = []
    if os.environ.get("COMFYUI_DIR"):
        candidates.append(Path(os.environ["COMFYUI_DIR"]) / TOKENIZER_SUBDIR)
    for parent in REPO_ROOT.parents:
        candidates += sorted((parent / "shared").glob(f"ComfyUI-*/{TOKENIZER_SUBDIR}"))
    return next((c for c in candidates if (c / "vocab.json").is_file()), None)


TOKENIZER_DIR = _tokenizer_dir()
pytestmark = pytest.mark.skipif(
    TOKENIZER_DIR is None,
    reason="Qwen2.5's tokenizer files were not found (set DRF_QWEN25_TOKENIZER to a folder with vocab.json and "
    "merges.txt, or COMFYUI_DIR to a ComfyUI checkout, which ships comfy/text_encoders/qwen25_tokenizer)",
)


@pytest.fixture(scope="module")
def real_critic(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    folder = write_tiny_qwen2_5_vl(
        tmp_path_factory.mktemp("real_vocab") / "qwen2_5_vl", tokenizer=tokenizer, vocab_size=QWEN2_5_VL_VOCAB_SIZE
    )
    return load_critic(folder, dtype="fp32", device="cpu"), folder


@pytest.fixture(scope="module")
def real_processor(real_critic):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(real_critic[1], local_files_only=True)


def _frames(count: int = 2, height: int = 56, width: int = 84) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_the_tiny_critic_has_the_real_vocabulary_and_special_tokens(real_critic):
    critic, _ = real_critic
    config = critic.model.config
    assert critic.model.get_input_embeddings().num_embeddings == QWEN2_5_VL_VOCAB_SIZE == 151936
    assert (config.image_token_id, config.video_token_id) == (151655, VIDEO_PAD)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (VISION_START, VISION_END)
    assert critic._single_token_id("Yes") == YES_ID and critic._single_token_id("No") == NO_ID


def test_yes_no_prompt_is_the_vl_chat_template_with_the_one_word_instruction(real_critic):
    critic, _ = real_critic
    frames = _frames()
    visual = critic._preprocess(frames, CriticInputConfig())
    ids = critic._prompt_ids(yes_no_prompt("Is there a red cat on the table?"), visual)
    (tokens,) = visual.tokens_per_item
    assert tokens == 1 * 2 * 3  # 2 frames of 56x84: one temporal patch of 2x3 merged patches
    expected_text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|video_pad|>" * tokens
        + "<|vision_end|>Is there a red cat on the table? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert critic.tokenizer.decode(ids) == expected_text
    assert ids.count(VIDEO_PAD) == tokens and ids.count(VISION_START) == ids.count(VISION_END) == 1
    assert ids[:1] == [IM_START] and ids[-3:] == [IM_START, ASSISTANT, NEWLINE]  # the answer comes next


def test_yes_no_logits_and_mass_equal_the_official_processor_with_the_real_vocabulary(real_critic, real_processor):
    from transformers.video_utils import VideoMetadata

    critic, _ = real_critic
    frames = _frames()
    questions = ["Is there a cat?", "Is the dog not under the table?"]
    scores = critic.score(frames, questions, [], [], CriticInputConfig())
    texts = [
        real_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": yes_no_prompt(q)}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    inputs = real_processor(
        text=texts,
        videos=[frames] * 2,
        video_metadata=[VideoMetadata(total_num_frames=2, fps=16.0)] * 2,
        cap_pixels_per_frame=False,
        do_rescale=False,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    with torch.no_grad():
        last = critic.model(**inputs).logits[:, -1].float()
    torch.testing.assert_close(scores.yes_no_logits, last[:, [YES_ID, NO_ID]], rtol=0, atol=1e-5)
    probabilities = torch.softmax(last, dim=-1)
    torch.testing.assert_close(
        scores.yes_no_mass, probabilities[:, YES_ID] + probabilities[:, NO_ID], rtol=1e-4, atol=0
    )


def test_answer_tokens_and_their_weights_with_the_real_tokenizer(real_critic, real_processor):
    from transformers.video_utils import VideoMetadata

    critic, _ = real_critic
    frames = _frames()
    query, answer = "Describe the video.", "The cat is not under the table, and there is no dog behind it."
    (scored,) = critic.score_answers(frames, [query], [answer], CriticInputConfig())
    pieces = [answer[start:end] for start, end in scored.token_spans]
    assert pieces == [
        "The",
        " cat",
        " is",
        " not",
        " under",
        " the",
        " table",
        ",",
        " and",
        " there",
        " is",
        " no",
        " dog",
        " behind",
        " it",
        ".",
    ]
    light = 0.2
    weights = dict(zip(pieces, token_weights(answer, scored.token_spans, light).tolist(), strict=False))
    assert {word: weights[word] for word in (" not", " under", " no", " behind", " cat", " dog")} == dict.fromkeys(
        (" not", " under", " no", " behind", " cat", " dog"), 1.0
    )
    for word in ("The", " is", " the", " and", " there", " it", ",", "."):
        assert weights[word] == pytest.approx(light), word
    # Teacher-forced log-probs at the real answer positions equal the official processor's forward.
    prompt = real_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": query}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = real_processor(
        text=[prompt + answer],
        videos=[frames],
        video_metadata=[VideoMetadata(total_num_frames=2, fps=16.0)],
        cap_pixels_per_frame=False,
        do_rescale=False,
        return_tensors="pt",
    )
    ids = critic.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, -len(ids) :].tolist() == ids
    assert inputs["input_ids"][0, -len(ids) - 3 : -len(ids)].tolist() == [IM_START, ASSISTANT, NEWLINE]
    with torch.no_grad():
        log_probs = torch.log_softmax(critic.model(**inputs).logits[0].float(), dim=-1)
    expected = log_probs[-len(ids) - 1 : -1].gather(-1, torch.tensor(ids)[:, None])[:, 0]
    torch.testing.assert_close(scored.token_logprobs, expected, rtol=0, atol=1e-5)

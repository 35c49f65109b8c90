"""The Qwen-VL critic against transformers' own processors and model: preprocessing, yes/no logits,
answer log-probs, batching, gradients, checkpointing, loading errors. Tiny models, CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from drf_core.config import CriticInputConfig
from drf_core.critics import CRITICS, Qwen2VLCritic, QwenVLCritic, load_critic, yes_no_prompt
from drf_core.critics.qwen_vision import preprocess_frames, read_vision_settings
from drf_core.errors import DRFInputError, ModelFolderError
from drf_core.tiny import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN2_5_VL_PREPROCESSOR_CONFIG,
    QWEN_SPECIAL_TOKENS,
    build_tiny_qwen_tokenizer,
    write_tiny_qwen2_5_vl,
)

QUESTIONS = [
    "Is there a cat?",
    "Are there two red apples on the wooden table across the frames?",
    "Does the camera pan left?",
]


def _frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _official_inputs(processor, frames, texts, mode, fps):
    """Inputs built the documented way: processor chat template + processor(text=..., videos/images=...)."""
    from transformers.video_utils import VideoMetadata

    prompts = []
    for text in texts:
        visual = [{"type": "video"}] if mode == "video" else [{"type": "image"}] * len(frames)
        messages = [{"role": "user", "content": [*visual, {"type": "text", "text": text}]}]
        prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    if mode == "video":
        metadata = [VideoMetadata(total_num_frames=len(frames), fps=fps)] * len(texts)
        media = {"videos": [frames] * len(texts), "video_metadata": metadata, "cap_pixels_per_frame": False}
    else:
        media = {"images": [list(frames)] * len(texts)}
    return prompts, media


def _official_yes_no(critic, processor, frames, questions, mode, fps=2.0):
    """The yes/no logits of the same user text (question + instruction), built the documented way."""
    prompts, media = _official_inputs(processor, frames, [yes_no_prompt(q) for q in questions], mode, fps)
    inputs = processor(text=prompts, do_rescale=False, return_tensors="pt", padding=True, padding_side="left", **media)
    assert (inputs["attention_mask"] == 0).any(), "questions of different lengths must exercise left padding"
    yes, no = (critic.tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    with torch.no_grad():
        logits = critic.model(**inputs).logits[:, -1]
    return logits[:, [yes, no]]


# ------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("mode", ["images", "video"])
def test_float_frames_that_need_a_resize_match_the_official_processors(qwen_dir, mode):
    from transformers import AutoImageProcessor, AutoVideoProcessor

    frames = _frames(4, 64, 80)
    settings = read_vision_settings(qwen_dir)
    ours = preprocess_frames(frames, mode, 0, 0, 2.0, settings)
    if mode == "images":
        official = AutoImageProcessor.from_pretrained(qwen_dir, local_files_only=True)(
            images=list(frames), do_rescale=False, return_tensors="pt"
        )
        pixels, grid = official["pixel_values"], official["image_grid_thw"]
    else:
        official = AutoVideoProcessor.from_pretrained(qwen_dir, local_files_only=True)(
            videos=[frames], do_rescale=False, cap_pixels_per_frame=False, return_tensors="pt"
        )
        pixels, grid = official["pixel_values_videos"], official["video_grid_thw"]
    assert tuple(grid[0].tolist())[1:] == (4, 6)  # 64x80 -> 56x84: a real resize happened
    assert torch.equal(ours.pixel_values, pixels)
    assert torch.equal(ours.grid_thw, grid)
    # The explicit size that equals the official choice gives the same patches.
    explicit = preprocess_frames(frames, mode, 56, 84, 2.0, settings)
    assert torch.equal(explicit.pixel_values, pixels)


def test_uint8_frames_at_a_no_resize_size_match_the_official_processors(qwen_dir):
    from transformers import AutoImageProcessor, AutoVideoProcessor

    frames = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    settings = read_vision_settings(qwen_dir)
    images = AutoImageProcessor.from_pretrained(qwen_dir, local_files_only=True)(
        images=list(frames), return_tensors="pt"
    )
    video = AutoVideoProcessor.from_pretrained(qwen_dir, local_files_only=True)(
        videos=[frames], cap_pixels_per_frame=False, return_tensors="pt"
    )
    ours_images = preprocess_frames(frames.float(), "images", 112, 112, 2.0, settings, value_range=255.0)
    ours_video = preprocess_frames(frames.float(), "video", 0, 0, 2.0, settings, value_range=255.0)
    assert torch.equal(ours_images.pixel_values, images["pixel_values"])
    assert torch.equal(ours_images.grid_thw, images["image_grid_thw"])
    assert torch.equal(ours_video.pixel_values, video["pixel_values_videos"])
    assert torch.equal(ours_video.grid_thw, video["video_grid_thw"])
    # The critic's own 0..1 path differs from the fused 0..255 arithmetic only by float rounding.
    unit = preprocess_frames(frames.float() / 255, "video", 0, 0, 2.0, settings)
    torch.testing.assert_close(unit.pixel_values, video["pixel_values_videos"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fps", [2.0, 3.0])
def test_odd_frame_count_repeats_the_last_frame_and_sets_seconds_per_grid(qwen_dir, processor, fps):
    frames = _frames(5, 56, 56, seed=2)
    ours = preprocess_frames(frames, "video", 0, 0, fps, read_vision_settings(qwen_dir))
    _, media = _official_inputs(processor, frames, ["x"], "video", fps)
    official = processor(
        text=["<|vision_start|><|video_pad|><|vision_end|>"], do_rescale=False, return_tensors="pt", **media
    )
    assert ours.grid_thw.tolist() == [[3, 4, 4]]
    assert torch.equal(ours.pixel_values, official["pixel_values_videos"])
    assert torch.equal(ours.grid_thw, official["video_grid_thw"])
    assert torch.equal(torch.tensor([ours.second_per_grid_ts], dtype=torch.float32), official["second_per_grid_ts"])
    # The padded last temporal patch holds frame 4 twice: equal to image mode's copies of frame 4.
    last_image = preprocess_frames(frames[4:], "images", 0, 0, fps, read_vision_settings(qwen_dir))
    assert torch.equal(ours.pixel_values[-16:], last_image.pixel_values)


def test_video_settings_file_and_per_frame_pixel_cap_match_the_official_video_processor(qwen_dir, tmp_path):
    from transformers import AutoVideoProcessor

    shutil.copy(qwen_dir / "preprocessor_config.json", tmp_path / "preprocessor_config.json")
    video_settings = {
        **QWEN2_5_VL_PREPROCESSOR_CONFIG,
        "video_processor_type": "Qwen2VLVideoProcessor",
        "min_pixels": 2000,
        "max_pixels": 40000,
        "cap_pixels_per_frame": True,
        "max_video_tokens": 20,
    }
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video_settings))
    frames = _frames(4, 150, 150, seed=3)
    settings = read_vision_settings(tmp_path)
    official = AutoVideoProcessor.from_pretrained(tmp_path, local_files_only=True)(
        videos=[frames], do_rescale=False, return_tensors="pt"
    )
    ours = preprocess_frames(frames, "video", 0, 0, 2.0, settings)
    assert ours.grid_thw.tolist() == official["video_grid_thw"].tolist() == [[2, 6, 6]]  # capped: 84x84, not 140x140
    assert torch.equal(ours.pixel_values, official["pixel_values_videos"])
    assert settings.image.min_pixels == QWEN2_5_VL_PREPROCESSOR_CONFIG["min_pixels"]  # images keep their own file


# ------------------------------------------------------------------------------------------ loading
def test_loaded_critic_is_frozen_in_eval_mode_on_the_asked_device_and_dtype(critic, qwen_dir):
    assert isinstance(critic, QwenVLCritic) and CRITICS.get("qwen2_5_vl") is QwenVLCritic
    assert critic.dtype == torch.float32 and critic.device == torch.device("cpu")
    assert not critic.model.training
    assert all(not p.requires_grad for p in critic.model.parameters())
    half = load_critic(qwen_dir, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.model.parameters())


def test_dropout_in_the_config_is_zeroed_so_train_mode_stays_exact(qwen_dir, tmp_path):
    folder = shutil.copytree(qwen_dir, tmp_path / "dropout")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["attention_dropout"] = 0.1
    (folder / "config.json").write_text(json.dumps(config))
    critic = load_critic(folder, dtype="fp32", device="cpu")
    assert critic.model.config.text_config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in critic.model.model.language_model.layers)


def test_loading_and_scoring_never_build_the_official_processor(qwen_dir, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the critic must not build a processor (it needs torchvision)")

    for name in ("AutoProcessor", "Qwen2_5_VLProcessor", "AutoVideoProcessor", "AutoImageProcessor"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
    critic = load_critic(qwen_dir, dtype="fp32", device="cpu")
    scores = critic.score_yes_no(_frames(2, 56, 56), QUESTIONS[:2], CriticInputConfig(height=56, width=56))
    assert scores.shape == (2, 2) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_folder_errors_name_the_problem(tmp_path, qwen_dir, tiny_models):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_critic(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match="diffusers pipeline folder"):
        load_critic(tiny_models.wan)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match=r"no config\.json"):
        load_critic(tmp_path / "empty")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelFolderError, match=r"'llama'.*qwen2_5_vl, qwen2_vl"):
        load_critic(tmp_path / "llama")
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(qwen_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="has no tokenizer"):
        load_critic(no_tokenizer)


def test_yes_no_needs_single_token_answers(tmp_path):
    folder = write_tiny_qwen2_5_vl(tmp_path / "split_yes", yes_no_single_tokens=False)
    critic = load_critic(folder, dtype="fp32", device="cpu")
    with pytest.raises(DRFInputError, match=r"splits 'Yes' into 3 pieces \['Y', 'e', 's'\].*cannot be used for yes/no"):
        critic.score_yes_no(_frames(2, 56, 56), QUESTIONS[:1], CriticInputConfig(height=56, width=56))
    # Explanation scoring does not need single-token answers.
    answers = critic.score_answers(_frames(2, 56, 56), ["Describe"], ["Yes"], CriticInputConfig(height=56, width=56))
    assert answers[0].token_logprobs.shape == (3,)


def test_input_errors_name_the_problem(critic):
    with pytest.raises(DRFInputError, match=r"height 450 is not a multiple of 28 \(use 448 or 476\)"):
        critic.score_yes_no(_frames(1, 56, 56), QUESTIONS[:1], CriticInputConfig(height=450, width=448))
    with pytest.raises(DRFInputError, match="0 frames"):
        critic.score_yes_no(torch.zeros(0, 3, 56, 56), QUESTIONS[:1], CriticInputConfig(height=56, width=56))
    with pytest.raises(DRFInputError, match=r"\[F, 3, H, W\]"):
        critic.score_yes_no(torch.zeros(2, 56, 56, 3), QUESTIONS[:1], CriticInputConfig(height=56, width=56))
    with pytest.raises(DRFInputError, match="one answer per query"):
        critic.score_answers(_frames(1, 56, 56), QUESTIONS[:2], ["a"], CriticInputConfig(height=56, width=56))


# -------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("mode", ["video", "images"])
def test_yes_no_logits_equal_the_official_processor_path(critic, processor, mode):
    frames = _frames(3, 64, 80, seed=4)  # resized to 56x84 by both paths
    # fps 4: 0.5 s per temporal patch, so a missing second_per_grid_ts (default 1 s) would change positions.
    ours = critic.score_yes_no(frames, QUESTIONS, CriticInputConfig(mode=mode, height=0, width=0, fps=4.0))
    reference = _official_yes_no(critic, processor, frames, QUESTIONS, mode, fps=4.0)
    assert ours.shape == (3, 2) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1])  # the questions really differ


def test_batches_run_vision_once_and_the_language_model_once_per_batch(critic):
    calls = {"visual": 0, "language": 0}
    inner = critic.model.model
    hooks = [
        inner.visual.register_forward_hook(lambda *_: calls.__setitem__("visual", calls["visual"] + 1)),
        inner.language_model.register_forward_hook(lambda *_: calls.__setitem__("language", calls["language"] + 1)),
    ]
    frames = _frames(3, 56, 56, seed=5)
    try:
        singles = torch.cat(
            [critic.score_yes_no(frames, [q], CriticInputConfig(height=56, width=56)) for q in QUESTIONS]
        )
        for per_batch, language_calls in ((0, 1), (2, 2), (1, 3)):
            calls.update(visual=0, language=0)
            config = CriticInputConfig(height=56, width=56, max_questions_per_batch=per_batch)
            batched = critic.score_yes_no(frames, QUESTIONS, config)
            assert calls == {"visual": 1, "language": language_calls}
            torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)
        calls.update(visual=0, language=0)
        critic.score_answers(
            frames, QUESTIONS, ["A cat.", "two red apples", "left"], CriticInputConfig(height=56, width=56)
        )
        assert calls == {"visual": 1, "language": 1}
    finally:
        for hook in hooks:
            hook.remove()
    assert critic.model.model.rope_deltas is None


@pytest.mark.parametrize("mode", ["video", "images"])
def test_answer_log_probs_equal_a_teacher_forced_official_forward(critic, processor, mode):
    frames = _frames(2, 56, 84, seed=6)
    queries = ["Describe the video.", "Is there a red cat on the table?"]
    answers = ["A red cat sits on a wooden table.", "Yes"]
    config = CriticInputConfig(mode=mode, height=56, width=84, max_questions_per_batch=0)
    ours = critic.score_answers(frames, queries, answers, config)
    for query, answer, result in zip(queries, answers, ours, strict=True):
        prompts, media = _official_inputs(processor, frames, [query], mode, config.fps)
        inputs = processor(text=[prompts[0] + answer], do_rescale=False, return_tensors="pt", **media)
        answer_ids = critic.tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert inputs["input_ids"][0, -len(answer_ids) :].tolist() == answer_ids  # answer last, no <|im_end|>
        with torch.no_grad():
            log_probs = torch.log_softmax(critic.model(**inputs).logits[0].float(), dim=-1)
        targets = torch.tensor(answer_ids)
        expected = log_probs[-len(answer_ids) - 1 : -1].gather(-1, targets[:, None])[:, 0]
        assert result.answer == answer
        torch.testing.assert_close(result.token_logprobs, expected, rtol=0, atol=1e-5)
        assert len(result.token_spans) == len(answer_ids)
        assert "".join(answer[start:end] for start, end in result.token_spans) == answer
        assert [critic.tokenizer.decode([i]) for i in answer_ids] == [answer[s:e] for s, e in result.token_spans]


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("mode", ["video", "images"])
def test_yes_no_margin_gradient_matches_finite_differences_in_float64(qwen_dir, float64_throughout, mode):
    critic = load_critic(qwen_dir, dtype=torch.float64, device="cpu")
    config = CriticInputConfig(mode=mode, height=56, width=56)
    frames = _frames(3, 60, 60, seed=7).double()  # resized to 56x56: the resize is differentiated too

    def margin(pixels: torch.Tensor) -> torch.Tensor:
        logits = critic.score_yes_no(pixels, QUESTIONS[:1], config)
        assert logits.dtype == torch.float64
        return logits[0, 0] - logits[0, 1]

    pixels = frames.clone().requires_grad_(True)
    margin(pixels).backward()
    gradient = pixels.grad.flatten()
    magnitude = gradient.abs()
    checked = [int(magnitude.argmax()), int(magnitude.argsort()[len(magnitude) // 2]), 2 * 3600 + 7 * 60 + 11]
    eps = 1e-4
    with torch.no_grad():
        for index in checked:
            plus, minus = frames.clone(), frames.clone()
            plus.view(-1)[index] += eps
            minus.view(-1)[index] -= eps
            numeric = (margin(plus) - margin(minus)) / (2 * eps)
            torch.testing.assert_close(gradient[index], numeric, rtol=1e-5, atol=1e-10)
    assert magnitude.max() > 1e-5


def test_gradient_checkpointing_gives_the_same_gradients_and_no_parameter_gets_one(qwen_dir):
    critic = load_critic(qwen_dir, dtype="fp32", device="cpu")
    frames = _frames(2, 56, 56, seed=8)
    config = CriticInputConfig(mode="images", height=56, width=56, max_questions_per_batch=2)

    def gradient() -> torch.Tensor:
        pixels = frames.clone().requires_grad_(True)
        logits = critic.score_yes_no(pixels, QUESTIONS, config)
        answers = critic.score_answers(pixels, QUESTIONS[:1], ["two red apples"], config)
        (logits[:, 0] - logits[:, 1]).sum().add(answers[0].token_logprobs.sum()).backward()
        return pixels.grad

    plain = gradient()
    checkpoint_calls = []
    critic.set_gradient_checkpointing(True)
    assert critic.model.training
    for layer in critic.model.model.language_model.layers:
        original = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=original, **k: checkpoint_calls.append(1) or _f(*a, **k)
    checkpointed = gradient()
    assert checkpoint_calls, "checkpointing was enabled but no layer was checkpointed"
    critic.set_gradient_checkpointing(False)
    assert not critic.model.training
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None and not p.requires_grad for p in critic.model.parameters())


# ----------------------------------------------------------------------------------------- generation
def test_generate_and_chat_return_deterministic_text(critic):
    frames = _frames(2, 56, 56, seed=9)
    config = CriticInputConfig(height=56, width=56)
    first = critic.generate(frames, "Describe the video.", config, max_new_tokens=6)
    assert isinstance(first, str) and first == critic.generate(frames, "Describe the video.", config, max_new_tokens=6)
    reply = critic.chat("List the objects.", system="Answer in JSON.", max_new_tokens=6)
    assert isinstance(reply, str) and reply == critic.chat(
        "List the objects.", system="Answer in JSON.", max_new_tokens=6
    )


# ------------------------------------------------------------------------------------------- Qwen2-VL
def _write_tiny_qwen2_vl(directory):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = build_tiny_qwen_tokenizer()
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)), strict=True))
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=(len(tokenizer) + 63) // 64 * 64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
            **special,
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2, patch_size=14),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    preprocessor = {**QWEN2_5_VL_PREPROCESSOR_CONFIG, "processor_class": "Qwen2VLProcessor"}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}))
    return directory


def test_qwen2_vl_uses_the_same_code_and_matches_its_official_processor(tmp_path):
    from transformers import AutoProcessor

    folder = _write_tiny_qwen2_vl(tmp_path / "qwen2_vl")
    critic = load_critic(folder, dtype="fp32", device="cpu")
    assert isinstance(critic, Qwen2VLCritic)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    frames = _frames(3, 56, 56, seed=10)
    for mode in ("video", "images"):
        ours = critic.score_yes_no(frames, QUESTIONS, CriticInputConfig(mode=mode, height=56, width=56))
        torch.testing.assert_close(
            ours, _official_yes_no(critic, processor, frames, QUESTIONS, mode), rtol=0, atol=1e-5
        )

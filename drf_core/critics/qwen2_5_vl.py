"""Qwen2.5-VL (and Qwen2-VL) as a frozen, differentiable critic.

Loads a local transformers folder (weights, tokenizer, processor JSON, chat template) without
building the official processor (which needs torchvision for its video half): the tokenizer is
loaded on its own, the visual preprocessing is `qwen_vision` (torch, differentiable), and prompts
are rendered with the folder's own chat template, then each `<|image_pad|>` / `<|video_pad|>`
placeholder is expanded to `t*h*w / merge_size**2` tokens exactly as the official processor does.

Scoring (`score`) runs the vision tower once per video for all yes/no questions and explanation
queries, and hands its output to the language model through `mm_encoder_outputs`, once per batch
of questions (left padding + attention mask, 3-D M-RoPE positions from `mm_token_type_ids`, only
the logits that are needed via `logits_to_keep`). Yes/no questions are asked as
`yes_no_prompt(question)` (the question, then "Answer yes or no.").

Knows nothing about rewards, aspects or training: it answers questions about frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import CriticInputConfig
from ..errors import DRFInputError, ModelFolderError
from .base import AnswerLogProbs, Critic, CriticScores, yes_no_prompt
from .qwen_vision import QwenVisionConfig, VisualInputs, preprocess_frames, read_vision_settings

logger = logging.getLogger(__name__)

YES_NO_ANSWERS = ("Yes", "No")
# Where transformers looks for a processor chat template, in its order of priority.
PROCESSOR_CONFIG = "processor_config.json"
LEGACY_CHAT_TEMPLATE = "chat_template.json"
CHAT_TEMPLATE = "chat_template.jinja"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
# Token type ids the model reads to build its 3-D positions (FACTS.md: without them, 1-D positions).
MM_TOKEN_TYPE = {"image": 1, "video": 2}


def read_chat_template(folder: Path, tokenizer: Any) -> str:
    """The processor's chat template (it knows {"type": "video"} content), else the tokenizer's."""
    template: Any = None
    if (folder / PROCESSOR_CONFIG).is_file():
        template = json.loads((folder / PROCESSOR_CONFIG).read_text(encoding="utf-8")).get("chat_template")
    if template is None and (folder / LEGACY_CHAT_TEMPLATE).is_file():
        template = json.loads((folder / LEGACY_CHAT_TEMPLATE).read_text(encoding="utf-8")).get("chat_template")
    if template is None and (folder / CHAT_TEMPLATE).is_file():
        template = (folder / CHAT_TEMPLATE).read_text(encoding="utf-8")
    if template is None:
        template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not isinstance(template, str) or not template:
        raise ModelFolderError(
            f"{folder} has no chat template ({CHAT_TEMPLATE}, {LEGACY_CHAT_TEMPLATE} or one in the tokenizer config); "
            "copy the chat template file that comes with the model's release into the folder"
        )
    return template


def _zero_dropout(config: Any, where: str = "config") -> None:
    """Set every dropout probability in the config (and its sub-configs) to 0, warning when one was not."""
    for name, value in list(vars(config).items()):
        if "dropout" in name and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            logger.warning(
                "%s.%s is %s; the critic sets it to 0 so train mode (for checkpointing) is exact", where, name, value
            )
            setattr(config, name, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            _zero_dropout(value, f"{where}.{name}")


class QwenVLCritic(Critic):
    """A Qwen-VL model behind the `Critic` interface. Subclasses name the transformers model class."""

    family: ClassVar[str] = "qwen2_5_vl"
    model_class_name: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    # Qwen2.5-VL spaces video positions in time by `second_per_grid_ts`; Qwen2-VL has no such input.
    uses_second_per_grid_ts: ClassVar[bool] = True

    def __init__(
        self, model: Any, tokenizer: Any, chat_template: str, vision: QwenVisionConfig, name: str = ""
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.vision = vision
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config
        self.placeholder_ids = {"image": config.image_token_id, "video": config.video_token_id}
        self.placeholders = {
            "image": getattr(tokenizer, "image_token", None) or "<|image_pad|>",
            "video": getattr(tokenizer, "video_token", None) or "<|video_pad|>",
        }
        for modality, token in self.placeholders.items():
            if tokenizer.convert_tokens_to_ids(token) != self.placeholder_ids[modality]:
                raise ModelFolderError(
                    f"{name or 'the critic folder'}: the tokenizer's {token} is not the model's {modality} token id "
                    f"{self.placeholder_ids[modality]}; the tokenizer and config.json come from different models"
                )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config.get_text_config(), "pad_token_id", None) or tokenizer.eos_token_id
        self.pad_token_id = int(pad)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype, device: torch.device) -> QwenVLCritic:
        """Load model, tokenizer, chat template and vision settings from a local folder (no network)."""
        import transformers

        folder = Path(folder)
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ModelFolderError(
                f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); copy the tokenizer files of the "
                "model's release (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt) into the folder"
            )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            raise ModelFolderError(
                f"the tokenizer in {folder} cannot be loaded ({error}); restore the tokenizer files from the "
                "model's release"
            ) from error
        model_class = getattr(transformers, cls.model_class_name)
        config = model_class.config_class.from_pretrained(folder, local_files_only=True)
        _zero_dropout(config)
        model = model_class.from_pretrained(
            folder, config=config, dtype=dtype, local_files_only=True, device_map={"": torch.device(device)}
        )
        model.requires_grad_(False)
        model.eval()
        critic = cls(model, tokenizer, read_chat_template(folder, tokenizer), read_vision_settings(folder), folder.name)
        logger.info("loaded %s critic from %s (%s, %s)", cls.family, folder, critic.dtype, critic.device)
        return critic

    # ----------------------------------------------------------------------------------------- prompts
    def _render(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def _prompt_ids(self, question: str, visual: VisualInputs) -> list[int]:
        """Token ids of the chat prompt (user: visual + question; then the assistant generation prompt)."""
        items = len(visual.grid_thw)
        for token in (*self.placeholders.values(), "<|vision_start|>", "<|vision_end|>"):
            if token in question:
                raise DRFInputError(f"question {question!r} contains the special token {token}; remove it")
        content: list[dict[str, Any]] = [{"type": visual.modality}] * items + [{"type": "text", "text": question}]
        text = self._render([{"role": "user", "content": content}])
        placeholder = self.placeholders[visual.modality]
        pieces = text.split(placeholder)
        if len(pieces) != items + 1:
            raise ModelFolderError(
                f"the chat template of {self.name or 'the critic'} wrote {len(pieces) - 1} {placeholder} placeholders "
                f"for {items} {visual.modality} item(s); use the model's own chat_template.json"
            )
        expanded = pieces[0]
        for count, piece in zip(visual.tokens_per_item, pieces[1:], strict=True):
            expanded += placeholder * count + piece
        return self.tokenizer(expanded, add_special_tokens=False)["input_ids"]

    def _single_token_id(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise DRFInputError(
                f"the tokenizer of critic {self.name!r} splits {word!r} into {len(ids)} pieces {pieces}; yes/no "
                f"rewards read the logit of one token per answer ({' / '.join(YES_NO_ANSWERS)}), so this critic "
                "cannot be used for yes/no rewards; use explanation rewards only, or a VLM whose vocabulary has them"
            )
        return ids[0]

    def _left_pad(self, sequences: list[list[int]], modality: str | None) -> dict[str, torch.Tensor]:
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, length - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, length - len(sequence) :] = 1
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if modality is not None:
            types = torch.zeros_like(batch["input_ids"])
            types[batch["input_ids"] == self.placeholder_ids[modality]] = MM_TOKEN_TYPE[modality]
            batch["mm_token_type_ids"] = types
        return batch

    # ------------------------------------------------------------------------------------------ vision
    @property
    def _float_dtype(self) -> torch.dtype:
        """Preprocessing and output precision: float32, or float64 for a float64 model (gradient checks)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def _preprocess(self, frames: torch.Tensor, visual: CriticInputConfig) -> VisualInputs:
        visual.validate()
        compute_dtype = self._float_dtype
        if isinstance(frames, torch.Tensor):
            frames = frames.to(self.device)
        return preprocess_frames(
            frames, visual.mode, visual.height, visual.width, visual.clip_fps(), self.vision, compute_dtype
        )

    def _visual_kwargs(self, visual: VisualInputs, batch_size: int) -> dict[str, Any]:
        """Grids (and time spacing) for `batch_size` copies of the one visual input."""
        grid = visual.grid_thw.to(self.device).repeat(batch_size, 1)
        if visual.modality == "image":
            return {"image_grid_thw": grid}
        kwargs: dict[str, Any] = {"video_grid_thw": grid}
        if self.uses_second_per_grid_ts:
            seconds = torch.full((batch_size,), visual.second_per_grid_ts, dtype=torch.float32, device=self.device)
            kwargs["second_per_grid_ts"] = seconds
        return kwargs

    def _pixel_kwargs(self, visual: VisualInputs) -> dict[str, Any]:
        pixels = visual.pixel_values.to(self.dtype)
        if visual.modality == "image":
            return {"pixel_values": pixels, **self._visual_kwargs(visual, 1)}
        return {"pixel_values_videos": pixels, **self._visual_kwargs(visual, 1)}

    def _encode(self, visual: VisualInputs) -> tuple[torch.Tensor, ...]:
        """Run the vision tower once; one feature tensor per image / the video."""
        pixels = visual.pixel_values.to(self.dtype)
        grid = visual.grid_thw.to(self.device)
        if visual.modality == "image":
            output = self.model.model.get_image_features(pixels, grid, return_dict=True)
        else:
            output = self.model.model.get_video_features(pixels, grid, return_dict=True)
        return tuple(output.pooler_output)

    def _language_forward(
        self,
        sequences: list[list[int]],
        visual: VisualInputs,
        features: tuple[torch.Tensor, ...],
        logits_to_keep: int | torch.Tensor,
    ) -> torch.Tensor:
        """One language-model forward over left-padded sequences that all show the same visual input."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        batch = self._left_pad(sequences, visual.modality)
        encoded = BaseModelOutputWithPooling(pooler_output=features * len(sequences))
        output = self.model(
            **batch,
            **self._visual_kwargs(visual, len(sequences)),
            mm_encoder_outputs={visual.modality: encoded},
            use_cache=False,
            logits_to_keep=logits_to_keep,
        )
        return output.logits

    @contextlib.contextmanager
    def _call_scope(self) -> Iterator[None]:
        """Drop the model's cached rope deltas after a call, so nothing of it stays referenced."""
        try:
            yield
        finally:
            self.model.model.rope_deltas = None

    @staticmethod
    def _batches(count: int, per_batch: int) -> list[range]:
        size = count if per_batch <= 0 else per_batch
        return [range(start, min(start + size, count)) for start in range(0, count, size)]

    # ---------------------------------------------------------------------------------------- scoring
    def score_yes_no(self, frames: torch.Tensor, questions: Sequence[str], visual: CriticInputConfig) -> torch.Tensor:
        return self.score(frames, questions, [], [], visual).yes_no_logits

    def score_answers(
        self,
        frames: torch.Tensor,
        queries: Sequence[str],
        answers: Sequence[str],
        visual: CriticInputConfig,
    ) -> list[AnswerLogProbs]:
        return self.score(frames, [], queries, answers, visual).answers

    def score(
        self,
        frames: torch.Tensor,
        questions: Sequence[str],
        queries: Sequence[str],
        answers: Sequence[str],
        visual: CriticInputConfig,
    ) -> CriticScores:
        """Yes/no logits and answer log-likelihoods from one vision-tower pass over the frames."""
        questions, queries, answers = list(questions), list(queries), list(answers)
        if len(queries) != len(answers):
            raise DRFInputError(f"got {len(queries)} queries but {len(answers)} answers; give one answer per query")
        for index, answer in enumerate(answers):
            if not answer.strip():
                raise DRFInputError(f"answer {index} (to {queries[index]!r}) is empty; write the expected answer text")
        answer_ids = (
            torch.tensor([self._single_token_id(word) for word in YES_NO_ANSWERS], device=self.device)
            if questions
            else None
        )
        visual_inputs = self._preprocess(frames, visual)
        empty = torch.zeros((0, len(YES_NO_ANSWERS)), dtype=self._float_dtype, device=self.device)
        if not questions and not queries:
            return CriticScores(yes_no_logits=empty, yes_no_mass=torch.zeros(0), answers=[])
        with self._call_scope():
            features = self._encode(visual_inputs)
            logits, mass = self._yes_no(questions, answer_ids, visual_inputs, features, visual.max_questions_per_batch)
            scored = self._answers(queries, answers, visual_inputs, features, visual.max_questions_per_batch)
        return CriticScores(yes_no_logits=empty if logits is None else logits, yes_no_mass=mass, answers=scored)

    def _yes_no(
        self,
        questions: list[str],
        answer_ids: torch.Tensor | None,
        visual_inputs: VisualInputs,
        features: tuple[torch.Tensor, ...],
        per_batch: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not questions or answer_ids is None:
            return None, torch.zeros(0)
        prompts = [self._prompt_ids(yes_no_prompt(question), visual_inputs) for question in questions]
        rows, masses = [], []
        for batch in self._batches(len(prompts), per_batch):
            last = self._language_forward([prompts[i] for i in batch], visual_inputs, features, 1)[:, -1, :]
            rows.append(last.index_select(-1, answer_ids).to(self._float_dtype))
            with torch.no_grad():  # reported, not rewarded: p(Yes) + p(No) among all tokens
                log_probs = torch.log_softmax(last.detach().float(), dim=-1).index_select(-1, answer_ids)
                masses.append(log_probs.logsumexp(-1).exp().cpu())
        return torch.cat(rows, dim=0), torch.cat(masses)

    def _answers(
        self,
        queries: list[str],
        answers: list[str],
        visual_inputs: VisualInputs,
        features: tuple[torch.Tensor, ...],
        per_batch: int,
    ) -> list[AnswerLogProbs]:
        if not queries:
            return []
        encoded_answers = [
            self.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True) for answer in answers
        ]
        answer_ids = [list(encoded["input_ids"]) for encoded in encoded_answers]
        sequences = [self._prompt_ids(q, visual_inputs) + ids for q, ids in zip(queries, answer_ids, strict=True)]
        results: list[AnswerLogProbs] = []
        for batch in self._batches(len(sequences), per_batch):
            batch_sequences = [sequences[i] for i in batch]
            length = max(len(s) for s in batch_sequences)
            longest = max(len(answer_ids[i]) for i in batch)
            # Position p predicts token p + 1: keep the positions that predict the answer tokens.
            positions = torch.arange(length - longest - 1, length - 1, device=self.device)
            logits = self._language_forward(batch_sequences, visual_inputs, features, positions)
            log_probs = torch.log_softmax(logits.to(self._float_dtype), dim=-1)
            for row, index in enumerate(batch):
                ids = answer_ids[index]
                targets = torch.tensor(ids, dtype=torch.long, device=self.device)
                picked = log_probs[row, longest - len(ids) :].gather(-1, targets[:, None])[:, 0]
                spans = [tuple(span) for span in encoded_answers[index]["offset_mapping"]]
                results.append(AnswerLogProbs(answer=answers[index], token_logprobs=picked, token_spans=spans))
            del logits, log_probs
        return results

    # ------------------------------------------------------------------------------------- generation
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Generation runs in eval mode (with the KV cache), whatever checkpointing set."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._call_scope():
                yield
        finally:
            self.model.train(was_training)

    def _greedy(self, batch: dict[str, Any], max_new_tokens: int) -> str:
        if max_new_tokens < 1:
            raise DRFInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        output = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
        )
        new_tokens = output[0, batch["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    def generate(self, frames: torch.Tensor, question: str, visual: CriticInputConfig, max_new_tokens: int = 64) -> str:
        with self._eval_mode():
            visual_inputs = self._preprocess(frames.detach() if isinstance(frames, torch.Tensor) else frames, visual)
            batch = self._left_pad([self._prompt_ids(question, visual_inputs)], visual_inputs.modality)
            return self._greedy({**batch, **self._pixel_kwargs(visual_inputs)}, max_new_tokens)

    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int = 512) -> str:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        ids = self.tokenizer(self._render(messages), add_special_tokens=False)["input_ids"]
        with self._eval_mode():
            return self._greedy(self._left_pad([ids], None), max_new_tokens)

    # ------------------------------------------------------------------------------------------ memory
    def modules_to_free(self) -> list[torch.nn.Module]:
        return [self.model]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """transformers checkpoints layers only in train mode, so enabling also calls `train()` (dropout is 0:
        `from_folder` zeroes every dropout setting); disabling goes back to `eval()`."""
        if enabled:
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers before activation_checkpointing_enable existed
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.train()
        else:
            if hasattr(self.model, "activation_checkpointing_disable"):
                self.model.activation_checkpointing_disable()
            else:
                self.model.gradient_checkpointing_disable()
            self.model.eval()


class Qwen2VLCritic(QwenVLCritic):
    """Qwen2-VL: the same preprocessing, prompt layout and scoring; no `second_per_grid_ts` input."""

    family: ClassVar[str] = "qwen2_vl"
    model_class_name: ClassVar[str] = "Qwen2VLForConditionalGeneration"
    uses_second_per_grid_ts: ClassVar[bool] = False

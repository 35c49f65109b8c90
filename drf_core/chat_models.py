"""Language models that write questions: load a local folder as something with `chat(text)`.

`load_chat_model(folder)` reads the folder's `config.json` and picks a loader from
`CHAT_MODEL_LOADERS` by what the folder holds: a vision-language model the critics know
(Qwen2.5-VL, Qwen2-VL: `critics.load_critic`, then its text-only `chat`) or any transformers causal
LM (`CausalLMChat` over `AutoModelForCausalLM`, which does not take VLM configs). Adding a kind is
one registry entry. Nothing is downloaded.

Knows nothing about questions or prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import resolve_device, resolve_dtype
from .errors import ModelFolderError
from .io import read_model_config
from .registry import Registry

ChatLoader = Callable[[Path, str, str, int], Any]
CHAT_MODEL_LOADERS: Registry[ChatLoader] = Registry("language-model loader")


def chat_model_kind(folder: str | Path) -> str:
    """The `CHAT_MODEL_LOADERS` key for `folder`: "critic" for a VLM the critics load, else "causal_lm"."""
    from .critics import CRITICS

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(
            f"language model folder {folder} does not exist; give the folder of a local instruct LLM or of the "
            "critic's vision-language model (e.g. Qwen2.5-VL-7B-Instruct) in transformers format"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            f"{folder} has no config.json; give the folder of a transformers model (config.json, weights, "
            "tokenizer files)"
        )
    config = read_model_config(config_file)
    model_type = config.get("model_type")
    return "critic" if model_type in CRITICS else "causal_lm"


def load_chat_model(folder: str | Path, dtype: str = "auto", device: str = "auto", max_new_tokens: int = 512) -> Any:
    """Load `folder` as a chat model (an object with `chat(prompt, system=None, max_new_tokens=...)`)."""
    folder = Path(folder).expanduser()
    return CHAT_MODEL_LOADERS.get(chat_model_kind(folder))(folder, dtype, device, max_new_tokens)


@CHAT_MODEL_LOADERS.register("critic")
def _load_critic_for_chat(folder: Path, dtype: str, device: str, max_new_tokens: int) -> Any:
    from .critics import load_critic

    return load_critic(folder, dtype, device)


@CHAT_MODEL_LOADERS.register("causal_lm")
def _load_causal_lm(folder: Path, dtype: str, device: str, max_new_tokens: int) -> Any:
    return CausalLMChat(folder, dtype=dtype, device=device, max_new_tokens=max_new_tokens)


class CausalLMChat:
    """`chat(prompt, system=None, max_new_tokens=None) -> str` over a local instruct LLM folder.

    Loads with `AutoModelForCausalLM` / `AutoTokenizer` (`local_files_only=True`, no remote code),
    answers greedily, and uses the tokenizer's chat template when it has one. Also callable as
    `chat(prompt)` (with the constructor's `max_new_tokens`), so it fits every place that takes a
    `str -> str` function.
    """

    def __init__(
        self, folder: str | Path, dtype: str = "auto", device: str = "auto", max_new_tokens: int = 512
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(
                f"language model folder {folder} does not exist; give the folder of a local instruct LLM "
                "in transformers format"
            )
        if not (folder / "config.json").is_file():
            raise ModelFolderError(
                f"{folder} has no config.json; give the folder of a transformers causal LM "
                "(config.json, weights, tokenizer files)"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device_ = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, dtype=resolve_dtype(dtype, device_)
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelFolderError(
                f"{folder} could not be loaded as a causal language model ({error}); give the folder of an "
                "instruct LLM that transformers' AutoModelForCausalLM loads"
            ) from None
        self.folder: Path | None = folder
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.model = model.to(device_).eval()

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, max_new_tokens: int = 512) -> CausalLMChat:
        """Wrap a causal LM and tokenizer that are already loaded (nothing is moved or cast)."""
        chat = cls.__new__(cls)
        chat.folder, chat.max_new_tokens, chat.tokenizer, chat.model = None, max_new_tokens, tokenizer, model
        return chat

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def chat(self, prompt: str, system: str | None = None, max_new_tokens: int | None = None) -> str:
        """Greedy reply to `prompt` (at most `max_new_tokens`, default: the constructor's value)."""
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            inputs = self.tokenizer((f"{system}\n\n" if system else "") + prompt + "\n", return_tensors="pt")
        inputs = inputs.to(self.device)
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def __call__(self, prompt: str) -> str:
        return self.chat(prompt)

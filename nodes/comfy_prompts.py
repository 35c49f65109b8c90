"""Text conditioning for the ComfyUI backend: from a CLIP, or CONDITIONING the user encoded already.

`ComfyPrompts` encodes a text as core CLIP Text Encode does (once per text) or looks it up among
connected CONDITIONING, and batches the texts of one step as ComfyUI batches conditioning, with the
entries Flux needs beside the text tensor (`pooled_output`, and `guidance` as core FluxGuidance sets it).

Knows CONDITIONING's layout (`[[tensor, {options}]]`) and the CLIP's `tokenize` /
`encode_from_tokens_scheduled`; no `comfy` import, nothing about models or sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..drf_core.errors import DRFInputError

# The CONDITIONING entries kept beside the text tensor (Flux: its vector input and FluxGuidance's value).
CONDITIONING_EXTRAS = ("pooled_output", "guidance")


@dataclass
class ComfyPrompts:
    """Where text conditioning comes from: a CLIP, and/or CONDITIONING already encoded for given texts."""

    clip: Any = None
    encoded: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # CONDITIONING_EXTRAS per text

    def tensor(self, text: str) -> torch.Tensor:
        """`[1, L, D]` for `text` (encoded once, as core CLIP Text Encode encodes it)."""
        if text not in self.encoded:
            if self.clip is None:
                known = ", ".join(repr(t[:60]) for t in self.encoded) or "none"
                raise DRFInputError(
                    f"no CLIP is connected to Video Model from ComfyUI and no CONDITIONING was given for the text "
                    f"{text[:80]!r} (conditioning is given for: {known}); connect a CLIP, or encode exactly this "
                    "text and connect it with its prompt"
                )
            tokens = self.clip.tokenize(text)
            conditioning = self.clip.encode_from_tokens_scheduled(tokens)
            self.encoded[text] = conditioning_tensor(conditioning, f"the CLIP's encoding of {text[:40]!r}")
            self.extras[text] = conditioning_extras(conditioning)
        return self.encoded[text]

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The texts' tensors stacked `[B, L, D]`, and their extras batched as ComfyUI batches conditioning."""
        tensor = _stack([self.tensor(text) for text in texts])
        extras = [self.extras.get(text, {}) for text in texts]
        batched: dict[str, Any] = {}
        for key in CONDITIONING_EXTRAS:
            values = [e.get(key) for e in extras]
            if all(v is None for v in values):
                continue
            if key == "pooled_output":
                if any(v is None for v in values):
                    raise DRFInputError(
                        "some prompts of one batch have a pooled output and some not; encode them all with the same "
                        "CLIP (or use videos_per_step 1)"
                    )
                batched[key] = torch.cat(values, dim=0)
            elif len(set(values)) > 1:
                raise DRFInputError(
                    f"the prompts of one batch have different {key} values {sorted(set(map(str, values)))}; "
                    "use one value for all of them (or videos_per_step 1)"
                )
            else:
                batched[key] = values[0]
        return tensor, batched


def conditioning_tensor(conditioning: Any, what: str) -> torch.Tensor:
    """The text tensor `[1, L, D]` of a one-entry CONDITIONING (its extra entries are not used)."""
    if not isinstance(conditioning, list) or len(conditioning) != 1 or not isinstance(conditioning[0][0], torch.Tensor):
        raise DRFInputError(
            f"{what} must be a CONDITIONING with one entry (as CLIP Text Encode makes it); combined or "
            "area conditioning is not supported for training"
        )
    tensor = conditioning[0][0]
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise DRFInputError(f"{what} holds a tensor of shape {tuple(tensor.shape)}; expected [1, tokens, width]")
    with torch.inference_mode(False):
        return tensor.detach().clone()


def conditioning_extras(conditioning: Any) -> dict[str, Any]:
    """The `CONDITIONING_EXTRAS` entries of a one-entry CONDITIONING that are set (tensors as ordinary copies)."""
    options = conditioning[0][1] if isinstance(conditioning, list) and conditioning else {}
    kept = {}
    for key in CONDITIONING_EXTRAS:
        value = options.get(key)
        if isinstance(value, torch.Tensor):
            with torch.inference_mode(False):
                value = value.detach().clone()
        if value is not None:
            kept[key] = value
    return kept


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    lengths = {t.shape[1] for t in tensors}
    if len(lengths) > 1:
        raise DRFInputError(
            f"the prompts of one batch encode to different token counts {sorted(lengths)}; ComfyUI conditions a "
            "batch with one length: use videos_per_step 1 or prompts of similar length"
        )
    return torch.cat(tensors, dim=0)

"""Weights ComfyUI loaded, made usable by autograd.

ComfyUI runs every prompt in `torch.inference_mode()`, so weights it loaded (and the latent format's
constants) are inference tensors, which autograd refuses to save for backward. `make_autograd_safe`
replaces them with ordinary copies; it is the only place that deals with this, and runs after ComfyUI
has loaded a model onto its device (loading can create new ones).

Knows torch's inference tensors and `comfy.utils.set_attr`; nothing about model families or LoRA.
"""

from __future__ import annotations

import logging
from typing import Any

import comfy.utils
import torch

logger = logging.getLogger(__name__)


def _is_inference(tensor: torch.Tensor) -> bool:
    """True for tensors made in inference mode; some moved by `Module.to()` say otherwise, so the
    version counter (which inference tensors lack) is read as well."""
    if tensor.is_inference():
        return True
    try:
        tensor._version  # noqa: B018 (the read is the test)
    except RuntimeError:
        return True
    return False


def make_autograd_safe(module: torch.nn.Module, *holders: Any) -> int:
    """Replace every inference-mode parameter and buffer of `module` (and tensor attribute of each
    plain object in `holders`, e.g. a latent format) by an ordinary copy; returns how many.

    Values, dtypes, devices and `requires_grad` stay as they were.
    """
    replaced = 0
    with torch.inference_mode(False):
        for name, param in list(module.named_parameters(remove_duplicate=False)):
            if _is_inference(param):
                copy = torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                comfy.utils.set_attr(module, name, copy)
                replaced += 1
        for name, buffer in list(module.named_buffers(remove_duplicate=False)):
            if buffer is not None and _is_inference(buffer):
                owner_name, _, attr = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                owner._buffers[attr] = buffer.clone()
                replaced += 1
        for holder in holders:
            for attr, value in list(vars(holder).items()):
                if isinstance(value, torch.Tensor) and _is_inference(value):
                    setattr(holder, attr, value.clone())
                    replaced += 1
    if replaced:
        logger.debug("replaced %d inference tensors of %s by ordinary copies", replaced, type(module).__name__)
    return replaced

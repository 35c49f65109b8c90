"""The frozen critic's linear weights stored in 8 or 4 bits (bitsandbytes), on a loaded critic.

`quantize_critic(critic, mode)` replaces every `torch.nn.Linear` of the critic's model (language
model and vision tower) by a bitsandbytes layer that stores its weight quantized: "int8" is
LLM.int8 (`Linear8bitLt`, int8 rows + one scale per row, about half of bf16), "int4" is NF4
(`Linear4bit`, two 4-bit codes per byte + one float32 scale per 64 weights, about a quarter of
bf16). The output projection (`lm_head`) stays as it is, as transformers does for its own
quantization configs: the yes/no logits are read from it. Convolutions, norms and embeddings stay
as they are (they are a small part of the weights).

The layers stay differentiable with respect to their input, so the reward's gradient still reaches
the pixels; the weights are frozen (no gradient). It works on the CPU and on CUDA (bitsandbytes'
CPU backend; on CUDA its kernels). Quantization happens layer by layer on the device the weights
are on, so a critic loaded on the GPU never needs more than its unquantized size plus one layer.

Why bitsandbytes (see README, "Memory"): torchao's int4 weight-only layouts need CUDA kernels
(its CPU int4 stores unpacked int8, no saving); optimum-quanto works too but needs a model-wide
`freeze`; bitsandbytes is the library QLoRA uses for exactly this (a frozen 4-bit model that passes
gradients to its inputs), its CPU backend runs both modes, and swapping layers works on a model
that is already loaded (transformers' `BitsAndBytesConfig` only applies while loading).

Knows torch modules and the `Critic` interface; nothing about rewards or training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DRFInputError
from .registry import Registry

logger = logging.getLogger(__name__)

# Modules left unquantized, by the last part of their name (transformers keeps the output embedding).
KEEP_UNQUANTIZED = ("lm_head",)
# LLM.int8's outlier threshold: input columns above it run in 16-bit (transformers' default).
INT8_OUTLIER_THRESHOLD = 6.0
# NF4 blocks of 64 weights share one float32 scale (bitsandbytes' default).
NF4_BLOCK_SIZE = 64


@dataclass(frozen=True)
class CriticQuantizer:
    """One storage format for the critic's linear weights."""

    description: str
    # Bytes per weight element as stored, scales included (for memory estimates); 0: unchanged.
    bytes_per_weight: float
    # (nn.Linear, device) -> the module that replaces it, quantized on `device` (None: the mode changes nothing).
    replace_linear: Callable[[torch.nn.Linear, torch.device], torch.nn.Module] | None


def _bitsandbytes(mode: str) -> Any:
    try:
        import bitsandbytes
    except ImportError as error:
        raise DRFInputError(
            f"critic_quantization {mode!r} needs the bitsandbytes package, which cannot be imported ({error}); "
            "install it (`pip install bitsandbytes`) or set critic_quantization to 'none'"
        ) from None
    return bitsandbytes


def _movable_int8_class(bnb: Any) -> type:
    """`Linear8bitLt` whose matmul state follows the layer when a parent module moves it.

    After its first call the layer keeps its int8 weight and row scales in `self.state`; its own
    `to()` moves them, but `model.to(device)` (what phase offload does) only moves parameters, which
    would leave the state on the old device. `_apply` is what both paths run.
    """

    class MovableLinear8bitLt(bnb.nn.Linear8bitLt):
        def _apply(self, fn: Any, recurse: bool = True) -> MovableLinear8bitLt:
            super()._apply(fn, recurse)
            device = self.weight.device
            if self.state.CB is not None:
                self.state.CB = self.weight.data  # the moved int8 weight (forward reads it from here)
            if self.state.SCB is not None and self.state.SCB.device != device:
                self.state.SCB = self.state.SCB.to(device)
            return self

    return MovableLinear8bitLt


def _int8_linear(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
    bnb = _bitsandbytes("int8")
    layer = _movable_int8_class(bnb)(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=INT8_OUTLIER_THRESHOLD,
        device="meta",
    )
    # Int8Params quantizes when it moves from the CPU to its device (bitsandbytes' documented path).
    weight = linear.weight.data.to("cpu")
    layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.to(device)


def _int4_linear(linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
    bnb = _bitsandbytes("int4")
    dtype = linear.weight.dtype
    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=dtype,
        quant_type="nf4",
        compress_statistics=False,
        device="meta",
    )
    weight = linear.weight.data.to("cpu")
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCK_SIZE, compress_statistics=False
    )
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.to(device)


CRITIC_QUANTIZERS: Registry[CriticQuantizer] = Registry("critic quantization")
CRITIC_QUANTIZERS.add("none", CriticQuantizer("weights as loaded (bf16 on CUDA)", 0.0, None))
CRITIC_QUANTIZERS.add(
    "int8", CriticQuantizer("bitsandbytes LLM.int8: int8 weights, one scale per row", 1.0, _int8_linear)
)
CRITIC_QUANTIZERS.add(
    "int4",
    CriticQuantizer(
        "bitsandbytes NF4: 4-bit weights, one float32 scale per 64", 0.5 + 4.0 / NF4_BLOCK_SIZE, _int4_linear
    ),
)


def quantizable_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The plain `nn.Linear` layers `quantize_critic` replaces, by qualified name."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and name.rsplit(".", 1)[-1] not in KEEP_UNQUANTIZED
    ]


def check_critic_quantization(mode: str, where: str = "critic_quantization") -> None:
    """A clear error for an unknown mode or a missing library, before anything is loaded."""
    if mode not in CRITIC_QUANTIZERS:
        raise DRFInputError(f"{where}: unknown mode {mode!r}; choose one of: {', '.join(CRITIC_QUANTIZERS.names())}")
    if CRITIC_QUANTIZERS.get(mode).replace_linear is not None:
        _bitsandbytes(mode)


def quantize_model_linears(model: torch.nn.Module, mode: str, device: torch.device | None = None) -> int:
    """Replace the model's linear layers in place by `mode`'s layers, quantized on `device` (default: where
    each layer is), one layer at a time; how many were replaced."""
    check_critic_quantization(mode)
    replace = CRITIC_QUANTIZERS.get(mode).replace_linear
    if replace is None:
        return 0
    targets = quantizable_linears(model)
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replace(linear, linear.weight.device if device is None else torch.device(device)))
        del linear
    model.requires_grad_(False)
    return len(targets)


def quantize_critic(critic: Any, mode: str, device: torch.device | str | None = None) -> Any:
    """Store the critic's linear weights as `mode` ("none", "int8", "int4"), in place; returns the critic.

    Works on a critic that is already loaded (on the CPU or on CUDA). With `device`, the critic ends
    there and each layer is quantized there on its way (load on the CPU, quantize into the GPU: the GPU
    never holds the unquantized weights). Quantizing twice with the same mode does nothing; changing the
    mode of a quantized critic is refused (load it again).
    """
    check_critic_quantization(mode)
    current = getattr(critic, "quantization", "none")
    if mode != "none" and current not in ("none", mode):
        raise DRFInputError(
            f"the critic is already stored as {current!r}; it cannot be changed to {mode!r} (the original weights "
            "are gone): load the critic again with the quantization you want"
        )
    target = critic.device if device is None else torch.device(device)
    if mode != "none" and current == "none":
        count = quantize_model_linears(critic.model, mode, target)
        critic.quantization = mode
        logger.info("critic: %d linear layers stored as %s (%s)", count, mode, CRITIC_QUANTIZERS.get(mode).description)
    if target != critic.device:  # what is not quantized (embeddings, norms, convolutions, lm_head) follows
        critic.model.to(target)
        critic.device = target
    return critic


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights of the model's linear layers (plain or bitsandbytes) hold, scales included."""
    total = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight
        total += weight.numel() * weight.element_size()
        for statistic in _weight_statistics(module):
            total += statistic.numel() * statistic.element_size()
    return total


def _weight_statistics(module: torch.nn.Module) -> list[torch.Tensor]:
    """The scales a bitsandbytes layer keeps beside its weight (none for a plain layer)."""
    weight = module.weight
    found: list[torch.Tensor] = []
    # int8 row scales: on the weight until the first call, then in the layer's state.
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    if isinstance(scb, torch.Tensor):
        found.append(scb)
    state = getattr(weight, "quant_state", None)
    if state is not None and isinstance(getattr(state, "absmax", None), torch.Tensor):
        found.append(state.absmax)
    return found

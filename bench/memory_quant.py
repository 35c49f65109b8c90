"""The memory settings `critic_quantization` and `video_weight_storage` applied to the fake models.

`video_weight_storage` runs the engine's own `store_video_weights` (diffusers' layerwise casting:
the same layers, the same hooks), so the trace shows what runs on a GPU: fp8 weights resident,
each layer's weights cast to bf16 while it runs (and, for a layer that runs with gradient, kept
until its backward unless block checkpointing recomputes it). One mechanism is swapped while
tracing (`fake_tensor_layerwise_casting`): the hook's `module.to(dtype)` cannot convert fake
parameters in place (torch swaps a fake parameter's tensors, and refuses: "Cannot swap t2 because
it has weakref associated with it"), so the hook replaces the layer's parameters by converted ones
instead; the bytes allocated and kept alive are the same.

`critic_quantization` cannot run bitsandbytes on fake tensors (its parameter classes quantize in
`.to()`, which a FakeTensorMode refuses: "_apply(): Couldn't swap Linear.weight"). So each layer
`drf_core.quantization.quantize_critic` would replace is replaced here by a stand-in that holds
exactly the tensors bitsandbytes stores (int8: the int8 weight and one float32 scale per row; NF4:
the packed uint8 codes and one float32 scale per 64 weights) and allocates what bitsandbytes'
CUDA path allocates around its matmul: NF4 dequantizes the weight to bf16 for the forward and again
for the backward and saves nothing else; LLM.int8 quantizes the input to int8, multiplies into an
int32 result, saves the layer's input for the backward and dequantizes the weight there. Outlier
columns (LLM.int8's threshold) are data-dependent and not modelled. Weight bytes are exact; the
transient bytes follow the library's code, not a measurement.

Knows the fake models of `memory_models.py` and the engine's two functions; changes neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from drf_core.quantization import NF4_BLOCK_SIZE, check_critic_quantization, quantizable_linears


class _Int8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: _StoredLinear) -> torch.Tensor:
        quantized_input = torch.empty(x.shape, dtype=torch.int8, device=x.device)
        product = torch.empty((*x.shape[:-1], layer.out_features), dtype=torch.int32, device=x.device)
        out = product.to(x.dtype)
        del quantized_input, product
        ctx.layer = layer
        ctx.save_for_backward(x)  # bitsandbytes keeps the input (`ctx.tensors = (CAt, subA, A)`)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        weight = ctx.layer.dequantized(grad_out.dtype)
        return (grad_out @ weight).to(x.dtype), None


class _NF4Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: _StoredLinear) -> torch.Tensor:
        ctx.layer = layer
        ctx.input_dtype = x.dtype
        return x @ layer.dequantized(x.dtype).t()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (grad_out @ ctx.layer.dequantized(grad_out.dtype)).to(ctx.input_dtype), None


class _StoredLinear(torch.nn.Module):
    """A frozen linear layer that holds exactly bitsandbytes' stored tensors (see the module docstring)."""

    def __init__(self, linear: torch.nn.Linear, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.out_features, self.in_features = linear.weight.shape
        device = linear.weight.device
        count = self.out_features * self.in_features
        if mode == "int8":
            self.register_buffer(
                "codes", torch.empty((self.out_features, self.in_features), dtype=torch.int8, device=device)
            )
            self.register_buffer("scales", torch.empty(self.out_features, dtype=torch.float32, device=device))
        else:
            self.register_buffer("codes", torch.empty((count + 1) // 2, dtype=torch.uint8, device=device))
            blocks = -(-count // NF4_BLOCK_SIZE)
            self.register_buffer("scales", torch.empty(blocks, dtype=torch.float32, device=device))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((self.out_features, self.in_features), dtype=dtype, device=self.codes.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        out = (_Int8Matmul if self.mode == "int8" else _NF4Matmul).apply(x, self)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def quantize_fake_critic(critic: Any, mode: str) -> int:
    """Replace the fake critic's quantizable linear layers by stand-ins of `mode`; how many were replaced."""
    check_critic_quantization(mode)
    if mode == "none":
        return 0
    targets = quantizable_linears(critic.model)
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = critic.model.get_submodule(parent_name) if parent_name else critic.model
        setattr(parent, child, _StoredLinear(linear, mode))
    critic.quantization = mode
    return len(targets)


def apply_memory_settings(backend: Any, critic: Any, critic_quantization: str, video_weight_storage: str) -> None:
    """Both settings on the fake models (call inside their FakeTensorMode)."""
    from drf_core.models import store_video_weights

    store_video_weights(backend, video_weight_storage)
    quantize_fake_critic(critic, critic_quantization)


def _convert_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """`module.to(dtype)` for fake tensors: floating parameters and buffers replaced by converted copies."""
    for layer in module.modules():
        for name, param in list(layer._parameters.items()):
            if param is not None and param.is_floating_point() and param.dtype != dtype:
                layer._parameters[name] = torch.nn.Parameter(
                    param.detach().to(dtype), requires_grad=param.requires_grad
                )
        for name, buffer in list(layer._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                layer._buffers[name] = buffer.to(dtype)


@contextlib.contextmanager
def fake_tensor_layerwise_casting() -> Iterator[None]:
    """diffusers' LayerwiseCastingHook converting by replacement instead of `module.to` (see the docstring)."""
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    def initialize_hook(self: Any, module: torch.nn.Module) -> torch.nn.Module:
        _convert_parameters(module, self.storage_dtype)
        return module

    def pre_forward(self: Any, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        _convert_parameters(module, self.compute_dtype)
        return args, kwargs

    def post_forward(self: Any, module: torch.nn.Module, output: Any) -> Any:
        _convert_parameters(module, self.storage_dtype)
        return output

    replaced = {"initialize_hook": initialize_hook, "pre_forward": pre_forward, "post_forward": post_forward}
    originals = {name: getattr(LayerwiseCastingHook, name) for name in replaced}
    for name, function in replaced.items():
        setattr(LayerwiseCastingHook, name, function)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(LayerwiseCastingHook, name, function)

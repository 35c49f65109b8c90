"""Live-byte tracing of a training step: a dispatch mode that counts every tensor storage.

`LiveBytes` is a `TorchDispatchMode`. Every op's output tensors are looked at; a storage seen for
the first time is added to the running total (its size rounded by `round_bytes`) and a weakref
finalizer on the storage subtracts it when the storage dies. Storages that exist before tracing
starts (the models' weights) are registered with `add_resident`. The mode also keeps:

- a phase stack (`phase(name)`), set by wrappers around the engine's calls (see `memory.py`); each
  storage is labelled with the phase that created it (or its model, for weights), so the bytes
  alive at the peak can be split into "weights of the critic", "made while sampling", ...;
- the peak, the phase it happened in and the live bytes per label at that moment, and the peak
  total reached inside each phase.

With `fake_mode` set it is also a *hybrid* fake mode: an op that touches a fake tensor runs under
`fake_mode` (its outputs are fake and allocate nothing), an op on real tensors only runs for real.
Model weights are fake, so everything derived from them is fake; token ids, masks, grids and
positions are built from Python data, stay real and keep their values, so the models' data-dependent
bookkeeping (placeholder counts, M-RoPE positions, window indices) runs exactly. Factories with no
tensor input (`torch.zeros(shape)`) run for real only when small (`REAL_FACTORY_LIMIT` elements).
Values read back from a fake tensor (`.item()`, `float()`, `bool()`, `.tolist()`) have no value to
give: they read as 0 (`False` for `torch.isfinite(...).all()`-style checks would skip the step, so
booleans read as True). Nothing the trainer decides with them changes what is allocated, except the
finite check, which True keeps on the normal path.

Rounding: `cuda_block_bytes` rounds a request up to a multiple of 512 bytes (the CUDA caching
allocator's `kMinBlockSize`; a 0-byte tensor costs nothing), which is what
`torch.cuda.memory_allocated` counts per block. Not modelled: the remainder of a cached block the
allocator does not split, blocks reserved but free (fragmentation), the CUDA context, kernels'
workspaces (cuBLAS, cuDNN, attention kernels' temporaries).

Knows nothing about the engine: `memory.py` drives it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

CUDA_MIN_BLOCK = 512  # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize
REAL_FACTORY_LIMIT = 1 << 20  # elements: larger factory outputs are made fake

_aten = torch.ops.aten
# Ops whose result is a Python number read from the tensor's data.
_prim_device = torch.ops.prim.device.default
_VALUE_READS = {_aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default}


def exact_bytes(nbytes: int) -> int:
    """No rounding: what the CPU allocator is asked for (the profiler reports the same)."""
    return nbytes


def cuda_block_bytes(nbytes: int) -> int:
    """The CUDA caching allocator's accounting: requests rounded up to 512-byte blocks."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_MIN_BLOCK) * CUDA_MIN_BLOCK


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages, by label, with their peak.

    Every storage counts: the trace runs on one device (the models, the activations and the token
    ids all live there, as on the GPU).
    """

    def __init__(self, round_bytes: Callable[[int], int] = exact_bytes, fake_mode: Any = None) -> None:
        super().__init__()
        self.round_bytes = round_bytes
        self.fake_mode = fake_mode
        self._seen: dict[int, tuple[weakref.ref, str, int]] = {}
        self.by_label: Counter[str] = Counter()
        self.total = 0
        self.peak = 0
        self.peak_phase = ""
        self.peak_labels: dict[str, int] = {}
        self.phase_peaks: dict[str, int] = {}
        self._phases: list[str] = ["setup"]
        self.window_peak = 0  # since `reset_window`
        self.ops: Counter[str] = Counter()  # ops dispatched, by phase
        self._host_seen: dict[int, weakref.ref] = {}
        self.host_total = 0
        self.host_peak = 0

    # --- phases ------------------------------------------------------------------------------
    @property
    def current_phase(self) -> str:
        return self._phases[-1]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phases.append(name)
        try:
            yield
        finally:
            self._phases.pop()

    def push_phase(self, name: str) -> None:
        self._phases.append(name)

    def pop_phase(self) -> None:
        self._phases.pop()

    def reset_window(self) -> None:
        self.window_peak = self.total

    # --- bookkeeping ---------------------------------------------------------------------------
    def track(self, tensor: torch.Tensor, label: str | None = None) -> None:
        if tensor.device.type == "meta":  # the host in traces: counted apart (see `_track_host`)
            self._track_host(tensor)
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / nested tensors: none here
            return
        key = id(storage)
        known = self._seen.get(key)
        if known is not None and known[0]() is storage:
            return
        size = self.round_bytes(int(storage.nbytes()))
        label = label or self._phases[-1]
        self._seen[key] = (weakref.ref(storage, lambda _ref, k=key: self._free(k)), label, size)
        self.by_label[label] += size
        self.total += size
        if self.total > self.window_peak:
            self.window_peak = self.total
        phase = self._phases[-1]
        if self.total > self.phase_peaks.get(phase, 0):
            self.phase_peaks[phase] = self.total
        if self.total > self.peak:
            self.peak = self.total
            self.peak_phase = phase
            self.peak_labels = {name: value for name, value in self.by_label.items() if value}

    def _track_host(self, tensor: torch.Tensor) -> None:
        """Tensors the step puts on the host (the meta device in traces: the decode's kept causal
        caches); weights that phase offload moves there are not tensors made by an op and are not
        seen here. Their live total and peak are `host_total` / `host_peak`."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._host_seen:
            return
        size = int(storage.nbytes())
        self._host_seen[key] = weakref.ref(storage, lambda _ref, k=key, n=size: self._free_host(k, n))
        self.host_total += size
        self.host_peak = max(self.host_peak, self.host_total)

    def _free_host(self, key: int, size: int) -> None:
        if self._host_seen.pop(key, None) is not None:
            self.host_total -= size

    def _free(self, key: int) -> None:
        entry = self._seen.pop(key, None)
        if entry is None:
            return
        _, label, size = entry
        self.by_label[label] -= size
        self.total -= size

    def add_resident(self, module: torch.nn.Module | None, label: str) -> int:
        """Register a module's parameters and buffers (made before tracing) under `label`."""
        if module is None:
            return 0
        before = self.by_label[label]
        for tensor in [*module.parameters(), *module.buffers()]:
            self.track(tensor, label)
        return self.by_label[label] - before

    def untrack(self, tensors: list[torch.Tensor]) -> int:
        """Stop counting these storages (they left the device: phase offload's host); bytes dropped."""
        dropped = 0
        for tensor in tensors:
            entry = self._seen.pop(id(tensor.untyped_storage()), None)
            if entry is None:
                continue
            _, label, size = entry
            self.by_label[label] -= size
            self.total -= size
            dropped += size
        return dropped

    def relabel(self, tensors: list[torch.Tensor], label: str) -> None:
        """Move live storages to another label (e.g. optimizer state made during the step)."""
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                continue
            entry = self._seen.get(id(tensor.untyped_storage()))
            if entry is None or entry[1] == label:
                continue
            ref, old, size = entry
            self._seen[id(tensor.untyped_storage())] = (ref, label, size)
            self.by_label[old] -= size
            self.by_label[label] += size

    # --- dispatch ------------------------------------------------------------------------------
    def _needs_fake(self, func: Any, flat: list[Any], args: Any, kwargs: dict[str, Any]) -> bool:
        # A factory (no tensor input): make it fake when its output is large.
        with self.fake_mode:
            probe = func(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(probe) if isinstance(t, torch.Tensor)]
        return any(t.numel() > REAL_FACTORY_LIMIT for t in outputs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[self._phases[-1]] += 1
        if func is _prim_device:
            return func(*args, **kwargs)
        if self.fake_mode is not None:
            flat = pytree.tree_leaves((args, kwargs)) if kwargs else pytree.tree_leaves(args)
            fake = any(type(value) is FakeTensor for value in flat)
            if fake and func in _VALUE_READS:
                return _placeholder_value(func, flat)
            if fake or (
                not any(isinstance(value, torch.Tensor) for value in flat)
                and self._needs_fake(func, flat, args, kwargs)
            ):
                with self.fake_mode:
                    out = func(*args, **kwargs)
            else:
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (tuple, list)):
            for tensor in pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self.track(tensor)
        return out


def _placeholder_value(func: Any, flat: list[Any]) -> Any:
    """What a value read from a fake tensor returns (see the module docstring)."""
    if func is not _aten._local_scalar_dense.default:
        return True
    tensor = next(value for value in flat if isinstance(value, torch.Tensor))
    if tensor.dtype == torch.bool:
        return True
    if tensor.dtype.is_floating_point:
        return 0.0
    return 0


# --- CUDA's autocast policy on the CPU ---------------------------------------------------------------

# Ops CUDA's autocast runs in float32 that the CPU's autocast leaves alone (torch's
# aten/src/ATen/autocast_mode.cpp: AT_FORALL_FP32, and AT_FORALL_FP32_SET_OPT_DTYPE for the ones
# with a `dtype` argument), restricted to those not already in the CPU's own lists.
CUDA_FP32_OPS = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
    "rsqrt", "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus",
    "layer_norm", "native_layer_norm", "group_norm", "logsumexp", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
    "_upsample_nearest_exact3d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d",
    "_upsample_bicubic2d_aa", "_upsample_bilinear2d_aa", "renorm", "dist", "cosine_similarity",
)  # fmt: skip
CUDA_FP32_SET_DTYPE_OPS = (
    "softmax.int", "log_softmax.int", "cumsum", "cumprod", "sum", "sum.dim_IntList",
    "linalg_vector_norm",
)  # fmt: skip
_REDUCED = (torch.bfloat16, torch.float16)


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _REDUCED:
        return value.float()
    return value


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """While active, CPU autocast also runs CUDA's float32 ops in float32 (as CUDA autocast does).

    Registered as Python kernels for the AutocastCPU dispatch key, so they act where autocast acts
    (above autograd: the float32 copies are what autograd saves), and removed on exit.
    """
    library = torch.library.Library("aten", "IMPL")
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32_kernel(op: Any) -> Any:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                args, kwargs = pytree.tree_map(_to_fp32, (args, kwargs))
                return op(*args, **kwargs)

        return kernel

    def set_dtype_kernel(op: Any) -> Any:
        arguments = op._schema.arguments
        position = next(i for i, a in enumerate(arguments) if a.name == "dtype")
        positional = not arguments[position].kwarg_only

        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                reduced = any(isinstance(a, torch.Tensor) and a.dtype in _REDUCED for a in pytree.tree_leaves(args))
                if reduced and positional and (len(args) <= position or args[position] is None):
                    args = (*args[:position], *[None] * (position - len(args)), torch.float32, *args[position + 1 :])
                elif reduced and not positional and kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)

        return kernel

    try:
        for names, make in ((CUDA_FP32_OPS, fp32_kernel), (CUDA_FP32_SET_DTYPE_OPS, set_dtype_kernel)):
            for name in names:
                base, _, overload = name.partition(".")
                packet = getattr(torch.ops.aten, base)
                op = getattr(packet, overload or "default")
                library.impl(name, make(op), "AutocastCPU")
        yield
    finally:
        library._destroy()

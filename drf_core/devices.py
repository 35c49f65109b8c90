"""Which devices this machine offers and how much memory a run used, portably.

Knows torch's device back-ends (CUDA, Apple's MPS, the CPU) and reads host memory through
`psutil`, which works on Windows, macOS and Linux alike (the POSIX-only `resource` module does not
exist on Windows, and its `ru_maxrss` is bytes on macOS but KiB on Linux). Knows nothing about
models or training.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

MIB = 2**20


def mps_available() -> bool:
    """True where torch has Apple's Metal back-end and it can be used (Apple silicon, macOS 12.3+)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device() -> torch.device:
    """The device `auto` means: the first CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_names() -> list[str]:
    """What a device setting may name on this machine: auto, cpu, every CUDA GPU (cuda:N), mps where present."""
    names = ["auto", "cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if mps_available():
        names.append("mps")
    return names


def autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A block that computes in its tensors' own dtypes even inside a training step's autocast.

    The VAE decodes this way, as the pipelines and ComfyUI's VAE Decode do (they never autocast):
    under bf16 autocast the Wan VAE's RMS norms would run in float32 and every residual block would
    keep float32 activations for backward, twice the bf16 memory, for a result that differs from
    the reference decode. Outside autocast (or on a device autocast does not know) it does nothing.
    """
    kind = torch.device(device).type
    try:
        active = torch.is_autocast_enabled(kind)
    except RuntimeError:  # a device type autocast does not support (e.g. meta)
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False) if active else contextlib.nullcontext()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on `device` (CUDA only; elsewhere there is no peak counter)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_memory_mb(device: torch.device) -> float | None:
    """Accelerator memory in MiB: CUDA's peak allocation since the last reset, MPS's current allocation.

    None on the CPU (see `host_memory_mb`).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    if device.type == "mps":
        return torch.mps.current_allocated_memory() / MIB
    return None


def host_memory_mb() -> float | None:
    """This process's host memory in MiB: the peak working set on Windows, the resident set elsewhere.

    psutil reports a peak only on Windows (`peak_wset`); on Linux and macOS this is the current
    resident set. None when psutil is missing.
    """
    try:
        import psutil
    except ImportError:  # a dependency of accelerate and ComfyUI, so normally present
        return None
    info = psutil.Process().memory_info()
    return getattr(info, "peak_wset", info.rss) / MIB

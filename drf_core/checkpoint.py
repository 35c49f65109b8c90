"""Resumable training checkpoints: LoRA weights, optimizer, LR schedule, RNG states, step.

A checkpoint is a folder `checkpoints/step_000042/` with
  `lora.safetensors`   the trainable parameters by name (float32),
  `optimizer.pt`       optimizer + LR-scheduler state and RNG states (tensors, numbers, lists only;
                       read back with `torch.load(weights_only=True)`, which never unpickles code),
  `state.json`         the step, the training config and bookkeeping, readable by people,
  `<name>.safetensors` optional extra tensor files (e.g. `best_lora`: the LoRA of the best
                       held-out evaluation so far).
It is written into a hidden temporary folder and renamed into place, so a crash mid-write never
leaves a checkpoint that looks complete. A run folder holds `checkpoints/` and `metrics.jsonl`;
`next_free_run_dir` finds a folder for a new run that leaves earlier runs untouched.
Knows nothing about models or rewards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import DRFInputError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class Checkpoint:
    step: int
    parameters: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng_state: dict[str, Any]
    state: dict[str, Any]
    path: Path
    extra_tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def capture_rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The sampling generator plus torch's global CPU and CUDA states (dropout, init)."""
    state: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Where `save_checkpoint` puts checkpoint `step` of the run in `output_dir`."""
    return Path(output_dir) / CHECKPOINT_DIR / f"step_{step:06d}"


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    parameters: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    rng_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 3,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep_last`.

    `extra_tensors` maps a file name (without `.safetensors`, not `lora`) to named tensors saved beside
    the LoRA (float32, on the CPU)."""
    final = checkpoint_path(output_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.", dir=root))
    try:
        tensors = {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in parameters.items()}
        save_file(tensors, str(tmp / "lora.safetensors"), metadata={"step": str(step)})
        for name, named in (extra_tensors or {}).items():
            if name == "lora" or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise DRFInputError(f"extra checkpoint file name {name!r}: use letters, digits and _ (not 'lora')")
            extra = {key: t.detach().to("cpu", torch.float32).contiguous() for key, t in named.items()}
            save_file(extra, str(tmp / f"{name}.safetensors"), metadata={"step": str(step)})
        torch.save(
            {"optimizer": optimizer_state, "scheduler": scheduler_state, "rng": rng_state},
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2, default=str), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def holds_run(folder: str | Path) -> bool:
    """True when `folder` already holds a training run: a checkpoint, or metrics of at least one step."""
    folder = Path(folder)
    metrics = folder / METRICS_FILE
    return bool(list_checkpoints(folder)) or (metrics.is_file() and bool(metrics.read_text(encoding="utf-8").strip()))


def next_free_run_dir(folder: str | Path) -> Path:
    """`folder` when it holds no run, else the first of `folder_2`, `folder_3`, ... that holds none.

    A new run goes there, so starting over never overwrites or deletes an earlier run's files.
    """
    folder = Path(folder)
    candidate, number = folder, 1
    while holds_run(candidate):
        number += 1
        candidate = folder.with_name(f"{folder.name}_{number}")
    return candidate


def find_checkpoint(path: str | Path) -> Path | None:
    """`path` itself when it is a checkpoint folder, else the newest checkpoint of a run folder."""
    path = Path(path)
    if (path / "state.json").is_file() and (path / "lora.safetensors").is_file():
        return path
    checkpoints = list_checkpoints(path)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint onto the CPU (optimizer.load_state_dict moves state to the parameters' device)."""
    path = Path(path)
    missing = [name for name in ("state.json", "lora.safetensors", "optimizer.pt") if not (path / name).is_file()]
    if missing:
        raise DRFInputError(
            f"{path} is not a complete training checkpoint (missing {', '.join(missing)}); "
            "point at a run folder or one of its checkpoints/step_* folders"
        )
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    parameters = load_file(str(path / "lora.safetensors"), device="cpu")
    extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    extra_tensors = {
        file.name.removesuffix(".safetensors"): load_file(str(file), device="cpu")
        for file in sorted(path.glob("*.safetensors"))
        if file.name != "lora.safetensors"
    }
    return Checkpoint(
        step=int(state["step"]),
        parameters=parameters,
        optimizer_state=extra["optimizer"],
        scheduler_state=extra["scheduler"],
        rng_state=extra["rng"],
        state=state,
        path=path,
        extra_tensors=extra_tensors,
    )

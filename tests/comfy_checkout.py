"""Where the real ComfyUI for the `comfyui` tests is, or why those tests cannot run.

Knows the environment variables (COMFYUI_DIR, COMFYUI_PYTHON, DRF_REQUIRE_COMFYUI) and pytest's
skip/fail; nothing about servers or nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_COMFYUI_ENV = "DRF_REQUIRE_COMFYUI"


def comfyui_checkout() -> tuple[Path, Path]:
    """`(COMFYUI_DIR, ComfyUI's python)` for the `comfyui` tests.

    Skipped with the reason when `COMFYUI_DIR` is unset or unusable, except with
    `DRF_REQUIRE_COMFYUI=1` (CI sets it): then that is a failure, so the real-ComfyUI tests can never
    silently not run. The python is `COMFYUI_PYTHON`, else `COMFYUI_DIR/../venv/bin/python`.
    """
    value = os.environ.get("COMFYUI_DIR")
    comfy_dir = Path(value) if value else None
    python = Path(os.environ.get("COMFYUI_PYTHON") or (comfy_dir or Path(".")).parent / "venv" / "bin" / "python")
    problem = None
    if comfy_dir is None:
        problem = "COMFYUI_DIR is not set: point it at a ComfyUI folder (and COMFYUI_PYTHON at its venv's python)"
    elif not (comfy_dir / "main.py").is_file() or not (comfy_dir / "comfy" / "sd.py").is_file():
        problem = f"COMFYUI_DIR={comfy_dir} is not a ComfyUI folder (no main.py / comfy/sd.py)"
    elif not python.is_file():
        problem = f"ComfyUI's python {python} does not exist: set COMFYUI_PYTHON (tools/comfyui_venv.sh makes one)"
    if problem is not None:
        if os.environ.get(REQUIRE_COMFYUI_ENV) == "1":
            pytest.fail(f"{REQUIRE_COMFYUI_ENV}=1 but the real-ComfyUI tests cannot run: {problem}")
        pytest.skip(problem)
    return comfy_dir, python

"""The pack on Windows and macOS: no POSIX-only module anywhere in it, devices chosen portably.

`portability/posix_free_run.py` imports the pack the way ComfyUI does (the repository as one
package), every module of `drf_core` and `nodes`, with `resource`, `fcntl`, `pwd`, `grp` and
`termios` refused to the pack's own import statements, and trains one step on the tiny models.
A static scan backs it up: no such import is written anywhere in the pack, even inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drf_core import devices
from drf_core.config import resolve_device
from drf_core.errors import DRFInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = {"resource", "fcntl", "pwd", "grp", "termios"}
PACK_SOURCES = ("__init__.py", "drf_core", "nodes", "tools")


def pack_files() -> list[Path]:
    files = []
    for entry in PACK_SOURCES:
        path = REPO_ROOT / entry
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return files


def test_no_posix_only_import_is_written_anywhere_in_the_pack():
    found = []
    for path in pack_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
            found += [f"{where} {name}" for name in names if name.split(".")[0] in POSIX_ONLY]
    assert not found, f"POSIX-only imports (the pack must load on Windows): {found}"


def _text_io_without_encoding(node: ast.AST) -> bool:
    """A call that reads or writes text in the locale's encoding (cp1252 on many Windows machines)."""
    if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
        return True
    if isinstance(func, ast.Name) and func.id == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        return not (isinstance(mode, ast.Constant) and "b" in str(mode.value))
    return False


def test_text_files_are_read_and_written_as_utf8_everywhere_in_the_pack():
    """Prompts and questions are any language; Windows' default text encoding would garble or refuse them."""
    found = []
    for path in pack_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(REPO_ROOT)}:{n.lineno}" for n in ast.walk(tree) if _text_io_without_encoding(n)]
    assert not found, f"text I/O without encoding='utf-8': {found}"


@pytest.mark.slow
def test_pack_imports_and_trains_with_posix_only_modules_unavailable(tiny_models, tmp_path):
    script = REPO_ROOT / "tests" / "portability" / "posix_free_run.py"
    args = [sys.executable, str(script), str(REPO_ROOT), str(tiny_models.wan), str(tiny_models.qwen), str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["refused"] == []
    imported = set(report["imported"])
    assert {"comfyui_diffusiondrf.drf_core.trainer", "comfyui_diffusiondrf.drf_core.api"} <= imported
    assert "comfyui_diffusiondrf.nodes.train" in imported
    # Only the ComfyUI bridge modules (nodes/_comfy*.py, nodes/comfy_*.py) may need ComfyUI.
    assert all(name.rsplit(".", 1)[-1].startswith(("_comfy", "comfy_")) for name in report["comfy_only"])
    assert "comfyui_diffusiondrf.nodes._comfy" in report["comfy_only"]
    assert report["steps"] == 1 and torch.isfinite(torch.tensor(report["metrics"]["reward"]))
    assert report["metrics"]["host_memory_mb"] > 0 and report["metrics"]["peak_memory_mb"] is None


def test_the_guard_really_refuses_a_posix_import_written_in_the_pack(tmp_path):
    """The import hook itself must bite, or the test above proves nothing."""
    (tmp_path / "__init__.py").write_text("import resource\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import posix_free_run as r; from pathlib import Path; "
        "sys.modules.pop('resource', None); g = r.RefusePosixToThePack(Path(sys.argv[2])); sys.meta_path.insert(0, g)\n"
        "try:\n    r.import_pack(Path(sys.argv[2]))\nexcept ModuleNotFoundError as e:\n    print('refused', e.name)"
    )
    script_dir = REPO_ROOT / "tests" / "portability"
    done = subprocess.run(
        [sys.executable, "-c", code, str(script_dir), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "refused resource", done.stderr[-2000:]


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert "mps" in devices.device_names()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_unavailable_devices_are_refused_with_what_to_use(monkeypatch):
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert "mps" not in devices.device_names()
    with pytest.raises(DRFInputError, match="no usable MPS"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(DRFInputError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(DRFInputError, match="unknown device"):
        resolve_device("tpu9")

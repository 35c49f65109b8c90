"""Atomic writes and folder-confined names (what every saved file and user-named output relies on)."""

from __future__ import annotations

import os

import pytest

from drf_core.errors import DRFInputError
from drf_core.io import atomic_write, safe_child_path, write_text_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"], "no temporary file left behind"
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "normal permissions, not mkstemp's 0600"


def test_safe_child_path_keeps_names_inside_the_folder(tmp_path):
    assert safe_child_path(tmp_path, "style") == (tmp_path / "style").resolve()
    assert safe_child_path(tmp_path, "style", ".safetensors") == (tmp_path / "style.safetensors").resolve()
    assert (
        safe_child_path(tmp_path, "wan/style.safetensors", ".safetensors")
        == (tmp_path / "wan" / "style.safetensors").resolve()
    )
    (tmp_path / "link").symlink_to(tmp_path.parent)
    for bad in ("../escape", "/etc/passwd", "", "  ", "a\x00b", "link/outside"):
        with pytest.raises(DRFInputError):
            safe_child_path(tmp_path, bad, ".safetensors")


def test_safe_child_path_takes_either_separator_and_refuses_windows_escapes(tmp_path):
    expected = (tmp_path / "drf" / "wan_drf.safetensors").resolve()
    # ComfyUI lists sub-folder names with the system's separator: "drf\\wan_drf" on Windows.
    assert safe_child_path(tmp_path, "drf/wan_drf", ".safetensors") == expected
    assert safe_child_path(tmp_path, "drf\\wan_drf", ".safetensors") == expected
    assert safe_child_path(tmp_path, "drf\\wan_drf", "", follow_symlinks=True) == tmp_path / "drf" / "wan_drf"
    for bad in ("..\\escape", "drf\\..\\..\\escape", "C:\\Windows\\evil", "C:evil", "\\\\server\\share\\x", "\\rooted"):
        with pytest.raises(DRFInputError, match="must stay inside"):
            safe_child_path(tmp_path, bad, ".safetensors")

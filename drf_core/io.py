"""Safe file output: atomic writes and names that cannot leave their folder.

Every file the engine writes (LoRA, checkpoints, metrics, previews, reports) goes through
`atomic_write` so a crash or an interrupt never leaves a half-written file under the final name.
Knows nothing about what is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import DRFInputError, ModelFolderError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temporary file lives in the same folder, so the final `os.replace` is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_image_atomic(image: Any, path: str | Path) -> Path:
    """A PIL image, format from the suffix (PNG, JPEG, WebP)."""
    path = Path(path)
    with atomic_write(path, suffix=path.suffix) as tmp:
        image.save(tmp)
    return path


def safe_child_path(folder: str | Path, name: str, suffix: str | None = None, follow_symlinks: bool = False) -> Path:
    """`folder/name` (with `suffix` added when missing), refusing names that leave `folder`.

    Sub-folders inside `folder` are allowed ("wan/my_style", or "wan\\my_style" as Windows lists it:
    both separators work on every system); absolute paths, drive letters, `..` and names
    that resolve (through symlinks) outside `folder` raise `DRFInputError`. With
    `follow_symlinks` (for reading models a user linked into the folder) only the name itself
    is checked, and the returned path keeps the link.
    """
    if not name or not name.strip():
        raise DRFInputError("the file name is empty; give a name such as 'my_style'")
    if "\x00" in name:
        raise DRFInputError("the file name contains a NUL character")
    # Either separator on every system: ComfyUI lists "drf\\wan_drf" on Windows, users type "drf/wan_drf".
    portable = PurePosixPath(name.replace("\\", "/"))
    if portable.is_absolute() or PureWindowsPath(name).drive or ".." in portable.parts:
        raise DRFInputError(
            f"file name {name!r} must stay inside {folder}; use a plain name without '..', a drive or '/' at the start"
        )
    relative = Path(*portable.parts)
    if suffix and relative.suffix.lower() != suffix.lower():
        relative = relative.with_name(relative.name + suffix)
    if follow_symlinks:
        return Path(folder) / relative
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise DRFInputError(f"file name {name!r} resolves outside {folder}; choose another name")
    return target


def read_model_config(config_file: Path) -> dict[str, Any]:
    """A model folder's `config.json` as a dict; a clear `ModelFolderError` when it is not readable JSON."""
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{config_file} cannot be read as JSON ({error}); re-download the file") from None
    return config if isinstance(config, dict) else {}

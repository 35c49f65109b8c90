"""Start-up shared by the scripts run with ComfyUI's interpreter (imported by them).

`start("--model", "--out-dir")` parses `--comfyui-dir`, `--pack-dir` and the script's own required
options, puts ComfyUI on the path with its arguments set to `--cpu` (as the test server runs it), and
makes the pack importable as the package `drf_pack` through a link in a temporary folder (the
nodes' relative imports need a package; the link keeps the checkout unchanged). Import ComfyUI and
the pack after calling it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def start(*names: str, pack: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for name in ("--comfyui-dir", *(("--pack-dir",) if pack else ()), *names):
        parser.add_argument(name, required=True)
    options = parser.parse_args()
    sys.path.insert(0, options.comfyui_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    if pack:
        link_root = Path(tempfile.mkdtemp())
        (link_root / "drf_pack").symlink_to(Path(options.pack_dir).resolve())
        sys.path.insert(0, str(link_root))
    return options

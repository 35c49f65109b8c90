"""Picture of the main workflow for the README (developer tool, not run by CI).

    COMFYUI_DIR=/path/to/ComfyUI python tools/readme_screenshot.py [--workflow workflows/drf_train_wan_lora.json]

Starts a throw-away headless ComfyUI with only this pack (tests/comfy_server.py), with tiny random
models placed under the real models' folder names so the loaders' lists show what a user sees, and
renders the workflow with tools/screenshot_workflow.py into docs/<workflow name>.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tools")]

from screenshot_workflow import screenshot_workflow  # noqa: E402

from drf_core.tiny import write_tiny_models  # noqa: E402
from tests.comfy_server import ComfyServer  # noqa: E402

logger = logging.getLogger("readme_screenshot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, default=REPO_ROOT / "workflows" / "drf_train_wan_lora.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "train_workflow.png")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        parser.error("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its python if needed)")
    with tempfile.TemporaryDirectory() as work:
        tiny = write_tiny_models(Path(work) / "tiny")
        server = ComfyServer(Path(comfy_dir), REPO_ROOT, Path(work) / "comfy", pack_name="ComfyUI-DiffusionDRF")
        for folder, name, target in (
            ("diffusers", "Wan2.1-T2V-1.3B-Diffusers", tiny.wan),
            ("vlm", "Qwen2.5-VL-7B-Instruct", tiny.qwen),
        ):
            (server.models_dir / folder).mkdir(parents=True, exist_ok=True)
            (server.models_dir / folder / name).symlink_to(target, target_is_directory=True)
        with server:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            workflow = json.loads(args.workflow.read_text())
            screenshot_workflow(
                server.url, workflow, args.out, name=args.workflow.stem, width=args.width, height=args.height
            )
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

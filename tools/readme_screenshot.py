"""Pictures of the example workflows: the README's, and the template browser's thumbnails (developer tool, not CI).

    COMFYUI_DIR=/path/to/ComfyUI python tools/readme_screenshot.py [--workflow W.json --out docs/X.png]
    COMFYUI_DIR=/path/to/ComfyUI python tools/readme_screenshot.py --thumbnails [--only NAME ...]

Starts a throw-away headless ComfyUI with only this pack (tests/comfy_server.py), with tiny random
models placed under the real models' folder names so the loaders' lists show what a user sees, and
renders workflows with tools/screenshot_workflow.py: the main one into docs/train_workflow.png, or
with --thumbnails every workflows/*.json (or the --only ones) into a same-name .jpg beside it
(ComfyUI's template browser shows those as the workflows' pictures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tools")]

from screenshot_workflow import screenshot_workflow  # noqa: E402

from drf_core.tiny import write_tiny_models  # noqa: E402
from tests.comfy_server import ComfyServer  # noqa: E402

logger = logging.getLogger("readme_screenshot")
THUMBNAIL_SIZE = (800, 450)
THUMBNAIL_QUALITY = 85
THUMBNAIL_MIN_ZOOM = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, default=REPO_ROOT / "workflows" / "drf_train_wan_lora.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "train_workflow.png")
    parser.add_argument("--width", type=int, default=1800)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--thumbnails", action="store_true", help="write workflows/<name>.jpg for every workflow")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="with --thumbnails: only these workflows (stems)")
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
        # The core loaders' lists: the editor only draws the workflows, nothing runs, so empty files do.
        for folder, name in (
            ("diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors"),
            ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
            ("vae", "wan_2.1_vae.safetensors"),
            ("diffusion_models", "flux1-dev.safetensors"),
            ("text_encoders", "clip_l.safetensors"),
            ("text_encoders", "t5xxl_fp16.safetensors"),
            ("vae", "ae.safetensors"),
            ("diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"),
            ("vae", "wan2.2_vae.safetensors"),
            ("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
            ("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
        ):
            (server.models_dir / folder).mkdir(parents=True, exist_ok=True)
            (server.models_dir / folder / name).touch()
        with server:
            if args.thumbnails:
                for path in sorted((REPO_ROOT / "workflows").glob("*.json")):
                    if args.only and path.stem not in args.only:
                        continue
                    write_thumbnail(server.url, path, Path(work) / f"{path.stem}.png")
            else:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
                screenshot_workflow(
                    server.url, workflow, args.out, name=args.workflow.stem, width=args.width, height=args.height
                )
                logger.info("wrote %s", args.out)


def write_thumbnail(url: str, workflow_path: Path, scratch: Path) -> None:
    """`workflows/<name>.jpg`: the editor's picture of the workflow, small enough for the template browser."""
    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    # The editor draws nodes without text below ~60 % zoom: a wide graph gets a wider (16:9) window.
    extent = max(node["pos"][0] + node["size"][0] for node in workflow["nodes"]) - min(
        node["pos"][0] for node in workflow["nodes"]
    )
    width = max(1600, int(extent / THUMBNAIL_MIN_ZOOM))
    screenshot_workflow(url, workflow, scratch, name=workflow_path.stem, width=width, height=width * 9 // 16)
    with Image.open(scratch) as picture:
        picture.convert("RGB").resize(THUMBNAIL_SIZE, Image.Resampling.LANCZOS).save(
            workflow_path.with_suffix(".jpg"), quality=THUMBNAIL_QUALITY
        )
    logger.info("wrote %s", workflow_path.with_suffix(".jpg"))


if __name__ == "__main__":
    main()

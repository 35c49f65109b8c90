"""Smoke check of tests/comfy_server.py against a real ComfyUI (set COMFYUI_DIR; skipped otherwise).

Starts ComfyUI with an empty dummy pack (not this repository), runs a model-free core prompt
(EmptyImage -> PreviewImage), reads its history, checks a rejected prompt reports its node errors, interrupts a
slow model-free prompt once it runs, and checks the ComfyUI checkout gained no files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.comfy_checkout import comfyui_checkout
from tests.comfy_server import ComfyPromptError, ComfyServer, history_error

pytestmark = pytest.mark.comfyui

DUMMY_PACK_NAME = "ComfyUI-HarnessDummy"


def _comfy_dir() -> Path:
    return comfyui_checkout()[0]


def _files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if ".git" not in path.parts}


def _blur_chain(blurs: int) -> dict:
    """A model-free prompt that takes seconds on a CPU: blur a 4 x 2048 x 2048 batch `blurs` times."""
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 4, "color": 0}}}
    for node in range(2, blurs + 2):
        blur_inputs = {"image": [str(node - 1), 0], "blur_radius": 31, "sigma": 5.0}
        prompt[str(node)] = {"class_type": "ImageBlur", "inputs": blur_inputs}
    prompt["99"] = {"class_type": "PreviewImage", "inputs": {"images": [str(blurs + 1), 0]}}
    return prompt


def test_server_runs_a_core_prompt_and_leaves_the_checkout_alone(tmp_path):
    comfy_dir = _comfy_dir()
    pack_dir = tmp_path / DUMMY_PACK_NAME
    pack_dir.mkdir()
    (pack_dir / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    checkout_before = _files_under(comfy_dir)

    with ComfyServer(comfy_dir, pack_dir, tmp_path / "work") as server:
        assert (server.custom_nodes_dir / DUMMY_PACK_NAME).resolve() == pack_dir.resolve()
        assert sorted(p.name for p in server.custom_nodes_dir.iterdir()) == [DUMMY_PACK_NAME]
        assert "width" in server.object_info("EmptyImage")["input"]["required"]
        assert server.workflow_templates() == {}

        prompt = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        entry = server.wait(server.queue(prompt), timeout=120, check=True)
        assert history_error(entry) is None
        (image,) = entry["outputs"]["2"]["images"]
        assert image["type"] == "temp"
        assert (server.temp_dir / image["subfolder"] / image["filename"]).is_file()

        bad_prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}}
        bad_prompt["2"] = {"class_type": "PreviewImage", "inputs": {}}
        with pytest.raises(ComfyPromptError) as rejected:
            server.queue(bad_prompt)
        assert "2" in rejected.value.body["node_errors"]

        slow_prompt = _blur_chain(blurs=8)
        slow_id = server.queue(slow_prompt)
        assert server.wait_until_running(slow_id, timeout=60)
        server.interrupt()
        interrupted = server.wait(slow_id, timeout=120)
        assert (history_error(interrupted) or "").startswith("interrupted at node")
        assert "99" not in interrupted["outputs"]

        server.free()
        assert DUMMY_PACK_NAME in server.log_text()

    assert not server.is_alive()
    assert _files_under(comfy_dir) == checkout_before

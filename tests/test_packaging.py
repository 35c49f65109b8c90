"""What ComfyUI-Manager and the ComfyUI registry read: requirements.txt and pyproject.toml agree.

ComfyUI-Manager installs `requirements.txt`; the registry (`comfy node publish`) reads
`pyproject.toml`. They must list the same packages, never torch (ComfyUI owns it), and the files
`[tool.comfy]` points at must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

from drf_core import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*$")  # the registry's node-id rule


def requirement_lines() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def package_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_requirements_and_pyproject_list_the_same_packages_and_never_torch():
    assert PYPROJECT["project"]["dependencies"] == requirement_lines()
    names = {package_name(r) for r in requirement_lines()}
    assert not names & {"torch", "torchvision", "torchaudio"}


def test_project_metadata_the_registry_needs():
    project = PYPROJECT["project"]
    assert NAME_RULE.match(project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert project["version"] == __version__ and re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["urls"]["Repository"].startswith("https://")
    assert (REPO_ROOT / project["license"]["file"]).is_file()


def test_tool_comfy_points_at_files_that_ship():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("docs/icon.png")
    assert (REPO_ROOT / "docs" / "icon.png").is_file()
    for folder in comfy["includes"]:
        assert (REPO_ROOT / folder).is_dir(), folder
    assert list((REPO_ROOT / "workflows").glob("*.json")), "the example workflows ship in workflows/"

"""Which of ComfyUI's V3 node APIs to build this pack's nodes with.

ComfyUI ships its V3 API under versioned packages (`comfy_api.v0_0_2`, ...) listed in
`comfy_api/version_list.py`, plus `comfy_api.latest`, which moves with every release. A versioned
package stays the same across ComfyUI updates, so the newest versioned one that exports `io` is
used; `comfy_api.latest` only when none does (an older or a much newer ComfyUI). Knows nothing
about the nodes; imports ComfyUI only when `pick_io` is called (so it is testable anywhere).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

LATEST_MODULE = "comfy_api.latest"
VERSION_LIST_MODULE = "comfy_api.version_list"


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()  # not a numbered version ("latest"): never picked as a versioned API


def versioned_modules(versions: Iterable[str]) -> list[str]:
    """`["0.0.1", "latest", "0.0.2"]` -> `["comfy_api.v0_0_2", "comfy_api.v0_0_1"]`, newest first."""
    numbered = sorted((v for v in set(versions) if _version_key(v)), key=_version_key, reverse=True)
    return [f"comfy_api.v{v.replace('.', '_')}" for v in numbered]


def _listed_versions(import_module: Callable[[str], ModuleType]) -> list[str]:
    try:
        listed = import_module(VERSION_LIST_MODULE).supported_versions
    except (ImportError, AttributeError) as error:
        logger.info("ComfyUI has no usable %s (%s); using %s", VERSION_LIST_MODULE, error, LATEST_MODULE)
        return []
    return [str(getattr(api, "VERSION", "")) for api in listed]


def pick_io(import_module: Callable[[str], ModuleType] = importlib.import_module) -> tuple[Any, str]:
    """`(io, module name)`: the V3 `io` module of the newest versioned API, else of `comfy_api.latest`."""
    for name in versioned_modules(_listed_versions(import_module)):
        try:
            io = import_module(name).io
        except (ImportError, AttributeError):
            continue  # a listed version that does not export `io` (e.g. the 0.0.1 template)
        logger.info("DiffusionDRF nodes use ComfyUI's %s", name)
        return io, name
    io = import_module(LATEST_MODULE).io
    logger.info("DiffusionDRF nodes use ComfyUI's %s (no versioned V3 API found)", LATEST_MODULE)
    return io, LATEST_MODULE

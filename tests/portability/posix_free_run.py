"""Import the pack as ComfyUI does, with POSIX-only modules unavailable to it, and train one step.

Run as `python posix_free_run.py REPO_ROOT WAN_DIR QWEN_DIR OUT_DIR` in a fresh interpreter (the
test `test_portability.py` does). An import hook refuses `resource`, `fcntl`, `pwd`, `grp` and
`termios` to any import statement written in the pack's own files, as if the pack ran on Windows;
third-party libraries keep their own platform back-ends (psutil's Linux back-end needs `resource`,
its Windows one does not), so a failure here is always the pack's. Prints one JSON line.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import pkgutil
import sys
from pathlib import Path

POSIX_ONLY = ("resource", "fcntl", "pwd", "grp", "termios")
# Modules that can only import inside ComfyUI (they import comfy / folder_paths / server).
COMFY_ONLY_ROOTS = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "node_helpers")
PACK_NAME = "comfyui_diffusiondrf"


class RefusePosixToThePack(importlib.abc.MetaPathFinder):
    """Refuses POSIX-only modules to import statements in files under `root`; counts the refusals."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve())
        self.refused: list[str] = []

    def _importer_file(self) -> str:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            frame = frame.f_back
        return frame.f_code.co_filename if frame is not None else ""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in POSIX_ONLY:
            return None
        importer = self._importer_file()
        if importer.startswith(self.root) and "site-packages" not in importer:
            self.refused.append(f"{name} from {importer}")
            raise ModuleNotFoundError(f"No module named {name!r} (POSIX-only; Windows has none)", name=name)
        return None


def import_pack(root: Path):
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def import_every_module(root: Path) -> tuple[list[str], list[str]]:
    imported, comfy_only = [], []
    for package in ("drf_core", "nodes"):
        prefix = f"{PACK_NAME}.{package}."
        importlib.import_module(prefix[:-1])
        for info in pkgutil.walk_packages([str(root / package)], prefix):
            if info.name.endswith(".__main__"):
                continue  # the command line entry point runs on import; nothing imports it
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as error:
                if (error.name or "").split(".")[0] not in COMFY_ONLY_ROOTS:
                    raise
                comfy_only.append(info.name)
                continue
            imported.append(info.name)
    return imported, comfy_only


def train_one_step(wan: Path, qwen: Path, out: Path) -> dict:
    api = importlib.import_module(f"{PACK_NAME}.drf_core.api")
    config = importlib.import_module(f"{PACK_NAME}.drf_core.config")
    decompose = importlib.import_module(f"{PACK_NAME}.drf_core.decompose")
    run = config.RunConfig.from_dict(
        {
            "models": {"video_model": str(wan), "critic_model": str(qwen)},
            "train": {
                "prompts": ["a red ball on a table"],
                "steps": 1,
                "video": {"height": 32, "width": 32, "num_frames": 5},
                "sampler": {"num_inference_steps": 2, "truncated_backprop_steps": 1},
                "decode": {"frame_selection": "all", "frame_selection_count": 1},
                "critic_input": {"height": 28, "width": 28},
                "lora": {"rank": 2, "alpha": 2.0},
            },
            "output_dir": str(out),
        }
    )
    models = importlib.import_module(f"{PACK_NAME}.drf_core.models")
    critics = importlib.import_module(f"{PACK_NAME}.drf_core.critics")
    backend = models.load_video_backend(run.models.video_model, "fp32", "cpu")
    critic = critics.load_critic(run.models.critic_model, "fp32", "cpu")
    reward = importlib.import_module(f"{PACK_NAME}.drf_core.reward").DRFReward(
        critic, run.train.reward, run.train.critic_input
    )
    questions = [decompose.decompose(prompt, method="rules") for prompt in run.train.prompts]
    trained = api.train_lora(backend, reward, questions, run.train, out)
    return {"steps": trained.run.final_step, "metrics": trained.run.metrics[-1]}


def main() -> None:
    root, wan, qwen, out = (Path(arg) for arg in sys.argv[1:5])
    for name in POSIX_ONLY:
        sys.modules.pop(name, None)
    guard = RefusePosixToThePack(root)
    sys.meta_path.insert(0, guard)
    import_pack(root)
    imported, comfy_only = import_every_module(root)
    trained = train_one_step(wan, qwen, out)
    sys.stdout.write(
        json.dumps({"imported": imported, "comfy_only": comfy_only, "refused": guard.refused, **trained}) + "\n"
    )


if __name__ == "__main__":
    main()

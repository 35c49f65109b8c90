"""The pack's own models under ComfyUI's memory manager, in ComfyUI's own interpreter; a JSON report.

    python memory_host.py --comfyui-dir DIR --pack-dir REPO --wan WAN_FOLDER --qwen QWEN_FOLDER --out-dir DIR

With the model cache's host set as the pack sets it inside ComfyUI (`ComfyModelHost`), reports:

1. a critic loaded through a loader handle is on ComfyUI's list of loaded models;
2. `unload_all_models` (what "Unload Models" and /free call) and `free_memory` (what ComfyUI calls
   when another model needs the device) take it off; the critic's next forward loads it back, and its
   yes/no logits and pixel gradient equal those before the unload;
3. a diffusers video model's transformer, VAE and text encoder are each on the list; after the
   engine releases the text encoder, ComfyUI's clean-up drops it from the list.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

from comfy_boot import start


def main() -> int:
    options = start("--wan", "--qwen", "--out-dir")
    import comfy.model_management as mm
    import torch
    from drf_pack.drf_core.config import CriticInputConfig
    from drf_pack.nodes.comfy_memory import ComfyModelHost, is_loaded, patcher_of
    from drf_pack.nodes.model_cache import MODEL_CACHE, ModelHandle

    MODEL_CACHE.host = ComfyModelHost()
    report: dict = {}

    def listed() -> list[str]:
        return sorted(m.model.model.drf_name for m in mm.current_loaded_models if not m.is_dead()
                      and hasattr(m.model.model, "drf_name"))  # fmt: skip

    critic = ModelHandle("critic", options.qwen, "fp32", "cpu").get()
    patcher = patcher_of(critic.model)
    report["critic_loaded_after_get"] = is_loaded(patcher)
    report["listed_after_critic"] = listed()

    visual = CriticInputConfig(height=56, width=56)
    questions = ["Is there a red apple?", "Is the table wooden?"]

    def score() -> tuple[list, list]:
        frames = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        logits = critic.score_yes_no(frames, questions, visual)
        (logits[:, 0] - logits[:, 1]).sum().backward()
        return logits.detach().tolist(), frames.grad.flatten()[:64].tolist()

    before = score()
    mm.unload_all_models()
    report["critic_loaded_after_unload_all"] = is_loaded(patcher)
    after_unload = score()
    report["critic_loaded_after_forward"] = is_loaded(patcher)
    report["logits_equal_after_reload"] = after_unload[0] == before[0]
    report["pixel_grad_equal_after_reload"] = after_unload[1] == before[1]
    mm.free_memory(1e30, torch.device("cpu"))
    report["critic_loaded_after_free_memory"] = is_loaded(patcher)
    ModelHandle("critic", options.qwen, "fp32", "cpu").get()  # a node asking for it again
    report["critic_loaded_after_get_again"] = is_loaded(patcher)
    report["cache_loads_critic"] = MODEL_CACHE.loads

    backend = ModelHandle("video_model", options.wan, "fp32", "cpu").get()
    report["listed_with_video_model"] = listed()
    backend.release_text_encoder()
    gc.collect()
    mm.cleanup_models_gc()
    report["listed_after_text_encoder_release"] = listed()

    (Path(options.out_dir) / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

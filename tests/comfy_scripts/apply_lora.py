"""Apply a LoRA file to a Wan model with a real ComfyUI's own loader path; report what happened as JSON.

Run with ComfyUI's interpreter, not ours (it imports only ComfyUI and torch):

    python apply_lora.py --comfyui-dir DIR --model native_wan.safetensors --lora a.safetensors \
        [--lora b.safetensors ...] --out-dir DIR

Steps, as core `UNETLoader` + `LoraLoaderModelOnly` do them: `comfy.sd.load_diffusion_model_state_dict`
(ComfyUI detects the family and size from the original-layout weights), `comfy.utils.load_torch_file`
for each LoRA, `comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)`, then `patch_model()` and
`unpatch_model()`. ComfyUI's log records are captured. `report.json` in `--out-dir` holds ComfyUI's
model type, the load warnings and, per LoRA, its warnings, which weights changed, and per LoRA layer
the largest difference between ComfyUI's patched weight and `W + (alpha / rank) * up @ down`
computed here from the file (layer names taken from the file's keys only). The patched weights of
the LoRA layers go to `patched_<i>.safetensors` for the caller's own check.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"level": record.levelname, "message": record.getMessage()})


def _lora_layers(lora: dict) -> dict[str, dict]:
    """`diffusion_model.X` -> {"down", "up", "alpha"} from the file's keys."""
    suffixes = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}
    layers: dict[str, dict] = {}
    for key, tensor in lora.items():
        for suffix, part in suffixes.items():
            if key.endswith(suffix):
                layers.setdefault(key[: -len(suffix)], {})[part] = tensor
    return layers


def _compare(lora: dict, before: dict, after: dict, torch) -> dict:
    """Which weights changed, and per LoRA layer max |patched - (W + alpha/rank * up @ down)|."""
    layer_diffs: dict[str, float] = {}
    missing_weights = []
    patched = {}
    for base, parts in _lora_layers(lora).items():
        weight_key = f"{base}.weight"
        if weight_key not in before:
            missing_weights.append(weight_key)
            continue
        down, up = parts["down"].float(), parts["up"].float()
        scale = parts["alpha"].item() / down.shape[0] if "alpha" in parts else 1.0
        delta = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(before[weight_key].shape)
        expected = before[weight_key] + (1.0 * scale) * delta
        layer_diffs[weight_key] = (after[weight_key] - expected).abs().max().item()
        patched[weight_key] = after[weight_key].contiguous()
    return {
        "lora_layers": len(layer_diffs) + len(missing_weights),
        "missing_weights": missing_weights,
        "changed_weights": sorted(k for k in before if not torch.equal(before[k], after[k])),
        "max_abs_diff": layer_diffs,
        "largest_lora_delta": max(((after[k] - before[k]).abs().max().item() for k in layer_diffs), default=0.0),
        "patched": patched,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--lora", required=True, action="append", help="repeat to apply several files in turn")
    parser.add_argument("--out-dir", required=True)
    options = parser.parse_args()

    sys.path.insert(0, options.comfyui_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    logging.getLogger().setLevel(logging.INFO)

    import comfy.sd
    import comfy.utils
    import safetensors.torch
    import torch

    try:
        from comfyui_version import __version__ as comfyui_version
    except ImportError:
        comfyui_version = "unknown"

    model_sd = comfy.utils.load_torch_file(options.model, safe_load=True)
    patcher = comfy.sd.load_diffusion_model_state_dict(model_sd, model_options={"dtype": torch.float32})
    if patcher is None:
        raise SystemExit("ComfyUI did not recognise the model state dict")
    load_messages = list(capture.records)
    before = {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}
    results = []
    for index, lora_path in enumerate(options.lora):
        capture.records.clear()
        lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
        patched_model, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
        patched_model.patch_model()
        lora_messages = list(capture.records)
        after = {k: v.detach().clone() for k, v in patched_model.model.state_dict().items()}
        patched_model.unpatch_model()
        result = _compare(lora, before, after, torch)
        result["lora_warnings"] = [r["message"] for r in lora_messages if r["level"] in ("WARNING", "ERROR")]
        safetensors.torch.save_file(result.pop("patched"), str(Path(options.out_dir) / f"patched_{index}.safetensors"))
        results.append(result)

    report = {
        "comfyui_version": comfyui_version,
        "model_class": type(patcher.model).__name__,
        "model_type": str(patcher.model.model_config.unet_config.get("model_type")),
        "load_warnings": [r["message"] for r in load_messages if r["level"] in ("WARNING", "ERROR")],
        "loras": results,
    }
    with open(Path(options.out_dir) / "report.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write tiny models under the file names ComfyUI's own Wan 2.1 text-to-video template loads.

    python template_models.py --comfyui-dir DIR --out MODELS_DIR

Run with ComfyUI's interpreter. Writes `MODELS_DIR/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`
(the tiny UMT5 of `comfy_models.py`, fp16 weights: what matters to the template is the name) and
`MODELS_DIR/vae/wan_2.1_vae.safetensors` (the Wan 2.1 VAE at its fixed size, random weights, fp16).
The diffusion model (`diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`) is the tiny Wan the pack's
own `drf_core.tiny.write_tiny_wan_native` writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from comfy_boot import start

TEXT_ENCODER_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"


def main() -> int:
    options = start("--out", pack=False)
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from comfy_models import random_wan_vae_state, tiny_umt5_state
    from safetensors.torch import save_file

    out = Path(options.out)
    (out / "text_encoders").mkdir(parents=True, exist_ok=True)
    (out / "vae").mkdir(parents=True, exist_ok=True)
    save_file(tiny_umt5_state(torch), str(out / "text_encoders" / TEXT_ENCODER_FILE))
    vae = {k: v.to(torch.float16) for k, v in random_wan_vae_state(WanVAE, torch).items()}
    save_file(vae, str(out / "vae" / VAE_FILE))
    return 0


if __name__ == "__main__":
    sys.exit(main())

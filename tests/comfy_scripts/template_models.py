"""Write tiny models under the file names ComfyUI's own Wan 2.1 text-to-video template loads.

    python template_models.py --comfyui-dir DIR --out MODELS_DIR

Run with ComfyUI's interpreter. Writes `MODELS_DIR/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`
(the tiny UMT5 of `comfy_models.py`, fp16 weights: what matters to the template is the name) and
`MODELS_DIR/vae/wan_2.1_vae.safetensors` (the Wan 2.1 VAE at its fixed size, random weights, fp16).
The diffusion model (`diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`) is the tiny Wan the pack's
own `drf_core.tiny.write_tiny_wan_native` writes.

With `--wan22`, also `MODELS_DIR/vae/wan2.2_vae.safetensors`: the Wan 2.2 VAE (TI2V-5B's; 48 latent
channels) at the fixed size ComfyUI builds it (705 M parameters), random weights, fp16 (1.4 GB). The Wan 2.2
diffusion models of the 5B and A14B templates are tiny transformers the pack's `drf_core.tiny` writes.

With `--flux`, also the files of ComfyUI's Flux dev template: `diffusion_models/flux1-dev.safetensors`
(the smallest Flux ComfyUI loads, bf16), `vae/ae.safetensors` (Flux's VAE, fixed size, fp16),
`text_encoders/clip_l.safetensors` (CLIP-L at its fixed size, fp16) and `text_encoders/t5xxl_fp16.safetensors`
(the tiny T5-XXL the test node `drf_tiny_t5xxl` builds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from comfy_boot import start

TEXT_ENCODER_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"
WAN22_VAE_FILE = "wan2.2_vae.safetensors"
FLUX_FILES = {
    "flux_model": "diffusion_models/flux1-dev.safetensors",
    "flux_vae": "vae/ae.safetensors",
    "clip_l": "text_encoders/clip_l.safetensors",
    "t5xxl": "text_encoders/t5xxl_fp16.safetensors",
}


def main() -> int:
    options = start("--out", "--flux", "--wan22", pack=False)
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
    if options.wan22 == "yes":
        from comfy.ldm.wan.vae2_2 import WanVAE as Wan22VAE
        from comfy_models import WAN22_VAE_SIZE

        wan22_vae = random_wan_vae_state(Wan22VAE, torch, WAN22_VAE_SIZE, torch.float16)
        save_file(wan22_vae, str(out / "vae" / WAN22_VAE_FILE))
        del wan22_vae
    if options.flux == "yes":
        from comfy_models import random_clip_l_state, random_flux_vae_state, smallest_flux_state, tiny_t5xxl_state

        (out / "diffusion_models").mkdir(exist_ok=True)
        makers = {
            "flux_model": lambda: smallest_flux_state(torch),
            "flux_vae": lambda: {k: v.to(torch.float16) for k, v in random_flux_vae_state(torch).items()},
            "clip_l": lambda: random_clip_l_state(torch),
            "t5xxl": lambda: tiny_t5xxl_state(torch),
        }
        for name, relative in FLUX_FILES.items():
            save_file(makers[name](), str(out / relative))
    return 0


if __name__ == "__main__":
    sys.exit(main())

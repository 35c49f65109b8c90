#!/usr/bin/env bash
# Make a Python venv that runs a ComfyUI source folder with this node pack, for the `comfyui` tests.
#
# Usage: tools/comfyui_venv.sh COMFYUI_DIR VENV_DIR
#   COMFYUI_DIR  a ComfyUI source folder (a git checkout or a plain copy; only read, never written)
#   VENV_DIR     the venv to create or update (its python is what COMFYUI_PYTHON should name)
# Installs torch as the rest of this project does, ComfyUI's requirements, `requests` (which
# ComfyUI imports but does not list) and this pack's requirements, all pinned to that torch.
set -euo pipefail
COMFY="${1:?usage: tools/comfyui_venv.sh COMFYUI_DIR VENV_DIR}"
VENV="${2:?usage: tools/comfyui_venv.sh COMFYUI_DIR VENV_DIR}"
PACK="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$COMFY/main.py" ] && [ -f "$COMFY/requirements.txt" ] || { echo "comfyui_venv: $COMFY is not a ComfyUI folder (no main.py / requirements.txt)" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$constraints"
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -r "$COMFY/requirements.txt" requests -r "$PACK/requirements.txt" -c "$constraints"
echo "comfyui_venv: ready: COMFYUI_DIR=$COMFY COMFYUI_PYTHON=$VENV/bin/python"

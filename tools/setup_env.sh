#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install fgclip with all of its
# Python dependencies (mmcv's compiled ops for detection/ come from tools/install_mmcv.sh).
# Idempotent: a second run only checks what is already there.
#
#   FGCLIP_HOME   cache root (default ~/.cache/fgclip): the venv and built wheels
#   FGCLIP_TORCH  pip spec of the torch/torchvision pair
#                 (default "torch==2.14.1 torchvision==0.29.1", a pair whose
#                 torchvision ops import and run; see README "Install")
set -euo pipefail
cd "$(dirname "$0")/.."

FGCLIP_HOME=${FGCLIP_HOME:-$HOME/.cache/fgclip}
FGCLIP_TORCH=${FGCLIP_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
VENV="$FGCLIP_HOME/venv"
PY="$VENV/bin/python"

mkdir -p "$FGCLIP_HOME"
if [ ! -x "$PY" ]; then
    echo "[setup] creating virtual environment $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade "pip<26.2"
fi

# torch first, alone, so that no other requirement drags in a different build.
# shellcheck disable=SC2086
if ! "$PY" - $FGCLIP_TORCH <<'PYCHECK' 2>/dev/null
import sys
from importlib.metadata import version
wanted = dict(spec.split("==") for spec in sys.argv[1:])
sys.exit(0 if all(version(name) .split("+")[0] == v for name, v in wanted.items()) else 1)
PYCHECK
then
    echo "[setup] installing $FGCLIP_TORCH"
    "$PY" -m pip install -q $FGCLIP_TORCH
fi

echo "[setup] installing fgclip and its dependencies"
"$PY" -m pip install -q -e ".[all]"
"$PY" -c "import torch, torchvision.ops; torchvision.ops.roi_align(torch.zeros(1, 1, 2, 2), [torch.zeros(1, 4)], 1)"

# mmcv's compiled ops (detection/ only) are not built here: `make setup-detection` (or
# `bash tools/install_mmcv.sh`) builds them once per torch version; `make test` does it first.
if ! "$PY" -c "import mmcv._ext" 2>/dev/null; then
    echo "[setup] detection/ needs mmcv's compiled ops: make setup-detection (about 9 min on 2 cores, once)"
fi
echo "[setup] ready: $PY"

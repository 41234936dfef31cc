#!/usr/bin/env bash
# Build mmcv 2.1.0 with its compiled ops (mmcv._ext) for the venv's torch, cache the
# wheel, and install it. mmdet 3.3 needs mmcv >= 2.0, < 2.2 and there is no published
# mmcv wheel for recent torch releases, so the wheel is built from mmcv's source
# distribution on PyPI.
#
#   tools/install_mmcv.sh [PYTHON]
#
#   PYTHON / $PY   interpreter of the target environment
#                  (default ${FGCLIP_HOME:-~/.cache/fgclip}/venv/bin/python)
#   FGCLIP_HOME    cache root; wheels go to $FGCLIP_HOME/wheels/torch-<torch version>/
#                  (torch-<version>-cuda/ for a build with CUDA kernels)
#   MAX_JOBS       parallel compile jobs (default 2)
#
# Idempotent: nothing happens when mmcv 2.1.0 with mmcv._ext already imports; a cached
# wheel for the same torch is reinstalled in about a second; otherwise the build takes
# about 9 minutes on 2 CPU cores.
#
# Build details: mmcv's setup.py imports pkg_resources (gone from setuptools >= 81), so
# an older setuptools is put on PYTHONPATH for the build only (the environment's own
# setuptools is left alone); the build imports torch, hence --no-build-isolation; torch
# >= 2.10 headers require C++20, so setup.py's -std=c++17 flags are raised to c++20.
set -euo pipefail

MMCV_VERSION=2.1.0
FGCLIP_HOME=${FGCLIP_HOME:-$HOME/.cache/fgclip}
PY=${1:-${PY:-$FGCLIP_HOME/venv/bin/python}}

if [ ! -x "$PY" ]; then
    echo "[mmcv] python interpreter not found: $PY (pass it as \$1 or \$PY)" >&2
    exit 1
fi

if "$PY" - "$MMCV_VERSION" <<'PYCHECK' 2>/dev/null
import sys
import mmcv
import mmcv._ext  # noqa: F401  (the compiled ops)
sys.exit(0 if mmcv.__version__ == sys.argv[1] else 1)
PYCHECK
then
    echo "[mmcv] mmcv $MMCV_VERSION with compiled ops already installed"
    exit 0
fi

read -r TORCH_VERSION CUDA_AVAILABLE < <("$PY" -c \
    "import torch; print(torch.__version__, int(torch.cuda.is_available()))")

# CUDA kernels only when a GPU is visible and a CUDA compiler is there to build them.
if [ "$CUDA_AVAILABLE" = 1 ] && { command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ]; }; then
    FORCE_CUDA=1
    WHEEL_DIR="$FGCLIP_HOME/wheels/torch-$TORCH_VERSION-cuda"
else
    if [ "$CUDA_AVAILABLE" = 1 ]; then
        echo "[mmcv] warning: torch sees a GPU but no nvcc / CUDA_HOME was found;" \
             "building CPU-only ops (install the CUDA toolkit for GPU ops)" >&2
    fi
    FORCE_CUDA=0
    WHEEL_DIR="$FGCLIP_HOME/wheels/torch-$TORCH_VERSION"
fi

find_wheel() {
    if [ -d "$WHEEL_DIR" ]; then
        find "$WHEEL_DIR" -maxdepth 1 -name "mmcv-$MMCV_VERSION-*.whl" | head -n 1
    fi
}

WHEEL=$(find_wheel)
if [ -z "$WHEEL" ]; then
    echo "[mmcv] building mmcv $MMCV_VERSION for torch $TORCH_VERSION (FORCE_CUDA=$FORCE_CUDA);" \
         "this takes about 9 minutes on 2 cores"
    BUILD_DIR=$(mktemp -d)
    trap 'rm -rf "$BUILD_DIR"' EXIT
    "$PY" -m pip install -q --target "$BUILD_DIR/buildtools" "setuptools<81"
    export PYTHONPATH="$BUILD_DIR/buildtools${PYTHONPATH:+:$PYTHONPATH}"

    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$BUILD_DIR" "mmcv==$MMCV_VERSION"
    tar -xzf "$BUILD_DIR/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD_DIR"
    SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    if grep -q -- '-std=c++17' "$SRC/setup.py" || ! grep -q -- '-std=c++20' "$SRC/setup.py"; then
        echo "[mmcv] could not switch $SRC/setup.py to -std=c++20" >&2
        exit 1
    fi

    MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS=${MAX_JOBS:-2} \
        "$PY" -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$BUILD_DIR/dist" "$SRC"
    mkdir -p "$WHEEL_DIR"
    mv "$BUILD_DIR"/dist/mmcv-"$MMCV_VERSION"-*.whl "$WHEEL_DIR/"
    WHEEL=$(find_wheel)
    echo "[mmcv] cached $WHEEL"
fi

echo "[mmcv] installing $WHEEL"
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"
"$PY" -m pip install -q "$WHEEL"   # mmcv's own runtime requirements, when missing
"$PY" -c "import mmcv._ext; from mmcv.ops import RoIAlign, nms; print('[mmcv] ready:', mmcv.__version__)"

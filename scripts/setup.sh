#!/usr/bin/env bash
# Set up everything updlrm needs on a fresh machine, idempotently: a virtual environment in .venv,
# the dependencies (torch from pip's configured index; set UPDLRM_TORCH_INDEX to an index URL, e.g.
# PyTorch's CPU wheel index, to take torch from there instead), and updlrm itself (native parts
# compiled by CMake: the UPMEM emulator, the DPU kernels for it, the host driver; plus the real
# DPU binaries and libdpu module where the UPMEM SDK is found).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version 2>&1)" >&2
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
echo "[setup] installing dependencies (first run: a few minutes)" >&2
if [ -n "${UPDLRM_TORCH_INDEX:-}" ]; then
  "${PIP[@]}" install -q --index-url "$UPDLRM_TORCH_INDEX" "torch>=2.3,<2.14"
fi
"${PIP[@]}" install -q "scikit-build-core>=0.10" "pybind11>=2.12" "torch>=2.3,<2.14" \
  "numpy>=1.24" "pandas>=2.0" "matplotlib>=3.7" "tqdm>=4.60" "fastapi>=0.110" "uvicorn>=0.29" \
  "httpx>=0.27" "msgspec>=0.18" "swagger-ui-bundle>=1.1" "ray>=2.9" "pytest>=7.4" "pytest-timeout>=2.2"
echo "[setup] building and installing updlrm (CMake; incremental after the first run)" >&2
exec 9>/tmp/updlrm-dev-build.lock
flock 9
"${PIP[@]}" install -q --no-build-isolation -e ".[test]"
echo "[setup] done: .venv/bin/updlrm is ready" >&2

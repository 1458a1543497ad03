#!/usr/bin/env bash
# Create the virtual environment and install layerpolicy with its development tools.
#
# torch is installed first, only when the environment has none, from LAYERPOLICY_TORCH_SPEC
# (default torch==2.13.0). Point it at the build you want (e.g. a CUDA wheel spec) or install
# torch yourself beforehand; the package itself only requires torch>=2.3.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${LAYERPOLICY_TORCH_SPEC:-torch==2.13.0}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "installing $TORCH_SPEC (set LAYERPOLICY_TORCH_SPEC to choose another build)"
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet -e ".[dev]"
# DeepSpeed for the ZeRO-3 tests: its source package imports torch while building, so it is
# built against the torch above (no isolated build that could fetch another torch); no ops compiled.
DS_BUILD_OPS=0 "$PY" -m pip install --quiet --no-build-isolation "deepspeed==0.19.8"
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "layerpolicy installed in $VENV"

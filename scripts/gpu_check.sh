#!/usr/bin/env bash
# `make gpu-check`: tests/test_gpu.py, then `cvtool bench train` on CUDA, then one summary table
# (scripts/gpu_check.py). For a bare GPU machine with torch, torchvision, onnx and onnxruntime but
# no package registry: cvtool's other dependencies come from the wheels `make gpu-wheels` saved
# (installed into a temporary folder, never into the interpreter's own site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.whl}
if ! "$PY" -c "import pydantic, typer, rich, yaml, sklearn, onnxscript" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu-check: cvtool's dependencies are missing and $WHEELS/ holds no wheels: run \`make gpu-wheels\` where pip can reach PyPI" >&2
    exit 1
  fi
  SITE=$(mktemp -d /tmp/cvtool-gpu-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"

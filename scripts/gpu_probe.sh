#!/usr/bin/env bash
# One short call on a lent GPU (the device tool's `run`): cvtool's GPU tests, the side-by-side run
# with timm, and one training benchmark, each under its own time cap; logs into $OUT/logs.tgz.
# Needs .whl (make gpu-wheels) and .bench/timm (scripts/side_by_side.py) carried along.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-probe-out}
LOGS=/tmp/gpu-probe-logs
mkdir -p "$OUT" "$LOGS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, timm, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'ort', o.__version__, o.get_available_providers(), torch.cuda.get_device_capability())"
} > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"
start=$(date +%s)
timeout "${TESTS_S:-140}" python3 -m pytest -q -rs -p no:cacheprovider --timeout 90 --junitxml="$LOGS/test_gpu.xml" \
  tests/test_gpu.py > "$LOGS/test_gpu.log" 2>&1
echo "== pytest rc $? in $(( $(date +%s) - start )) s"; tail -25 "$LOGS/test_gpu.log"
start=$(date +%s)
timeout "${SBS_S:-100}" python3 scripts/side_by_side.py --work /tmp/sbs --json "$LOGS/side_by_side.json" \
  --epochs "${SBS_EPOCHS:-6}" > "$LOGS/side_by_side.log" 2>&1
echo "== side_by_side rc $? in $(( $(date +%s) - start )) s"; tail -6 "$LOGS/side_by_side.log"
cp /tmp/sbs/*.log "$LOGS/" 2>/dev/null
start=$(date +%s)
python3 -m cvtool data synthetic data/bench-64 --n 7200 --size 64 --seed 0 > /dev/null 2>&1
timeout "${BENCH_S:-60}" python3 -m cvtool bench train recipes/bench/resnet18_64.yaml --steps 15 --warmup 3 --rounds 3 \
  --set data.batch_size=256 --set train.device=cuda --json "$LOGS/bench_resnet18.json" > "$LOGS/bench.log" 2>&1
echo "== bench rc $? in $(( $(date +%s) - start )) s"; tail -14 "$LOGS/bench.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" .

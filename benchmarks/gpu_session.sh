#!/usr/bin/env bash
# One GPU session's measurements, in order of priority; every result lands in $OUT.
# Usage (from the repository root, on the GPU machine):
#   LONGTAIL_COMMIT=<sha> bash benchmarks/gpu_session.sh "<methods for the reproduce matrix>" "<smoke recipes>"
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-out}; mkdir -p "$OUT"
METHODS=${1:-"ce crt lws tau_norm ncm posthoc_la"}
SMOKE=${2:-""}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
if [ -n "$SMOKE" ]; then
  python benchmarks/gpu_smoke.py /tmp/smoke "$SMOKE" 2>&1 | grep -v Warn | tee "$OUT/smoke.log" | cut -c1-300
fi
python -m longtail.cli bench speed --prepared .prepared/cifar10_lt_if100.ltd --output "$OUT/speed.json" 2>&1 | grep -v Warn | tee "$OUT/speed.log"
python -m longtail.cli bench reproduce benchmarks/specs/cifar10_lt_if100.yaml --methods $METHODS \
  --runs /tmp/runs --results "$OUT" --concurrent "${CONCURRENT:-1}" 2>&1 | grep -v Warn | tee "$OUT/reproduce.log" | tail -40
tar -czf "$OUT/runs.tar.gz" -C /tmp --exclude='*.pt' runs 2>/dev/null

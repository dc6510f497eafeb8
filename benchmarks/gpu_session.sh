#!/usr/bin/env bash
# One GPU call's measurements; every result lands in $OUT (the device tool brings it back).
# Usage, from the repository root on the GPU machine (prepared data files carried in .prepared/):
#   LONGTAIL_COMMIT=<sha> [SPEED=1] [SMOKE=<recipes>] [CONCURRENT=3] \
#     bash benchmarks/gpu_session.sh SPEC "<methods>" "<imbalance factors>"
# e.g. bash benchmarks/gpu_session.sh benchmarks/specs/cifar10_lt_iwb_bwlm.yaml "wd wd_maxnorm_cb iwb" "100"
# Afterwards, here: longtail bench merge benchmarks/results/<name>.json <files_at>/<name>.json
# --output benchmarks/results/<name>.json, and unpack runs.tar.gz into benchmarks/results/runs/.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-out}; mkdir -p "$OUT"
SPEC=${1:-}
METHODS=${2:-}
FACTORS=${3:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
if [ -n "${SMOKE:-}" ]; then
  python benchmarks/gpu_smoke.py /tmp/smoke "$SMOKE" 2>&1 | grep -v Warn | tee "$OUT/smoke.log" | cut -c1-300
fi
if [ -n "${SPEED:-}" ]; then
  python -m longtail.cli bench speed --prepared .prepared/cifar10_lt_if100.ltd --output "$OUT/speed.json" 2>&1 \
    | grep -v Warn | tee "$OUT/speed.log"
fi
if [ -n "$SPEC" ]; then
  python -m longtail.cli bench reproduce "$SPEC" ${METHODS:+--methods $METHODS} ${FACTORS:+--imbalance-factors $FACTORS} \
    --runs /tmp/runs --results "$OUT" --concurrent "${CONCURRENT:-3}" 2>&1 | grep -v Warn | tee "$OUT/reproduce.log" | tail -40
  tar -czf "$OUT/runs.tar.gz" -C /tmp --exclude='*.pt' runs 2>/dev/null
fi

#!/usr/bin/env bash
# One GPU call's measurements. Everything is written under /tmp/session and packed into
# $OUT/session.tar.gz (the device tool brings back at most 8 files), with the console in $OUT/log.txt.
# Usage, from the repository root on the GPU machine (prepared data files carried in .prepared/):
#   LONGTAIL_COMMIT=<sha> [SPEED=1 [SPEED_ARGS="..."]] [EAGER_PARITY=1] [SMOKE=<recipes>] [CONCURRENT=3] [STACK=3] [SET="k=v ..."] [SEEDS="0 1"] \
#     bash benchmarks/gpu_session.sh [SPEC "<methods>" "<imbalance factors>"]
# e.g. bash benchmarks/gpu_session.sh benchmarks/specs/cifar10_lt_iwb_bwlm.yaml "wd wd_maxnorm_cb iwb" "100"
# Afterwards, here: tar -xzf <files_at>/session.tar.gz -C /tmp; longtail bench merge
# benchmarks/results/<name>.json /tmp/session/<name>.json --output benchmarks/results/<name>.json;
# copy /tmp/session/runs/<name>/ into benchmarks/results/runs/<name>/.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-out}; mkdir -p "$OUT"
W=/tmp/session; mkdir -p "$W"
SPEC=${1:-}
METHODS=${2:-}
FACTORS=${3:-}
exec > >(tee -a "$OUT/log.txt") 2>&1
pack() { tar -czf "$OUT/session.tar.gz" -C /tmp --exclude='*.pt' session; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$W/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$W/gpu.txt"
if [ -n "${SMOKE:-}" ]; then
  python benchmarks/gpu_smoke.py "$W/smoke" "$SMOKE" 2>&1 | grep -v Warn | tee "$W/smoke.log" | cut -c1-300
fi
if [ -n "${SPEED:-}" ]; then
  # SPEED_ARGS: e.g. "--epochs 20 --variants fast fast_compiled fast_nchw fast_compiled_nchw" (a probe),
  # "--epochs 20 --variants fast stacked3" (3 stacked seeds vs one run and vs 3 streams)
  python -m longtail.cli bench speed --prepared .prepared/cifar10_lt_if100.ltd --output "$W/speed.json" ${SPEED_ARGS:-} 2>&1 \
    | grep -v Warn | tee "$W/speed.log"
fi
if [ -n "${EAGER_PARITY:-}" ]; then  # eager fp32 is bound by the host: one worker process per seed
  python -m longtail.cli bench reproduce benchmarks/specs/cifar10_lt_fast_path_parity.yaml --methods ce_eager_fp32 \
    --processes 3 --runs "$W/runs" --results "$W" 2>&1 | grep -v Warn | tee "$W/eager_parity.log" | tail -n 12
fi
if [ -n "$SPEC" ]; then
  python -m longtail.cli bench reproduce "$SPEC" ${METHODS:+--methods $METHODS} ${FACTORS:+--imbalance-factors $FACTORS} \
    ${SET:+--set $SET} ${SEEDS:+--seeds $SEEDS} ${STACK:+--stack $STACK} --runs "$W/runs" --results "$W" --concurrent "${CONCURRENT:-3}" 2>&1 | grep -v Warn \
    | tee "$W/reproduce.log" | tail -40
fi

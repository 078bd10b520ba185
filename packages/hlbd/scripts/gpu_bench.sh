#!/usr/bin/env bash
# hlbd on one GPU, the numbers behind BENCHMARKS.md, in one device call of about 200 s:
#   (a) the users' loop for one epoch (stopped at 55 s and extrapolated if slower),
#   (b) users-baseline: seconds per epoch and its epoch-1 loss curve next to (a)'s (same seed),
#   (c) fast trained until greedy exact match >= 95%: seconds of training.
# Each stage is its own process under `timeout`, merging into one JSON, so a slow stage cannot eat
# the others' time. torch.compile stays off (compile=false): its compile time would not fit.
#
# Device (from the repository root; the data travels as the ignored folder .hlbd-data/):
#   OUT=$OUT bash packages/hlbd/scripts/gpu_bench.sh        with carry [".hlbd-data"]
# CPU dry run of the same commands, shrunk to seconds (tiny model, bundled sample):
#   HLBD_BENCH_TINY=1 PYTHON=/work/venv/bin/python OUT=/tmp/hlbd-dry bash packages/hlbd/scripts/gpu_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/hlbd-gpu-bench}; mkdir -p "$OUT"
LOG="$OUT/hlbd-bench.log"; JSON="$OUT/hlbd-bench.json"
export PYTHONPATH="packages/core/src:packages/hlbd/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

if [ "${HLBD_BENCH_TINY:-0}" = 1 ]; then
  DATA=${HLBD_DATA:-packages/hlbd/src/hlbd/data/hlbd_sample.txt}
  OVR=(model.d_model=32 model.n_heads=4 model.d_ff=64 model.n_encoder_layers=1 model.n_decoder_layers=1 epochs=3)
  USERS_S=2; T_USERS=60; T_BASE=60; T_FAST=60
else
  DATA=${HLBD_DATA:-}
  for c in ../shared/data/hlbd/hlbd_v1_600pairs.txt .hlbd-data/hlbd_v1_600pairs.txt; do
    [ -z "$DATA" ] && [ -f "$c" ] && DATA=$c
  done
  OVR=(compile=false)
  USERS_S=55; T_USERS=85; T_BASE=50; T_FAST=55
fi
if [ -z "$DATA" ] || [ ! -f "$DATA" ]; then
  say "error: HLBD data not found: neither ../shared/data/hlbd/hlbd_v1_600pairs.txt nor .hlbd-data/hlbd_v1_600pairs.txt" \
      "exists here (../shared does not travel to the device: copy the file into .hlbd-data/ and carry it)"
  exit 2
fi

say "$(date -u) | data $DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"

stage() {  # stage SECONDS ARGS...: one bench process under its own time limit
  local limit=$1; shift
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m hlbd bench --data "$DATA" --out "$JSON" "$@" 2>&1 \
    | grep -v -i -e "warning" -e "concepts = read_hlbd" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "stage [$*] exit $rc in $((SECONDS - t0)) s (limit $limit s)"
}

stage "$T_USERS" --stages users-loop --users-epochs 1 --users-seconds "$USERS_S"
stage "$T_BASE" --stages users-baseline --baseline-epochs 3 "${OVR[@]}"
stage "$T_FAST" --stages fast "${OVR[@]}"
say "== summary =="
stage 20 --stages report
say "total ${SECONDS} s"

#!/usr/bin/env bash
# hlbd on one GPU: the numbers behind BENCHMARKS.md. Two parts, each well under 10 minutes:
#   baseline  core's GPU tests (the captured step equals the eager one), then
#             (a) the users' loop for one epoch (stopped at 50 s and extrapolated if slower),
#             (b) users-baseline on the fast path: seconds per epoch, its epoch-1 loss curve next to (a)'s,
#             (d) fast-vs-eager: one epoch without dropout, fast path vs eager, same weights and batches
#   fast      `hlbd train --profile fast` as a user runs it, cold compile cache then warm (whole
#             command timed), then the bench's fast stage (training seconds, time to first step)
# Each stage is its own process under `timeout`, merging into one JSON, so a slow stage cannot eat
# the others' time.
#
#   HLBD_DATA=path/to/hlbd_v1_600pairs.txt bash packages/hlbd/scripts/gpu_bench.sh baseline results/
#   HLBD_DATA=path/to/hlbd_v1_600pairs.txt bash packages/hlbd/scripts/gpu_bench.sh fast results/
# (PART, then OUT_DIR for the log and JSON, default hlbd-gpu-bench)
# Run from the repository root (PYTHONPATH is set to the source folders; no install needed).
# CPU dry run of the same commands in seconds (tiny model, bundled sample, compile traced not generated):
#   HLBD_BENCH_TINY=1 bash packages/hlbd/scripts/gpu_bench.sh all hlbd-dry-run
set -uo pipefail
PART=${1:-all}
OUT_DIR=${2:-hlbd-gpu-bench}; mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/hlbd-$PART.log"; JSON="$OUT_DIR/hlbd-$PART.json"
export PYTHONPATH="packages/core/src:packages/hlbd/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

if [ "${HLBD_BENCH_TINY:-0}" = 1 ]; then
  DATA=${HLBD_DATA:-packages/hlbd/src/hlbd/data/hlbd_sample.txt}
  OVR=(model.d_model=32 model.n_heads=4 model.d_ff=64 model.n_encoder_layers=1 model.n_decoder_layers=1
       speed.compile=true speed.compile_backend=aot_eager)
  TRAIN_OVR=(epochs=3)
  USERS_S=2; T_TESTS=60; T_USERS=60; T_BASE=120; T_CHECK=120; T_TRAIN=120
else
  DATA=${HLBD_DATA:-}
  OVR=(); TRAIN_OVR=()
  USERS_S=45; T_TESTS=90; T_USERS=70; T_BASE=210; T_CHECK=130; T_TRAIN=180
fi
if [ -z "$DATA" ] || [ ! -f "$DATA" ]; then
  say "error: set HLBD_DATA to the HLBD file to train on (e.g. hlbd_v1_600pairs.txt); got '${DATA}'"
  exit 2
fi
export TRAINSTACK_CACHE_DIR="$OUT_DIR/cache"  # starts empty: the first compile below is a cold one

say "$(date -u) | part $PART | data $DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"

quiet() { grep -v -i -e "warning" -e "concepts = read_hlbd"; }
stage() {  # stage SECONDS ARGS...: one bench process under its own time limit
  local limit=$1; shift
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m hlbd bench --data "$DATA" --out "$JSON" "$@" 2>&1 \
    | quiet | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "stage [$*] exit $rc in $((SECONDS - t0)) s (limit $limit s)"
}
train_timed() {  # train_timed LABEL: the user's command, whole wall time
  local t0; t0=$(date +%s%N)
  timeout --signal=TERM --kill-after=10 "$T_TRAIN" "$PY" -m hlbd train --profile fast --data "$DATA" --no-progress \
    "run_dir=$OUT_DIR/run-$1" "${OVR[@]}" "${TRAIN_OVR[@]}" 2>&1 | quiet | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "hlbd train --profile fast ($1 compile cache): exit $rc, whole command $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

if [ "$PART" = baseline ] || [ "$PART" = all ]; then
  say "== core GPU tests"
  timeout "$T_TESTS" "$PY" packages/core/tests/test_gpu.py 2>&1 | tee -a "$LOG"
  stage "$T_USERS" --stages users-loop --users-epochs 1 --users-seconds "$USERS_S"
  stage "$T_BASE" --stages users-baseline --baseline-epochs 4 "${OVR[@]}"
  stage "$T_CHECK" --stages fast-vs-eager "${OVR[@]}"
fi
if [ "$PART" = fast ] || [ "$PART" = all ]; then
  train_timed cold
  train_timed warm
  stage "$T_TRAIN" --stages fast "${OVR[@]}" "${TRAIN_OVR[@]}"
fi
say "== summary =="
stage 30 --stages report
rm -rf "$OUT_DIR/cache" "$OUT_DIR"/run-*  # keep only the log and the JSON
say "total ${SECONDS} s"

#!/usr/bin/env bash
# mt-nllb on one GPU, in one process per stage (repository root, any CUDA host):
#   1. fast-vs-eager: the shipped fast path and the eager path from the same weights over the same
#      batches (dropout off), 20 optimizer steps: each step's loss and the largest difference.
#   2. fused: the LM head's loss and gradients by liger-kernel's fused linear CE (speed.liger_ce; needs
#      pip install 'mt-nllb[gpu]', else it is skipped and said so), by our chunked path and unfused
#      (full fp32 logits), on HEAD_BATCHES (3) batches of the h100-80g profile's 96 rows at NLLB-600M's
#      width and vocabulary: largest differences, each path's time and peak memory (`fused_vs_chunked`).
#   3. speed: ours (the h100-80g profile as `mt-nllb train` runs it: CUDA graphs over length-bucketed,
#      filled batches of 96, fused AdamW, chunked CE with compiled chunk math), ours-eager (the same
#      with the fast path off), and the users' Seq2SeqTrainer recipe (24 x 4, gradient checkpointing,
#      fused AdamW, bf16), on synthetic pairs with lognormal(38) lengths a side, NLLB-600M, random init.
#      Ours warms up for two epochs first (each new padded shape is captured once, then replayed).
#   4. the 16 GB fit: scripts/gpu_fit16.sh (the rtx4080s-16g profile's settings, 256 tokens a side).
# Results in OUT_DIR (the first argument, default mt-nllb-gpu-bench): bench.json/.log, fit16/.
#
#   bash packages/mt-nllb/scripts/gpu_bench.sh results                 # all stages
#   STAGES=speed bash packages/mt-nllb/scripts/gpu_bench.sh results
#   STAGES=fused bash packages/mt-nllb/scripts/gpu_bench.sh results     # mt-nllb bench --only fused-vs-chunked
#   STAGES=speed ARMS=ours-liger,ours-no-graphs bash ... results         # liger in training, and its fair twin
#   STAGES=speed,compare ARMS=ours,ours-symbolic-widths COMPARE_ARM=ours-nodropout bash ... results
# ARMS: the speed stage's arms (`mt-nllb bench --help` lists them); COMPARE_ARM: the fast side of
# fast-vs-eager (an arm with dropout off); WARMUP / TIMED: ours' warm-up and timed steps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="$ROOT/packages/core/src:$ROOT/packages/mt-nllb/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
OUT_DIR="${1:-mt-nllb-gpu-bench}"
STAGES="${STAGES:-compare,fused,speed,fit16}"
PAIRS="${PAIRS:-12000}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt" || true

only=""
[[ "$STAGES" == *compare* ]] && only="fast-vs-eager"
[[ "$STAGES" == *fused* ]] && only="${only:+$only,}fused-vs-chunked"
[[ "$STAGES" == *speed* ]] && only="${only:+$only,}${ARMS:-ours,ours-eager,users-trainer}"
if [[ -n "$only" ]]; then
  # One epoch of 12000 pairs is 125 steps of 96: ours warms up over two (each new padded shape
  # is captured once; each epoch groups the rows anew), then 60 timed steps.
  "$PY" -m mt_nllb bench --only "$only" --pairs "$PAIRS" --warmup-steps "${WARMUP:-250}" --timed-steps "${TIMED:-60}" \
    --users-warmup-steps 3 --users-timed-steps 4 --compare-steps 20 --head-batches "${HEAD_BATCHES:-3}" \
    --compare-fast-arm "${COMPARE_ARM:-ours-nodropout}" --out "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.log"
fi
if [[ "$STAGES" == *fit16* ]]; then
  bash "$ROOT/packages/mt-nllb/scripts/gpu_fit16.sh" "$OUT_DIR/fit16"
fi

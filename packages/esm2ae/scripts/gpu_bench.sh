#!/usr/bin/env bash
# One GPU, one command: numerics check, then HF Trainer (SDPA, padded) vs ours for 650M, 150M, 35M.
#   bash packages/esm2ae/scripts/gpu_bench.sh [OUT_DIR]   (writes JSON + logs under OUT_DIR, default bench-out)
set -u
OUT_DIR=${1:-bench-out}; mkdir -p "$OUT_DIR"
export PYTHONPATH=packages/core/src:packages/esm2ae/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee "$OUT_DIR/versions.txt"
date -u | tee -a "$OUT_DIR/versions.txt"
python3 packages/esm2ae/scripts/gpu_check.py esm2_t12_35M 2>&1 | tail -3 | tee "$OUT_DIR/check.txt"
python3 -m esm2ae bench --sizes ${SIZES:-esm2_t33_650M,esm2_t30_150M,esm2_t12_35M} --steps ${STEPS:-20} \
  --warmup ${WARMUP:-5} --max-tokens ${MAX_TOKENS:-16384} --out "$OUT_DIR/bench.json" 2>&1 \
  | grep -v -i "warn" | tee "$OUT_DIR/bench.log" | tail -60

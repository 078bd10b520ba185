#!/usr/bin/env bash
# One device call: numerics check, then HF Trainer (SDPA, padded) vs ours for 650M, 150M, 35M.
#   bash packages/esm2ae/scripts/gpu_bench.sh   (writes JSON + logs under $OUT or ./bench-out)
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
export PYTHONPATH=packages/core/src:packages/esm2ae/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
date -u | tee -a "$OUT/versions.txt"
python3 packages/esm2ae/scripts/gpu_check.py esm2_t12_35M 2>&1 | tail -3 | tee "$OUT/check.txt"
python3 -m esm2ae bench --sizes ${SIZES:-esm2_t33_650M,esm2_t30_150M,esm2_t12_35M} --steps ${STEPS:-20} \
  --warmup ${WARMUP:-5} --max-tokens ${MAX_TOKENS:-16384} --out "$OUT/bench.json" 2>&1 \
  | grep -v -i "warn" | tee "$OUT/bench.log" | tail -60

#!/usr/bin/env bash
# DDP scaling of esm2ae on 2 GPUs (weak scaling: same per-GPU micro-batch and accumulation).
# ESM-2 650M, packed, compiled, bf16, the h100-80g profile's settings (32,768-token micro-batches,
# attention auto: FlashAttention-4 on Hopper where installed, else torch's varlen kernel where torch has it).
#
#   bash packages/esm2ae/scripts/bench_ddp.sh [OUT_DIR]       # repo root, a host with >= 2 GPUs
#   MODEL=esm2_t30_150M STEPS=40 bash packages/esm2ae/scripts/bench_ddp.sh results/
#
# Writes OUT_DIR/ddp-scaling.json (OUT_DIR defaults to bench-ddp-out) and the two runs' log.jsonl. Each run
# compiles first (650M with torch's varlen kernel on an H200: first step 22 s after the command with a cold
# cache, 14 s warm; the second run reuses the first one's compile cache); the rate is taken from the last
# two log intervals, after compilation. Expected wall (estimated from the 1-GPU rate, 103k tokens/s):
# ~2 min per run, ~5 min in all.
set -euo pipefail
OUT_DIR=${1:-bench-ddp-out}; mkdir -p "$OUT_DIR"
MODEL=${MODEL:-esm2_t33_650M}
STEPS=${STEPS:-30}
MICRO=${MICRO:-32768}
ACCUM=${ACCUM:-4}
PROFILE=${PROFILE:-h100-80g}
export PYTHONPATH=packages/core/src:packages/esm2ae/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0   # no NVLink multicast on the shared hosts
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT_DIR/gpu.txt" || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT_DIR/versions.txt"
date -u | tee -a "$OUT_DIR/versions.txt"

# synthetic proteins, lengths lognormal (median 350, sigma 0.7, clipped to [16, 512])
python3 - "$OUT_DIR/synthetic.fasta" <<'PY'
import sys
from esm2ae.bench import lognormal_lengths
import random
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i, n in enumerate(lognormal_lengths(20000, seed=0)):
        f.write(f">s{i}\n" + "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n - 2)) + "\n")
PY

COMMON=(--profile "$PROFILE" "model.name=$MODEL" "data.train=$OUT_DIR/synthetic.fasta" "data.val_fraction=0"
        "max_steps=$STEPS" "optim.warmup_steps=5" "log_every_steps=5" "eval_every_steps=0"
        "save_checkpoints=false" "batch.max_tokens_per_batch=$MICRO")
python3 -m esm2ae train "${COMMON[@]}" "batch.tokens_per_step=$((MICRO * ACCUM))" "run_dir=$OUT_DIR/gpu1" 2>&1 \
  | grep -v -i warn | tail -5
python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m esm2ae train "${COMMON[@]}" \
  "batch.tokens_per_step=$((MICRO * ACCUM * 2))" "run_dir=$OUT_DIR/gpu2" 2>&1 | grep -v -i warn | tail -5

python3 - "$OUT_DIR" <<'PY'
import json, sys
out = sys.argv[1]
def rate(run):
    logs = [json.loads(l) for l in open(f"{out}/{run}/log.jsonl") if '"tokens_per_s"' in l]
    last = logs[-2:]
    return sum(r["tokens_per_s"] for r in last) / len(last), last[-1].get("mfu")
t1, m1 = rate("gpu1")
t2, m2 = rate("gpu2")
res = {"tokens_per_s_1gpu": t1, "tokens_per_s_2gpu": t2, "speedup": t2 / t1,
       "scaling_efficiency": t2 / (2 * t1), "mfu_1gpu": m1, "mfu_per_gpu_2gpu": m2}
print(json.dumps(res, indent=1))
json.dump(res, open(f"{out}/ddp-scaling.json", "w"), indent=1)
PY

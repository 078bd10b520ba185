#!/usr/bin/env bash
# Ours under several config variants on one GPU, one process each, the HF Trainer arm skipped: which change
# pays before it becomes a default. Each variant is one argument of space-separated key=value overrides; ""
# is the shipped defaults. From the repository root, no install:
#   bash packages/esm2ae/scripts/bench_variants.sh OUT_DIR "" "model.residual_dtype=autocast" \
#     "model.compile_mode=max-autotune-no-cudagraphs" \
#     "model.residual_dtype=autocast model.compile_mode=max-autotune-no-cudagraphs"
# Every variant: `esm2ae bench --skip-baseline` at the h100-80g profile's 32,768-token micro-batches, ACCUM (8)
# per optimizer step, and fast-vs-eager over 5 steps (its eager reference keeps the default numerics, so a
# precision change shows there) -> variant-N.json, variant-N.log. One compile cache for all (a variant
# compiles only what differs); each variant runs under min(CAP_S, budget left); summary.json lists them.
# The acceptance figure (ours against the HF Trainer in one process) stays gpu_bench.sh's.
set -u
OUT_DIR=${1:?usage: bench_variants.sh OUT_DIR VARIANT [VARIANT ...]}
shift
(($# > 0)) || { echo "usage: bench_variants.sh OUT_DIR VARIANT [VARIANT ...] (\"\" = the defaults)"; exit 2; }
BUDGET_S=${BUDGET_S:-560}
CAP_S=${CAP_S:-300}
MODEL=${MODEL:-esm2_t33_650M}
ACCUM=${ACCUM:-8}
SECONDS=0
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH=packages/core/src:packages/esm2ae/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export TRAINSTACK_CACHE_DIR="$OUT_DIR/compile-cache"
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
trap 'rm -rf "$TRAINSTACK_CACHE_DIR"' EXIT
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee "$OUT_DIR/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT_DIR/versions.txt"
date -u | tee -a "$OUT_DIR/versions.txt"
: > "$OUT_DIR/variants.txt"

n=0
for variant in "$@"; do
  n=$((n + 1))
  limit=$((BUDGET_S - SECONDS < CAP_S ? BUDGET_S - SECONDS : CAP_S))
  if ((limit < 60)); then
    echo "variant-$n [$variant] skipped: budget spent" | tee -a "$OUT_DIR/variants.txt"
    continue
  fi
  start=$SECONDS
  # shellcheck disable=SC2086  # a variant is a list of overrides, split on purpose
  timeout -k 15 "$limit" python3 -m esm2ae bench --sizes "$MODEL" --skip-baseline --steps 4 --warmup 2 \
    --accum "$ACCUM" --max-tokens 32768 --compare-steps 5 --out "$OUT_DIR/variant-$n.json" $variant \
    > "$OUT_DIR/variant-$n.log" 2>&1
  echo "variant-$n [$variant] rc=$? limit=${limit}s took=$((SECONDS - start))s" | tee -a "$OUT_DIR/variants.txt"
done

python3 - "$OUT_DIR" "$@" <<'PY'
import json
import sys
from pathlib import Path

out, variants = Path(sys.argv[1]), sys.argv[2:]
summary = []
for n, variant in enumerate(variants, start=1):
    row = {"variant": variant or "(defaults)"}
    try:
        records = json.loads((out / f"variant-{n}.json").read_text())
    except (OSError, ValueError):
        records = []
        row["missing"] = f"variant-{n}.json (see variant-{n}.log)"
    for r in records:
        if "max_abs_loss_diff" in r:
            row["max_abs_loss_diff"] = r["max_abs_loss_diff"]
        elif "tokens_per_s" in r:
            row.update(tokens_per_s=round(r["tokens_per_s"]), mfu=r["mfu"], peak_gib=r["peak_memory_gib"],
                       first_step_seconds=r.get("extra", {}).get("first_step_seconds"))
    summary.append(row)
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY

#!/usr/bin/env bash
# Does the rtx4080s-16g profile fit a 16 GB card? Measured on a larger NVIDIA GPU by capping this
# process at 16 GiB (torch.cuda.set_per_process_memory_fraction) and running a few optimizer steps of
# the profile's own settings (read from its YAML: 24 x 4, max length 256, checkpointing, 256-row CE
# chunks, adamw8bit) on the full-size NLLB-600M architecture with random init, every pair at 256
# tokens a side (the worst case). The same settings with fp32 AdamW states run too, for contrast and
# because adamw8bit needs bitsandbytes (recorded as an error where it is missing).
# Acceptance: peak reserved <= 15 GiB. Results under $OUT:
#   fit16.json, fit16.log the bench results (peak reserved / allocated per variant, errors)
#   memory_estimate.txt   mt-nllb profiles --memory (the estimate for every GPU profile)
#   verdict.json          measured vs estimated per variant, and fits_15gib
#
# Device (repo root; ~1-2 min on an H100 including the model build):
#   PYTHONPATH=packages/core/src:packages/mt-nllb/src bash packages/mt-nllb/scripts/gpu_fit16.sh
# CPU check of the script itself (tiny architecture, 64 tokens, no memory figures):
#   FIT16_TINY=1 OUT=/tmp/fit16 bash packages/mt-nllb/scripts/gpu_fit16.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="$ROOT/packages/core/src:$ROOT/packages/mt-nllb/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/gpu_fit16}"
mkdir -p "$OUT"
if [[ "${FIT16_TINY:-0}" == 1 ]]; then ARCH=tiny LEN=64; else ARCH=nllb-600m LEN=256; fi
VARIANTS="${FIT16_VARIANTS:-rtx4080s-16g,rtx4080s-16g-adamw}"

# 1 warm-up + 2 timed optimizer steps of 4 micro-batches of 24: 288 pairs are used; a variant that
# runs out of memory is recorded in fit16.json and does not stop the others (bench exits 1 then).
"$PY" -m mt_nllb bench --model-config "$ARCH" --only "$VARIANTS" --fixed-length "$LEN" --pairs 320 \
  --warmup-steps 1 --timed-steps 2 --out "$OUT/fit16.json" 2>&1 | tee "$OUT/fit16.log" || true

# The estimate for every GPU profile (mt-nllb profiles --memory) and the verdict, in one process.
"$PY" - "$OUT" "$ARCH" "$LEN" <<'PYEOF'
import contextlib, io, json, sys
from pathlib import Path

from mt_nllb.bench import VARIANTS
from mt_nllb.cli import main as mt_nllb
from mt_nllb.memory import FIT_LIMIT_GIB, estimate
from mt_nllb.model import load_arch_config

out, arch, length = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
text = io.StringIO()
with contextlib.redirect_stdout(text):
    mt_nllb(["profiles", "--memory"])
(out / "memory_estimate.txt").write_text(text.getvalue())
bench = json.loads((out / "fit16.json").read_text()) if (out / "fit16.json").exists() else {"results": [], "errors": {}}
measured = {r["name"]: r for r in bench["results"]}
verdict = {"limit_gib": FIT_LIMIT_GIB, "arch": arch, "tokens_per_side": length, "variants": {}}
for name in [n for n in VARIANTS if n.startswith("rtx4080s-16g")]:
    v = VARIANTS[name]
    if name not in measured and name not in bench["errors"]:
        continue
    plan = estimate(load_arch_config(arch), batch=v["batch_size"], src_len=length, tgt_len=length, optim=v["optim"],
                    checkpointing=v["checkpointing"], chunked_ce=v["chunked_ce"], ce_chunk_rows=v["ce_chunk"])
    row = {"estimate_allocated_gib": round(plan.allocated_gib, 2), "estimate_reserved_gib": round(plan.reserved_gib, 2)}
    if name in measured:
        extra = measured[name]["extra"]
        row.update(peak_reserved_gib=extra.get("peak_reserved_gib"), peak_allocated_gib=extra.get("peak_allocated_gib"),
                   steps=measured[name]["steps"], samples_per_s=round(measured[name]["samples_per_s"], 1))
        if extra.get("peak_reserved_gib") is not None:
            row["fits_15gib"] = extra["peak_reserved_gib"] <= FIT_LIMIT_GIB
    else:
        row["error"] = bench["errors"][name]
        row["fits_15gib"] = False if "out of memory" in row["error"].lower() else None
    verdict["variants"][name] = row
(out / "verdict.json").write_text(json.dumps(verdict, indent=1))
print(json.dumps(verdict))
PYEOF

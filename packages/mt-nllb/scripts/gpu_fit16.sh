#!/usr/bin/env bash
# Does the rtx4080s-16g profile fit a 16 GB card? Measured on a larger NVIDIA GPU by capping this
# process at 16 GiB (torch.cuda.set_per_process_memory_fraction) and running a few optimizer steps of
# the profile's own settings (read from its YAML: 24 x 4, max length 256, checkpointing, 256-row CE
# chunks, adamw8bit) on the full-size NLLB-600M architecture with random init, every pair at 256
# tokens a side (the worst case). adamw8bit needs bitsandbytes; where it is missing that variant is
# recorded as an error. The same settings with fp32 AdamW states also run without the cap: their
# true peak checks the memory estimate, and minus the states' size difference (exact: parameter
# counts) gives the peak that 8-bit states imply ("implied_adamw8bit_reserved_gib", derived, not run).
# Acceptance: peak reserved <= 15 GiB. Results under OUT_DIR (the first argument, default gpu-fit16):
#   fit16.json, fit16.log the bench results (peak reserved / allocated per variant, errors)
#   memory_estimate.txt   mt-nllb profiles --memory (the estimate for every GPU profile)
#   verdict.json          measured vs estimated per variant, and fits_15gib
#
# One GPU (repo root; ~1-2 min on an H100 including the model build):
#   bash packages/mt-nllb/scripts/gpu_fit16.sh results/
# CPU check of the script itself (tiny architecture, 64 tokens, no memory figures):
#   FIT16_TINY=1 bash packages/mt-nllb/scripts/gpu_fit16.sh fit16-dry-run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="$ROOT/packages/core/src:$ROOT/packages/mt-nllb/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
OUT_DIR="${1:-gpu-fit16}"
mkdir -p "$OUT_DIR"
if [[ "${FIT16_TINY:-0}" == 1 ]]; then ARCH=tiny LEN=64; else ARCH=nllb-600m LEN=256; fi
VARIANTS="${FIT16_VARIANTS:-rtx4080s-16g,rtx4080s-16g-adamw-uncapped}"

# 1 warm-up + 2 timed optimizer steps of 4 micro-batches of 24: 288 pairs, one epoch of full batches; a variant that
# runs out of memory is recorded in fit16.json and does not stop the others (bench exits 1 then).
"$PY" -m mt_nllb bench --model-config "$ARCH" --only "$VARIANTS" --fixed-length "$LEN" --pairs 288 \
  --warmup-steps 1 --timed-steps 2 --out "$OUT_DIR/fit16.json" 2>&1 | tee "$OUT_DIR/fit16.log" || true

# The estimate for every GPU profile (mt-nllb profiles --memory) and the verdict, in one process.
"$PY" - "$OUT_DIR" "$ARCH" "$LEN" <<'PYEOF'
import contextlib, io, json, sys
from pathlib import Path

from mt_nllb.bench import fit16_verdict
from mt_nllb.cli import main as mt_nllb

out, arch, length = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
text = io.StringIO()
with contextlib.redirect_stdout(text):
    mt_nllb(["profiles", "--memory"])
(out / "memory_estimate.txt").write_text(text.getvalue())
bench = json.loads((out / "fit16.json").read_text()) if (out / "fit16.json").exists() else {"results": [], "errors": {}}
verdict = fit16_verdict(bench, arch, length)
(out / "verdict.json").write_text(json.dumps(verdict, indent=1))
print(json.dumps(verdict))
PYEOF

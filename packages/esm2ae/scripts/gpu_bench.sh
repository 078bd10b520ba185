#!/usr/bin/env bash
# The esm2ae measurements on one GPU, one command, about 8 minutes (ESM-2 650M):
#   bash packages/esm2ae/scripts/gpu_bench.sh OUT_DIR                  # from the repository root, no install
#   BUDGET_S=900 MODEL=esm2_t30_150M bash packages/esm2ae/scripts/gpu_bench.sh OUT_DIR
#   bash packages/esm2ae/scripts/gpu_bench.sh OUT_DIR "" "model.residual_dtype=fp32" \
#     "model.compile_mode=coordinate-descent"
#   OVERRIDES="model.compile_mode=default" bash packages/esm2ae/scripts/gpu_bench.sh OUT_DIR
#   PROFILE=h100-80g bash packages/esm2ae/scripts/gpu_bench.sh OUT_DIR
#
# PROFILE: the esm2ae profile whose micro-batch ours runs at (default: the one `esm2ae profiles pick` names
# for this machine: h200-141g on an H200, 65,536 tokens; h100-80g on an H100, 32,768). ACCUM (default: as many
# as make ~262,144 tokens) micro-batches per timed optimizer step, for both arms.
# OVERRIDES (key=value, space-separated): for ours in (c), (a), (b) and (d): an option's cold and warm
# start and its ratio to the HF Trainer, before it becomes a default.
#
# With VARIANT arguments (each a space-separated list of key=value overrides for ours; "" the defaults), only
# (v) runs: which option pays before it becomes a default. Each variant: ours alone (the HF Trainer arm
# skipped) as in (a), and fast-vs-eager as in (b), in its own process                -> variant-N.json, variant-N.log
# The acceptance figures (ours against the HF Trainer in one process) come from a run without variants:
# (c) cold start: `esm2ae train --profile PROFILE` (its micro-batches, 3 steps of one each) twice, each in a
#     fresh process, both with a new compile cache under OUT_DIR: the first compiles (cold), the second
#     loads (warm). Time to the first optimizer step, from the process start     -> coldstart-*.jsonl, coldstart-*.log
# (a) bench: HF Trainer (SDPA, padded batches of 20) vs ours at the profile's micro-batches, both ACCUM
#     micro-batches per optimizer step (training accumulates ~2M tokens a step)                -> bench.json, bench.log
# (b) same process: fast-vs-eager (ours and the eager SDPA path from the same weights over the same batches,
#     the losses compared; at most 32,768-token micro-batches), and ours under torch.profiler (kernel time by
#     category, top kernels)                                                                    -> bench.json, bench.log
# (d) ours at the other micro-batch size: 32,768 tokens where the profile's is larger, else 65,536 (what a
#     141 GB H200 holds)                                                         -> bench-32k.json or bench-64k.json, .log
# (e) time left: ours with FlexAttention, 32,768-token micro-batches (auto's choice before torch's varlen
#     kernel)                                                                           -> bench-flex.json, bench-flex.log
# (a), (b), (d) reuse the cache (c) filled, so they compile only shapes not seen yet. Each part has its own
# time limit, never past BUDGET_S in all; parts.txt lists each part's exit code (124: out of time) and seconds;
# summary.json gathers the figures the issue asks for.
set -u
OUT_DIR=${1:?usage: gpu_bench.sh OUT_DIR [VARIANT ...]}
shift
BUDGET_S=${BUDGET_S:-540}
MODEL=${MODEL:-esm2_t33_650M}
STEPS=${STEPS:-4}
WARMUP=${WARMUP:-2}
OVERRIDES=${OVERRIDES:-}
SECONDS=0
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH=packages/core/src:packages/esm2ae/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PROFILE=${PROFILE:-$(python3 -m esm2ae profiles pick)}
MICRO_TOKENS=$(python3 -c "import sys; from esm2ae.profiles import get_profile
print(get_profile(sys.argv[1]).settings['batch']['max_tokens_per_batch'])" "$PROFILE") || exit 2
ACCUM=${ACCUM:-$((262144 / MICRO_TOKENS))}
OTHER_TOKENS=$((MICRO_TOKENS > 32768 ? 32768 : 65536))
# a fresh compile cache of our own: neither a cache from an earlier run nor one named in the environment
export TRAINSTACK_CACHE_DIR="$OUT_DIR/compile-cache"
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
rm -rf "$TRAINSTACK_CACHE_DIR"
RUN_TMP=$(mktemp -d)   # the train runs' checkpoints and exports (GBs for 650M) stay out of OUT_DIR
trap 'rm -rf "$RUN_TMP" "$TRAINSTACK_CACHE_DIR"' EXIT
: > "$OUT_DIR/parts.txt"
echo "profile $PROFILE: $MICRO_TOKENS-token micro-batches, $ACCUM per timed step" | tee -a "$OUT_DIR/parts.txt"
[ -n "$OVERRIDES" ] && echo "overrides for ours: $OVERRIDES" >> "$OUT_DIR/parts.txt"
# A second run finds the bytecode of the modules the first one imported: pip compiles it at install, and Python
# writes it on first import where it may. A Python that can keep none (site-packages read-only, or
# PYTHONDONTWRITEBYTECODE set) compiles some 2,400 modules from source in every process, ~7 s of each start on
# an H200 host: there the runs share a bytecode cache of their own (the cold run fills it, compiling every module
# it imports), so the warm start counts what a user's second run does.
if ! python3 -c 'import os, sys, sysconfig; sys.exit(not (os.access(sysconfig.get_paths()["purelib"], os.W_OK) and not sys.flags.dont_write_bytecode))'; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX="$RUN_TMP/bytecode"
  echo "bytecode: this Python keeps none of its own; the runs share a cache of it (PYTHONPYCACHEPREFIX)" | tee -a "$OUT_DIR/parts.txt"
fi

run_part() {  # NAME CAP_S COMMAND...: run under min(CAP_S, budget left), record the exit code and seconds
  local name=$1 cap=$2 left limit start rc
  shift 2
  left=$((BUDGET_S - SECONDS))
  limit=$((cap < left ? cap : left))
  if ((limit < 30)); then
    echo "$name skipped: budget spent" | tee -a "$OUT_DIR/parts.txt"
    return 0
  fi
  start=$SECONDS
  timeout -k 15 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc limit=${limit}s took=$((SECONDS - start))s" | tee -a "$OUT_DIR/parts.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee "$OUT_DIR/versions.txt"
date -u | tee -a "$OUT_DIR/versions.txt"

# proteins for the train runs: the bench's length distribution (lognormal, median 350, clipped to [16, 512])
python3 - "$RUN_TMP/proteins.fasta" <<'PY'
import sys
from esm2ae.bench import lognormal_lengths, random_proteins
with open(sys.argv[1], "w") as f:
    for i, p in enumerate(random_proteins(lognormal_lengths(2000, seed=1), seed=1)):
        f.write(f">p{i}\n{p}\n")
PY

variant_parts() {  # (v)
  local n=0 variant
  for variant in "$@"; do
    n=$((n + 1))
    echo "variant-$n: ${variant:-(defaults)}" >> "$OUT_DIR/parts.txt"
    # shellcheck disable=SC2086  # a variant is a list of overrides, split on purpose
    run_part "variant-$n" 300 python3 -m esm2ae bench --sizes "$MODEL" --skip-baseline --steps "$STEPS" \
      --warmup "$WARMUP" --accum "$ACCUM" --max-tokens "$MICRO_TOKENS" --compare-steps 5 --out "$OUT_DIR/variant-$n.json" \
      $variant > "$OUT_DIR/variant-$n.log" 2>&1
    grep -E "tokens_per_s|max_abs_loss_diff|rror" "$OUT_DIR/variant-$n.log" | cut -c1-400
  done
}

# shellcheck disable=SC2086  # OVERRIDES is a list of key=value overrides, split on purpose
standard_parts() {
  # (c) cold, then warm
  for RUN in cold warm; do
    run_part "coldstart-$RUN" $([ "$RUN" = cold ] && echo 200 || echo 90) \
      python3 -m esm2ae train --profile "$PROFILE" "model.name=$MODEL" "data.train=$RUN_TMP/proteins.fasta" \
      data.val_fraction=0 "batch.tokens_per_step=$MICRO_TOKENS" max_steps=3 \
      log_every_steps=1 eval_every_steps=0 save_checkpoints=false "run_dir=$RUN_TMP/$RUN" $OVERRIDES \
      > "$OUT_DIR/coldstart-$RUN.log" 2>&1
    grep -E "first optimizer step|^compile:|^model:|Error|error:" "$OUT_DIR/coldstart-$RUN.log" | tail -5
    cp "$RUN_TMP/$RUN/log.jsonl" "$OUT_DIR/coldstart-$RUN.jsonl" 2>/dev/null
    rm -rf "${RUN_TMP:?}/$RUN"
  done
  du -sh "$TRAINSTACK_CACHE_DIR" > "$OUT_DIR/compile-cache-size.txt" 2>&1

  # (a) + (b)
  run_part bench 240 python3 -m esm2ae bench --sizes "$MODEL" --steps "$STEPS" --warmup "$WARMUP" --accum "$ACCUM" \
    --max-tokens "$MICRO_TOKENS" --compare-steps 5 --profile --out "$OUT_DIR/bench.json" $OVERRIDES > "$OUT_DIR/bench.log" 2>&1
  grep -v -i "warn" "$OUT_DIR/bench.log" | grep -E -A 30 "^## |fast-vs-eager" | head -90

  # (d)
  local other="bench-$((OTHER_TOKENS / 1024))k"
  run_part "$other" 120 python3 -m esm2ae bench --sizes "$MODEL" --skip-baseline --steps "$STEPS" --warmup "$WARMUP" \
    --accum $((262144 / OTHER_TOKENS)) --max-tokens "$OTHER_TOKENS" --out "$OUT_DIR/$other.json" $OVERRIDES \
    > "$OUT_DIR/$other.log" 2>&1
  grep -E "first optimizer step|tokens_per_s" "$OUT_DIR/$other.log" | cut -c1-400

  # (e)
  run_part bench-flex 240 python3 -m esm2ae bench --sizes "$MODEL" --skip-baseline --steps "$STEPS" --warmup "$WARMUP" \
    --accum 8 --max-tokens 32768 --attention flex --out "$OUT_DIR/bench-flex.json" > "$OUT_DIR/bench-flex.log" 2>&1
}

if (($# > 0)); then variant_parts "$@"; else standard_parts; fi

python3 - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def first_step(run):
    for line in (out / f"coldstart-{run}.jsonl").read_text().splitlines() if (out / f"coldstart-{run}.jsonl").exists() else []:
        rec = json.loads(line)
        if "first_step_seconds" in rec:
            return {k: rec.get(k) for k in ("first_step_seconds", "seconds_before_loop", "compile_cache",
                                            "compile_cache_hits", "compile_cache_misses")}
    return None


summary = {"coldstart": {run: first_step(run) for run in ("cold", "warm")}}
variants = sorted(p.stem for p in out.glob("variant-*.json"))
for part in ("bench", "bench-32k", "bench-64k", "bench-flex", *variants):
    records = load(f"{part}.json") or []
    for r in records:
        key = f"{part}:{r['name']}"
        if "profile" in r:
            summary[key] = r["profile"]["ms_per_step_by_category"]
            continue
        if "max_abs_loss_diff" in r:
            summary[key] = {k: r.get(k) for k in ("steps", "fast", "eager", "micro_batch_tokens", "max_abs_loss_diff",
                                              "max_rel_loss_diff")}
            continue
        e = r.get("extra", {})
        summary[key] = {"tokens_per_s": round(r["tokens_per_s"]), "mfu": r["mfu"], "peak_gib": r["peak_memory_gib"],
                        "micro_batch_tokens": e.get("micro_batch_tokens"), "grad_accum": e.get("grad_accum"),
                        "backend": e.get("backend"),
                        "first_step_seconds": e.get("first_step_seconds"), "compile_cache": e.get("compile_cache")}
    by_name = {r["name"]: r for r in records if "tokens_per_s" in r}
    ours = [r for n, r in by_name.items() if n.startswith("ours")]
    if "hf-trainer-sdpa-padded" in by_name and ours:
        summary[f"{part}:speedup_vs_hf_trainer"] = round(ours[0]["tokens_per_s"] / by_name["hf-trainer-sdpa-padded"]["tokens_per_s"], 2)
summary["parts"] = (out / "parts.txt").read_text().splitlines()
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY

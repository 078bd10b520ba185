#!/usr/bin/env bash
# One GPU, one command: every bench arm (the users' loop with eager attention and with SDPA, ours as
# shipped, ours eager) plus the fast-vs-eager loss comparison, same model, data and precision. Takes
# about 15 minutes on an H200 with a cold compile cache: ours compiles its step (on an H200 with the
# h100-80g profile two graphs, 194 s and 128 s), then captures each batch shape while it warms up;
# fast-vs-eager compiles again, from the cache (about a minute).
# ARMS splits the run, e.g. ARMS=users-eager,users-sdpa,ours then ARMS=ours-eager,fast-vs-eager
# (bench.json then holds the last run's arms; bench-ARM.json files keep every arm).
# From the repository root, nothing installed:
#   bash packages/chat-pretrain/scripts/gpu_bench.sh OUT_DIR
#   TOK=path/to/chatlm-tokenizer bash packages/chat-pretrain/scripts/gpu_bench.sh OUT_DIR
# OUT_DIR gets bench.json (all arms, ratios, fast_vs_eager), bench-ARM.json per arm, bench.log, and
# verdict.txt (the issue's targets). TOK: the ChatLM tokenizer (tokenizer.json or its directory);
# without it a stand-in with the same vocabulary size (29,298) and one token per character is
# written to OUT_DIR/stand-in-tokenizer (the generated text is random characters either way).
# Knobs: ROWS (generated rows, 300000), STEPS (timed steps, 30), WARMUP (steps without a new shape,
# compilation or capture before timing, 15), COMPARE_STEPS (10), PROFILE (ours' profile, auto: what
# train picks on this GPU), BENCH_ARGS (more bench options and overrides, e.g.
# "speed.compile_dynamic=false" or, for a CPU smoke run, "--users-profile cpu-tiny model.name=tiny"),
# TRAIN_SMOKE=1 (then a short real `train` on the fast path with a checkpoint and a resume, into
# OUT_DIR/train*.log).
set -uo pipefail
OUT_DIR=${1:?usage: gpu_bench.sh OUT_DIR}
mkdir -p "$OUT_DIR"
ROWS=${ROWS:-300000}; STEPS=${STEPS:-30}; COMPARE_STEPS=${COMPARE_STEPS:-10}; PROFILE=${PROFILE:-auto}
WORK=${TMPDIR:-/tmp}/chat-pretrain-gpu-bench
mkdir -p "$WORK"
export PYTHONPATH="packages/core/src:packages/chat-pretrain/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
date -u | tee "$OUT_DIR/bench.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT_DIR/bench.log"
python3 -c "import torch, transformers, accelerate, tokenizers, pyarrow; from transformers.models.t5.modeling_t5 import T5PreTrainedModel as M; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| tokenizers', tokenizers.__version__, '| pyarrow', pyarrow.__version__, '| T5 _supports_sdpa', getattr(M, '_supports_sdpa', None))" | tee -a "$OUT_DIR/bench.log"

DATA=$WORK/bench-$ROWS.parquet
[ -f "$DATA" ] || python3 -m chat_pretrain make-data "$DATA" --rows "$ROWS" --median-chars 60 > /dev/null
if [ -z "${TOK:-}" ]; then
  TOK=$OUT_DIR/stand-in-tokenizer
  python3 "$(dirname "$0")/stand_in_tokenizer.py" "$TOK" | tee -a "$OUT_DIR/bench.log"
fi

# Every arm in its own process, one after the other on this GPU; bench.json is rewritten after each,
# so a run cut short keeps the arms it finished.
python3 -m chat_pretrain bench --tokenizer "$TOK" --data "$DATA" --profile "$PROFILE" --users-profile large \
  --arms "${ARMS:-users-eager,users-sdpa,ours,ours-eager,fast-vs-eager}" --steps "$STEPS" --warmup ${WARMUP:-15} --max-warmup 150 \
  --compare-steps "$COMPARE_STEPS" --json-out "$OUT_DIR/bench.json" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT_DIR/bench.log"

python3 - "$OUT_DIR/bench.json" <<'PY' | tee "$OUT_DIR/verdict.txt"
import json, sys
from pathlib import Path
b = json.load(open(sys.argv[1]))
r = {x["name"]: x for x in b["results"]}
# Arms of an earlier, split run (ARMS) into this OUT_DIR: their bench-ARM.json files.
for f in sorted(Path(sys.argv[1]).parent.glob("bench-*.json")):
    arm = json.loads(f.read_text())
    if f.stem == "bench-fast-vs-eager":
        b["fast_vs_eager"] = b.get("fast_vs_eager") or arm
    elif arm.get("name") and arm["name"] not in r:
        r[arm["name"]] = arm
ours = r.get("ours")
if ours:
    b["ratios"] = {f"ours_vs_{n.replace('-', '_')}": ours["tokens_per_s"] / x["tokens_per_s"] for n, x in r.items() if n != "ours"}
def line(what, value, target, fmt):
    if value is None:
        return f"{what}: not measured (target {format(target, fmt)})"
    return f"{what}: {format(value, fmt)} (target {format(target, fmt)}) {'met' if value >= target else 'NOT met'}"
print(b["device"])
print(line("ours / users' loop, eager attention", b["ratios"].get("ours_vs_users_eager"), 2.5, ".2f"))
print(line("ours / users' loop, SDPA", b["ratios"].get("ours_vs_users_sdpa"), 3.0, ".2f"))
print(line("ours MFU", ours and ours["mfu"], 0.10, ".1%"))
for name, x in r.items():
    e = x["extra"]
    print(f"{name:<12} {x['tokens_per_s']:>10,.0f} real tokens/s  MFU {(x['mfu'] or 0):.1%}  peak {x['peak_memory_gib'] or 0:.1f} GiB"
          f"  {e['ms_per_step']:.0f} ms/step  batch {e['batch_size']}x{e['max_seq_len']} x{e['grad_accum']}  attn {e['attn']}"
          + (f"  shapes {e['shapes']}, compiled {e['compiled_graphs']}, captured {e['captured_graphs']}, first step"
             f" {e['first_step_seconds']:.0f} s; while timed: {e['new_shapes_in_timed_steps']} new shapes,"
             f" {e['compilations_in_timed_steps']} compilations, {e['captures_in_timed_steps']} captures"
             if "shapes" in e else ""))
c = b.get("fast_vs_eager")
if c:
    print(f"fast vs eager, {c['steps']} steps, dropout off: largest loss difference {c['max_abs_loss_diff']:.3g} "
          f"({c['max_rel_loss_diff']:.2%}); fast {['%.4f' % v for v in c['fast_losses']]}; eager {['%.4f' % v for v in c['eager_losses']]}")
else:
    print("fast vs eager: not run")
if b["errors"]:
    print("failed arms:", b["errors"])
PY

# The real job on the fast path: core's fit with TrainStep, a checkpoint at step 40, resumed to step 60.
if [ "${TRAIN_SMOKE:-0}" = 1 ]; then
  VALID=$WORK/valid.parquet
  [ -f "$VALID" ] || python3 -m chat_pretrain make-data "$VALID" --rows 256 --seed 7 > /dev/null
  TRAIN=(python3 -m chat_pretrain train --profile "$PROFILE" --no-progress tokenizer.path="$TOK" "data.train_files=[$DATA]"
         "data.valid_files=[$VALID]" run_dir="$WORK/run" overwrite=true log_every_steps=10 eval.every_steps=40
         save_every_steps=40 eval.max_new_tokens=16)
  "${TRAIN[@]}" max_steps=40 > "$OUT_DIR/train.log" 2>&1
  "${TRAIN[@]}" max_steps=60 --resume > "$OUT_DIR/train-resume.log" 2>&1
  grep -h -E "^(speed|batches|optimizer|first optimizer|resumed|done)" "$OUT_DIR"/train*.log
  cp "$WORK/run/log.jsonl" "$OUT_DIR/train-log.jsonl"
fi

#!/usr/bin/env bash
# Scaling of our trainer (and the users' loop) from 1 to 2 GPUs, same model, data and per-GPU batch,
# then a short real 2-GPU training run (core's fit over NCCL: equal micro-batch counts per rank, eval
# gathered across ranks, one checkpoint). Run from the repository root on a host with 2+ GPUs:
#   TOK=path/to/chatlm-tokenizer bash packages/chat-pretrain/scripts/bench_multi_gpu.sh [ROWS] [STEPS] [OUT_DIR]
# e.g. TOK=path/to/chatlm-tokenizer bash packages/chat-pretrain/scripts/bench_multi_gpu.sh 1000000 30 results/
# TOK is a tokenizer.json or its directory (unset: a stand-in with the ChatLM vocabulary's size is written
# to OUT_DIR/stand-in-tokenizer); JSON results and logs go to OUT_DIR (default chat-pretrain-multi-gpu).
# Prints tokens/s on 1 and 2 GPUs per arm and the scaling efficiency = tps(2) / (2 * tps(1)).
# Weak scaling: each process keeps its per-GPU batch: ours the profile PROFILE (default auto: what train
# picks on this GPU, fast path included), the users' loop their `large` config (32 x 192, accum 2).
# OURS_OVERRIDES: config overrides for ours on both GPU counts. The arm ours-ddp-graphs is ours with
# speed.cuda_graphs=true: CUDA graphs under DDP too, gradients all-reduced after the captured backward
# (ours on 2 GPUs runs DDP's compiled step while 1 GPU replays graphs), e.g.
#   ARMS="ours ours-ddp-graphs users-sdpa" GPU_COUNTS=2 ... (after the 1-GPU ours run)
# Each ours run compiles its step (with h100-80g two graphs, 194 s + 128 s cold on an H200; later runs
# on the same host load them from the compile cache: about a minute). To split the work over shorter
# calls: ARMS (default "ours users-sdpa"), GPU_COUNTS (default "1 2"), STAGES (default "scaling train");
# the summary reads whatever ARM-N.json files OUT_DIR holds. WARMUP: quiet steps before timing (default 15).
set -euo pipefail
ROWS=${1:-1000000}
STEPS=${2:-30}
OUT_DIR=${3:-chat-pretrain-multi-gpu}
mkdir -p "$OUT_DIR"
export PYTHONPATH="packages/core/src:packages/chat-pretrain/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ -z "${TOK:-}" ]; then  # the stand-in (same vocabulary size, one token per generated character)
  TOK=$OUT_DIR/stand-in-tokenizer
  python3 "$(dirname "$0")/stand_in_tokenizer.py" "$TOK"
fi
DATA=${TMPDIR:-/tmp}/chat-pretrain-bench.parquet  # large and regenerable: kept out of OUT_DIR
[ -f "$DATA" ] || python3 -m chat_pretrain make-data "$DATA" --rows "$ROWS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PROFILE=${PROFILE:-auto}
STAGES=${STAGES:-scaling train}
if [[ " $STAGES " == *" scaling "* ]]; then
for ARM in ${ARMS:-ours users-sdpa}; do
  for N in ${GPU_COUNTS:-1 2}; do
    if [ "$N" = 1 ]; then LAUNCH=(accelerate launch --num_processes 1)
    else LAUNCH=(accelerate launch --multi_gpu --num_processes "$N"); fi
    "${LAUNCH[@]}" -m chat_pretrain bench --arm "$ARM" --tokenizer "$TOK" --data "$DATA" --profile "$PROFILE" \
      --steps "$STEPS" --warmup "${WARMUP:-15}" --max-warmup 150 --json-out "$OUT_DIR/$ARM-$N.json" $([ "$ARM" = ours ] && echo "${OURS_OVERRIDES:-}") \
      > "$OUT_DIR/$ARM-$N.log" 2>&1 \
      || { echo "FAILED: $ARM on $N GPU(s), see $OUT_DIR/$ARM-$N.log"; tail -20 "$OUT_DIR/$ARM-$N.log"; exit 1; }
  done
done
fi
python3 - "$OUT_DIR" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
# ARM-N.json for every arm and GPU count run into OUT_DIR (this call's or an earlier one's)
r = {(m[1], int(m[2])): json.loads(f.read_text()) for f in sorted(out.glob("*.json"))
     if (m := re.fullmatch(r"(.+)-(\d+)\.json", f.name)) and not m[1].startswith("train")}
print(f"{'arm':<16} {'GPUs':>4} {'tokens/s':>12} {'MFU':>7} {'peak VRAM GiB':>14} {'peak RSS GiB':>13}")
for (a, n), x in sorted(r.items()):
    mfu = f"{x['mfu']:.1%}" if x.get("mfu") else "-"
    print(f"{a:<16} {n:>4} {x['tokens_per_s']:>12,.0f} {mfu:>7} {x['peak_memory_gib'] or 0:>14.2f} "
          f"{x['extra']['peak_host_rss_gib']:>13.2f}")
for (a, n), x in sorted(r.items()):
    # ours-ddp-graphs on one GPU is ours: its 2-GPU figure scales against ours on one
    base = r.get((a, 1)) or (r.get(("ours", 1)) if a.startswith("ours") else None)
    if n > 1 and base:
        print(f"scaling efficiency {a} on {n} GPUs: {x['tokens_per_s'] / (n * base['tokens_per_s']):.1%}")
for a in sorted({a for a, _ in r if a.startswith("ours")}):
    if (a, 2) in r and ("users-sdpa", 2) in r:
        print(f"{a} vs users on 2 GPUs: {r[(a, 2)]['tokens_per_s'] / r[('users-sdpa', 2)]['tokens_per_s']:.2f}x")
print(json.dumps({f"{a}-{n}": {"tokens_per_s": x["tokens_per_s"], "mfu": x["mfu"]} for (a, n), x in r.items()}))
PY

[[ " $STAGES " == *" train "* ]] || exit 0
# The real job on 2 GPUs: 60 optimizer steps, eval (loss + BLEU on 256 rows) at step 60, then resume
# for 20 more steps from the latest checkpoint (data position included).
VALID=/tmp/chat-pretrain-valid.parquet
[ -f "$VALID" ] || python3 -m chat_pretrain make-data "$VALID" --rows 256 --seed 7
TRAIN=(accelerate launch --multi_gpu --num_processes 2 -m chat_pretrain train --profile large tokenizer.path="$TOK"
       "data.train_files=[$DATA]" "data.valid_files=[$VALID]" run_dir=/tmp/chat-pretrain-2gpu log_every_steps=10
       eval.every_steps=60 save_every_steps=60 eval.max_new_tokens=32)
"${TRAIN[@]}" max_steps=60 > "$OUT_DIR/train-2gpu.log" 2>&1 || { echo "FAILED: 2-GPU train"; tail -30 "$OUT_DIR/train-2gpu.log"; exit 1; }
"${TRAIN[@]}" max_steps=80 --resume > "$OUT_DIR/train-2gpu-resume.log" 2>&1 \
  || { echo "FAILED: 2-GPU resume"; tail -30 "$OUT_DIR/train-2gpu-resume.log"; exit 1; }
grep -h -E "^(resumed|done)" "$OUT_DIR"/train-2gpu*.log
cp /tmp/chat-pretrain-2gpu/log.jsonl "$OUT_DIR/train-2gpu-log.jsonl"

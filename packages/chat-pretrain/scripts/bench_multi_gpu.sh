#!/usr/bin/env bash
# Scaling of our trainer (and the users' loop) from 1 to 2 GPUs, same model, data and per-GPU batch,
# then a short real 2-GPU training run (core's fit over NCCL: equal micro-batch counts per rank, eval
# gathered across ranks, one checkpoint). Run from the repository root on a host with 2+ GPUs:
#   bash packages/chat-pretrain/scripts/bench_multi_gpu.sh [ROWS] [STEPS]
# With the device tool, ../shared does not travel: copy the tokenizer into an ignored folder first
#   mkdir -p runs/chatlm-tok && cp ../shared/data/chatlm/*.json runs/chatlm-tok/
# then run kind nvidia-h200-x2, carry ["runs/chatlm-tok"], timeout_s 600, command
#   TOK=runs/chatlm-tok OUT=$OUT bash packages/chat-pretrain/scripts/bench_multi_gpu.sh 1000000 30
# Prints tokens/s on 1 and 2 GPUs per arm and the scaling efficiency = tps(2) / (2 * tps(1)).
# Weak scaling: each process keeps the per-GPU batch of the `large` config (32 x 192 budget, accum 2).
set -euo pipefail
ROWS=${1:-1000000}
STEPS=${2:-30}
OUT=${OUT:-/tmp/chat-pretrain-bench}
mkdir -p "$OUT"
export PYTHONPATH="packages/core/src:packages/chat-pretrain/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
TOK=${TOK:-../shared/data/chatlm}
[ -f "$TOK/tokenizer.json" ] || TOK=runs/chatlm-tok
DATA=/tmp/chat-pretrain-bench.parquet  # not under $OUT: it would be copied back
[ -f "$DATA" ] || python3 -m chat_pretrain make-data "$DATA" --rows "$ROWS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for ARM in ours users; do
  for N in 1 2; do
    if [ "$N" = 1 ]; then LAUNCH=(accelerate launch --num_processes 1)
    else LAUNCH=(accelerate launch --multi_gpu --num_processes "$N"); fi
    "${LAUNCH[@]}" -m chat_pretrain bench --arm "$ARM" --tokenizer "$TOK" --data "$DATA" --profile large \
      --steps "$STEPS" --warmup 5 --json-out "$OUT/$ARM-$N.json" > "$OUT/$ARM-$N.log" 2>&1 \
      || { echo "FAILED: $ARM on $N GPU(s), see $OUT/$ARM-$N.log"; tail -20 "$OUT/$ARM-$N.log"; exit 1; }
  done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = {(a, n): json.load(open(f"{out}/{a}-{n}.json")) for a in ("ours", "users") for n in (1, 2)}
print(f"{'arm':<6} {'GPUs':>4} {'tokens/s':>12} {'MFU':>7} {'peak VRAM GiB':>14} {'peak RSS GiB':>13}")
for (a, n), x in sorted(r.items()):
    mfu = f"{x['mfu']:.1%}" if x.get("mfu") else "-"
    print(f"{a:<6} {n:>4} {x['tokens_per_s']:>12,.0f} {mfu:>7} {x['peak_memory_gib'] or 0:>14.2f} "
          f"{x['extra']['peak_host_rss_gib']:>13.2f}")
for a in ("ours", "users"):
    eff = r[(a, 2)]["tokens_per_s"] / (2 * r[(a, 1)]["tokens_per_s"])
    print(f"scaling efficiency {a}: {eff:.1%}")
print(f"ours vs users on 2 GPUs: {r[('ours', 2)]['tokens_per_s'] / r[('users', 2)]['tokens_per_s']:.2f}x")
print(json.dumps({f"{a}-{n}": {"tokens_per_s": x["tokens_per_s"], "mfu": x["mfu"]} for (a, n), x in r.items()}))
PY

# The real job on 2 GPUs: 60 optimizer steps, eval (loss + BLEU on 256 rows) at step 60, then resume
# for 20 more steps from the latest checkpoint (data position included).
VALID=/tmp/chat-pretrain-valid.parquet
[ -f "$VALID" ] || python3 -m chat_pretrain make-data "$VALID" --rows 256 --seed 7
TRAIN=(accelerate launch --multi_gpu --num_processes 2 -m chat_pretrain train --profile large tokenizer.path="$TOK"
       "data.train_files=[$DATA]" "data.valid_files=[$VALID]" run_dir=/tmp/chat-pretrain-2gpu log_every_steps=10
       eval.every_steps=60 save_every_steps=60 eval.max_new_tokens=32)
"${TRAIN[@]}" max_steps=60 > "$OUT/train-2gpu.log" 2>&1 || { echo "FAILED: 2-GPU train"; tail -30 "$OUT/train-2gpu.log"; exit 1; }
"${TRAIN[@]}" max_steps=80 --resume > "$OUT/train-2gpu-resume.log" 2>&1 \
  || { echo "FAILED: 2-GPU resume"; tail -30 "$OUT/train-2gpu-resume.log"; exit 1; }
grep -h -E "^(resumed|done)" "$OUT"/train-2gpu*.log
cp /tmp/chat-pretrain-2gpu/log.jsonl "$OUT/train-2gpu-log.jsonl"

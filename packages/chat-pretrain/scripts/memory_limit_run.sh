#!/usr/bin/env bash
# The low-RAM proof on CPU: under a 12 GiB address-space limit (prlimit --as, no cgroup needed),
# (1) stream a 10M-row parquet through the whole training data path (read, shuffle buffer, tokenize,
#     token-budget batches), sampling RSS; (2) train the tiny T5 with the low-ram-12g config for
#     a few hundred steps on the same file (CPU: a 4 x 192 token budget), memory logged every 20 steps.
# From the repository root:
#   TOK=path/to/chatlm-tokenizer [STREAM_ROWS=N] [STEPS=N] bash packages/chat-pretrain/scripts/memory_limit_run.sh [ROWS] [OUT_DIR]
set -euo pipefail
ROWS=${1:-10000000}
OUT_DIR=${2:-chat-pretrain-lowram}
LIMIT=$((12 * 1024 * 1024 * 1024))
[ -n "${TOK:-}" ] || { echo "error: set TOK to the tokenizer (tokenizer.json or its directory)"; exit 2; }
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -f "$OUT_DIR/train.parquet" ] || $PY -m chat_pretrain make-data "$OUT_DIR/train.parquet" --rows "$ROWS" --median-chars 60
ls -la "$OUT_DIR/train.parquet"
echo "== 1: data path over $ROWS rows under prlimit --as=$LIMIT"
prlimit --as=$LIMIT $PY - "$OUT_DIR/train.parquet" "$TOK" "${STREAM_ROWS:-0}" <<'PY' | tee "$OUT_DIR/stream.log"
import json, sys, time
from chat_pretrain.config import load_train_config
from chat_pretrain.data import PromptResponseBatches
from chat_pretrain.tokenizer import load_tokenizer
from trainstack.memory import rss_gib
cfg = load_train_config("low-ram-12g")
tok = load_tokenizer(sys.argv[2])
b = PromptResponseBatches([sys.argv[1]], tok.tokenizer, cfg.data, pad_id=tok.pad_id, eos_id=tok.eos_id)
b.set_epoch(0)
t0, rows, samples = time.time(), 0, []
for i, x in enumerate(b):
    rows += x["input_ids"].shape[0]
    if int(sys.argv[3]) and rows >= int(sys.argv[3]):  # STREAM_ROWS: stop early on slow CPUs
        break
    if i % 2000 == 0:
        samples.append((rows, round(rss_gib(), 3)))
        print(json.dumps({"rows": rows, "rss_gib": samples[-1][1], "s": round(time.time() - t0, 1)}), flush=True)
rss = [s[1] for s in samples]
print(json.dumps({"rows": rows, "seconds": round(time.time() - t0, 1), "rss_first_gib": rss[0],
                  "rss_max_gib": max(rss), "rss_last_gib": rss[-1], "skipped": b.skipped.total}))
PY
echo "== 2: training (tiny T5, low-ram-12g settings) under the same limit"
prlimit --as=$LIMIT $PY -m chat_pretrain train --profile low-ram-12g model.name=tiny precision=fp32 \
  tokenizer.path="$TOK" data.train_files="[$OUT_DIR/train.parquet]" run_dir="$OUT_DIR/run" max_steps="${STEPS:-300}" data.batch_size=4 data.max_batch_rows=32 \
  log_every_steps=50 memory_log_every_steps=20 save_every_steps=0 eval.every_steps=0 optim.warmup_steps=10 \
  2>&1 | grep -v Warning | tail -5
$PY - "$OUT_DIR/run/memory.rank0.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
rss = [r["rss_gib"] for r in recs]
print(f"training RSS over {len(rss)} samples: first {rss[0]:.3f} GiB, max {max(rss):.3f}, last {rss[-1]:.3f}")
PY

#!/usr/bin/env bash
# One-GPU benchmark behind BENCHMARKS.md: ours vs the users' loop, same model/data/GPU.
# From the repository root:  TOK=path/to/chatlm-tokenizer bash packages/chat-pretrain/scripts/gpu_bench.sh [OUT_DIR]
# (OUT_DIR: JSON results and logs, default chat-pretrain-bench)
set -uo pipefail
OUT_DIR=${1:-chat-pretrain-bench}; mkdir -p "$OUT_DIR"
[ -n "${TOK:-}" ] || { echo "error: set TOK to the tokenizer (tokenizer.json or its directory)"; exit 2; }
ROWS=${ROWS:-1000000}; STEPS=${STEPS:-30}
export PYTHONPATH="packages/core/src:packages/chat-pretrain/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, tokenizers, pyarrow; from transformers.models.t5.modeling_t5 import T5PreTrainedModel as M; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| tokenizers', tokenizers.__version__, '| pyarrow', pyarrow.__version__, '| T5 _supports_sdpa', getattr(M, '_supports_sdpa', None))"
python3 -m chat_pretrain make-data /tmp/bench.parquet --rows "$ROWS" --median-chars 60
B=(python3 -m chat_pretrain bench --tokenizer "$TOK" --data /tmp/bench.parquet --profile large --steps "$STEPS" --warmup 5)
"${B[@]}" --json-out "$OUT_DIR/bench.json" 2>&1 | grep -v Warning | tee "$OUT_DIR/bench.txt"
# Attribution: the users' loop with eager attention (their transformers 4.x had no SDPA for T5) and with
# every batch padded to max_seq_len.
"${B[@]}" --arm users --users-attn eager --json-out "$OUT_DIR/users-eager.json" > "$OUT_DIR/users-eager.log" 2>&1
"${B[@]}" --arm users --users-pad max_length --json-out "$OUT_DIR/users-maxlen.json" > "$OUT_DIR/users-maxlen.log" 2>&1
python3 - "$OUT_DIR" <<'PY'
import json, sys
o = sys.argv[1]
ours = json.load(open(f"{o}/bench-ours.json"))
for name in ("bench-users", "users-eager", "users-maxlen"):
    try:
        r = json.load(open(f"{o}/{name}.json"))
    except FileNotFoundError:
        print(name, "missing"); continue
    print(f"{name:<13} tokens/s {r['tokens_per_s']:>10,.0f}  MFU {r['mfu'] or 0:.1%}  VRAM {r['peak_memory_gib'] or 0:.2f} GiB  "
          f"RSS {r['extra']['peak_host_rss_gib']:.2f} GiB  | ours/this {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x")
print(f"ours          tokens/s {ours['tokens_per_s']:>10,.0f}  MFU {ours['mfu'] or 0:.1%}  VRAM {ours['peak_memory_gib'] or 0:.2f} GiB  RSS {ours['extra']['peak_host_rss_gib']:.2f} GiB")
PY
# The real job on the GPU: core's fit, bf16, SDPA, eval (loss + BLEU) and a checkpoint, 200 steps.
if [ "${TRAIN_SMOKE:-1}" = 1 ]; then
  python3 -m chat_pretrain make-data /tmp/valid.parquet --rows 512 --seed 7 > /dev/null
  python3 -m chat_pretrain train --profile large tokenizer.path="$TOK" data.train_files=[/tmp/bench.parquet] \
    data.valid_files=[/tmp/valid.parquet] run_dir=/tmp/run max_steps=200 log_every_steps=50 eval.every_steps=200 \
    save_every_steps=200 memory_log_every_steps=50 2>&1 | grep -v -i warn | tail -8
  cp /tmp/run/log.jsonl "$OUT_DIR/train-log.jsonl" 2>/dev/null; ls /tmp/run/checkpoints/*/ | head -20
fi

#!/usr/bin/env bash
# Attribution sweep on one GPU: attention implementation and padding multiple, both arms, plus a
# torch.profiler table of our step.  TOK=path/to/chatlm-tokenizer bash packages/chat-pretrain/scripts/gpu_sweep.sh [OUT_DIR]
set -uo pipefail
OUT_DIR=${1:-chat-pretrain-sweep}; mkdir -p "$OUT_DIR"
[ -n "${TOK:-}" ] || { echo "error: set TOK to the tokenizer (tokenizer.json or its directory)"; exit 2; }
export PYTHONPATH="packages/core/src:packages/chat-pretrain/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python3 -m chat_pretrain make-data /tmp/bench.parquet --rows "${ROWS:-500000}" --median-chars 60 > /dev/null
B=(python3 -m chat_pretrain bench --tokenizer "$TOK" --data /tmp/bench.parquet --profile large --users-profile large --steps "${STEPS:-20}" --warmup 5)
"${B[@]}" --arm ours --torch-profile --json-out "$OUT_DIR/ours-sdpa-pad8.json" 2>&1 | grep -v -i warn > "$OUT_DIR/profile.txt"
"${B[@]}" --arm ours --json-out "$OUT_DIR/ours-eager-pad8.json" model.attn_implementation=eager > /dev/null 2>&1
[ "${FULL:-1}" = 1 ] && "${B[@]}" --arm ours --json-out "$OUT_DIR/ours-sdpa-pad1.json" data.pad_to_multiple_of=1 > /dev/null 2>&1
"${B[@]}" --arm users-eager --json-out "$OUT_DIR/users-eager.json" > /dev/null 2>&1
[ "${FULL:-1}" = 1 ] && "${B[@]}" --arm users-sdpa --json-out "$OUT_DIR/users-sdpa.json" > /dev/null 2>&1
for f in "$OUT_DIR"/*.json; do python3 -c "
import json,sys; r=json.load(open(sys.argv[1])); e=r['extra']
print(f\"{sys.argv[1].split('/')[-1]:<22} tok/s {r['tokens_per_s']:>9,.0f} ms/step {e['ms_per_step']:>7.1f} MFU {(r['mfu'] or 0):.1%} VRAM {r['peak_memory_gib'] or 0:.2f} RSS {e['peak_host_rss_gib']:.2f} attn {e['attn']}\")" "$f"; done

#!/usr/bin/env bash
# One-GPU benchmarks for BENCHMARKS.md, on a host with one GPU, from the repo root:
#   [STEPS=small,large,...] bash packages/t5-deepspeed/scripts/gpu_bench_1gpu.sh [OUT_DIR]   (default t5ds-1gpu)
# Needs torch with CUDA, transformers and deepspeed installed (no package install: PYTHONPATH is set).
# Every model is random-init at its real size (shipped configs); data: the shipped en-ro sample,
# three sentences a row. No DeepSpeed op is compiled: the shipped configs use torch's fused AdamW.
set -u
OUT_DIR=${1:-t5ds-1gpu}; mkdir -p "$OUT_DIR"
python3 -c "import deepspeed" 2>/dev/null || { echo "error: deepspeed is not installed: pip install 'deepspeed>=0.17'"; exit 2; }
export PYTHONPATH=packages/core/src:packages/t5-deepspeed/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
STEPS=${STEPS:-all}
{
  date -u +"date: %Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, deepspeed, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| accelerate', accelerate.__version__)"
} > "$OUT_DIR/versions.txt" 2>&1
cat "$OUT_DIR/versions.txt"
run() {  # name timeout_s command...
  local name=$1 t=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$t" "$@" > "$OUT_DIR/$name.txt" 2>&1; local rc=$?
  echo "--- $name rc=$rc ($((SECONDS - t0)) s)"; grep -v '^\$' "$OUT_DIR/$name.txt" | tail -n 12
}
want() { [[ $STEPS == all || ,$STEPS, == *,$1,* ]]; }
B="python3 -m t5_deepspeed bench"
want plan && for m in t5-small t5-large t5-3b; do run plan-$m 40 python3 -m t5_deepspeed plan --model $m; done
# users' command 1: t5-small, ZeRO-2, batch 1, --fp16
# (sides: ours without DeepSpeed, "plain", says when DeepSpeed costs more than it saves; profiled steps
# come after the timed ones and write OUT/SIDE/profile/)
want small && run bench-t5-small-zero2 320 $B --model t5-small --deepspeed zero2 --batch_size 1 --users_fp16 --steps 60 --warmup 10 --sides users,ours,plain --profile_steps 3 --out "$OUT_DIR/small" --timeout_s 100
# fp16 vs bf16: weights scaled (initializer_factor=32) so activations pass fp16's 65504 as in pretrained T5
want diverge && run fp16-vs-bf16 150 $B --model t5-small --deepspeed zero2 --batch_size 8 --users_fp16 --steps 30 --warmup 2 --config_overrides initializer_factor=32.0 --learning_rate 1e-4 --out "$OUT_DIR/diverge" --timeout_s 70
# users' command 2: t5-large, ZeRO-2, batch 4, no fp16 (fp32)
# (ours compiles its T5 blocks on a GPU: warm-up 8 steps, compiling happens there; ours-eager is ours with
# --torch_compile False; plain is ours without DeepSpeed)
want large && run bench-t5-large-zero2 560 $B --model t5-large --deepspeed zero2 --batch_size 4 --steps 20 --warmup 8 --sides users,ours,ours-eager,plain --profile_steps 3 --out "$OUT_DIR/large" --timeout_s 170
want buckets && run bench-t5-large-zero2-buckets 200 $B --model t5-large --deepspeed zero2 --batch_size 4 --steps 20 --warmup 8 --sides ours-trainer-buckets --out "$OUT_DIR/buckets" --timeout_s 170
# ours (compiled) vs ours-eager at equal weights and batches (dropout off): losses step by step
want compare && run compiled-vs-eager 300 $B --model t5-large --deepspeed zero2 --batch_size 4 --steps 6 --warmup 4 --sides ours,ours-eager --config_overrides dropout_rate=0.0 --out "$OUT_DIR/compare" --timeout_s 140
# users' command 3: t5-3b, ZeRO-3, batch 1, --fp16 (ours: bf16)
want 3b && run bench-t5-3b-zero3 200 $B --model t5-3b --deepspeed zero3 --batch_size 1 --users_fp16 --steps 8 --warmup 3 --sides ours --out "$OUT_DIR/3b" --timeout_s 190
# ours may spend the memory it saves on a bigger batch (same DeepSpeed config)
want large16 && run bench-t5-large-zero2-ours-b16 100 $B --model t5-large --deepspeed zero2 --batch_size 4 --ours_batch_size 16 --steps 20 --warmup 5 --sides ours --out "$OUT_DIR/large16" --timeout_s 95
# ZeRO-3 on GPU end to end: train, generate with synced GPUs, save 16-bit, reload without DeepSpeed
if want z3e2e; then
  D=packages/t5-deepspeed/src/t5_deepspeed/data
  run zero3-e2e 120 python3 -m t5_deepspeed --deepspeed zero3 --config_name t5-small --train_file $D/en-ro.train.jsonl \
    --test_file $D/en-ro.test.jsonl --source_lang en --target_lang ro --do_train --do_predict --predict_with_generate \
    --per_device_train_batch_size 8 --max_steps 20 --val_max_target_length 16 --save_strategy no --fp16 \
    --output_dir /tmp/z3e2e --overwrite_output_dir
  run zero3-reload 60 python3 -c "from transformers import T5ForConditionalGeneration as T; m=T.from_pretrained('/tmp/z3e2e'); print('reloaded without DeepSpeed:', sum(p.numel() for p in m.parameters()), 'params', next(m.parameters()).dtype)"
  cp /tmp/z3e2e/predict_results.json "$OUT_DIR/zero3-e2e-predict_results.json" 2>/dev/null
fi
# ZeRO-2 end to end with the defaults (T5 blocks compiled for training): train with a checkpoint at
# step 10, evaluate and predict with generate (eager), then resume from the newest checkpoint to step 30
if want z2e2e; then
  D=packages/t5-deepspeed/src/t5_deepspeed/data
  Z2=(python3 -m t5_deepspeed --deepspeed zero2 --config_name t5-small --train_file $D/en-ro.train.jsonl
      --validation_file $D/en-ro.test.jsonl --test_file $D/en-ro.test.jsonl --source_lang en --target_lang ro
      --do_train --do_eval --predict_with_generate --per_device_train_batch_size 8 --save_steps 10
      --val_max_target_length 16 --output_dir /tmp/z2e2e)
  rm -rf /tmp/z2e2e
  run zero2-e2e 150 "${Z2[@]}" --do_predict --max_steps 20
  run zero2-resume 150 "${Z2[@]}" --max_steps 30 --resume_from_checkpoint latest
  grep -h -E "compile:|resuming|eval_bleu |predict_bleu |train_loss|Error" "$OUT_DIR"/zero2-e2e.txt "$OUT_DIR"/zero2-resume.txt
  ls /tmp/z2e2e
fi
rm -f "$OUT_DIR"/*/bench.train.jsonl
find "$OUT_DIR" -name summary.json | sort | while read -r f; do echo "$f: $(tr -d '\n ' < "$f")"; done
echo done

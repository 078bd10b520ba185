#!/usr/bin/env bash
# Two-GPU runs for BENCHMARKS.md, on a host with 2 GPUs, from the repo root (about 10-12 minutes in all;
# small and large take ~5 minutes each, most of it start-up and the first compile of ours):
#   [STEPS=plan,small,large,zero3,accelerate] bash packages/t5-deepspeed/scripts/bench_2gpu.sh [OUT_DIR]   (default t5ds-2gpu)
# Needs torch with CUDA, transformers and deepspeed installed (no package install: PYTHONPATH is set).
# What it shows: t5-small and t5-large with ZeRO-2 through DeepSpeed's own launcher on 2 GPUs (users'
# Trainer settings vs ours), and the same job through `accelerate launch`; t5-small ZeRO-3 generate
# with synced GPUs on 2 ranks, 16-bit save, reload without DeepSpeed.
set -u
OUT_DIR=${1:-t5ds-2gpu}; mkdir -p "$OUT_DIR"
python3 -c "import deepspeed" 2>/dev/null || { echo "error: deepspeed is not installed: pip install 'deepspeed>=0.17'"; exit 2; }
export PYTHONPATH=packages/core/src:packages/t5-deepspeed/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
{
  date -u +"date: %Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, deepspeed, accelerate; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| accelerate', accelerate.__version__)"
} > "$OUT_DIR/versions.txt" 2>&1
cat "$OUT_DIR/versions.txt"
run() {  # name timeout_s command...
  local name=$1 t=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$t" "$@" > "$OUT_DIR/$name.txt" 2>&1; local rc=$?
  echo "--- $name rc=$rc ($((SECONDS - t0)) s)"; grep -v '^\$' "$OUT_DIR/$name.txt" | tail -n 12
}
STEPS=${STEPS:-all}
want() { [[ $STEPS == all || ,$STEPS, == *,$1,* ]]; }
B="python3 -m t5_deepspeed bench --num_gpus 2"
want plan && run plan-t5-3b-2gpu 40 python3 -m t5_deepspeed plan --model t5-3b --num_gpus 2
# (ours compiles its T5 blocks: the first step of each rank compiles, in the untimed warm-up)
want small && run bench-t5-small-zero2-2gpu 330 $B --model t5-small --deepspeed zero2 --batch_size 1 --users_fp16 --steps 60 --warmup 10 --out "$OUT_DIR/small" --timeout_s 160
want large && run bench-t5-large-zero2-2gpu 350 $B --model t5-large --deepspeed zero2 --batch_size 4 --steps 20 --warmup 8 --out "$OUT_DIR/large" --timeout_s 170
D=packages/t5-deepspeed/src/t5_deepspeed/data
ARGS="--config_name t5-small --train_file $D/en-ro.train.jsonl --test_file $D/en-ro.test.jsonl --source_lang en --target_lang ro
  --do_train --do_predict --predict_with_generate --per_device_train_batch_size 8 --max_steps 20 --val_max_target_length 16
  --save_strategy no --bf16"
# ZeRO-3, DeepSpeed launcher, 2 ranks: partitioned load, synced generate, gathered 16-bit save
want zero3 && run zero3-deepspeed-launcher 120 python3 -m deepspeed.launcher.runner --num_gpus 2 --master_port 29521 --module t5_deepspeed \
  --deepspeed zero3 $ARGS --output_dir /tmp/z3-ds --overwrite_output_dir
want zero3 && run zero3-reload 60 python3 -c "from transformers import T5ForConditionalGeneration as T; m=T.from_pretrained('/tmp/z3-ds'); print('reloaded without DeepSpeed:', sum(p.numel() for p in m.parameters()), 'params')"
# the same job under accelerate launch (no accelerate config file: DeepSpeed comes from --deepspeed)
want accelerate && run zero2-accelerate-launch 120 python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --main_process_port 29531 -m t5_deepspeed \
  --deepspeed zero2 $ARGS --output_dir /tmp/z2-acc --overwrite_output_dir
cp /tmp/z3-ds/predict_results.json "$OUT_DIR/zero3-2gpu-predict_results.json" 2>/dev/null
cp /tmp/z2-acc/predict_results.json "$OUT_DIR/zero2-accelerate-predict_results.json" 2>/dev/null
rm -f "$OUT_DIR"/*/bench.train.jsonl
echo done

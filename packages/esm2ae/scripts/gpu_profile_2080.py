"""Run the rtx2080s-8g profile on a bigger GPU capped to 8 GB (set_per_process_memory_fraction):
ESM-2 650M, fp16 + loss scale, DeepSpeed ZeRO-2 with CPU optimizer offload, checkpointed layers.

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 packages/esm2ae/scripts/gpu_profile_2080.py OUT_DIR [key=value ...]

OUT_DIR receives profile-2080.json and the run directory run-2080/.

Short run: 4 optimizer steps of 2 micro-batches (4096 tokens each) on the shipped sample.
attention=sdpa and compile=false keep the run short (no 4-minute compile); the profile's default
is compiled FlexAttention.
"""
import json
import os
import sys
import time

import torch

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29517")
os.environ.setdefault("RANK", "0")
os.environ.setdefault("LOCAL_RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")
cap_bytes = 8e9
total = torch.cuda.get_device_properties(0).total_memory
torch.cuda.set_per_process_memory_fraction(cap_bytes / total, 0)
print(f"memory cap: {cap_bytes / 2**30:.2f} GiB of {total / 2**30:.1f} GiB")

from esm2ae.train import train_from_cli  # noqa: E402

if len(sys.argv) < 2 or "=" in sys.argv[1]:
    sys.exit("usage: gpu_profile_2080.py OUT_DIR [key=value ...]")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
overrides = ["max_steps=4", "batch.tokens_per_step=8192", "log_every_steps=1", "eval_every_steps=4",
             "data.max_val_sequences=8", "optim.warmup_steps=2", "deepspeed.cpu_adam=false",
             "model.attention=sdpa", "model.compile=false", "save_checkpoints=false",
             f"run_dir={out}/run-2080", *sys.argv[2:]]
t0 = time.time()
res = train_from_cli("rtx2080s-8g", overrides)
summary = {"profile": "rtx2080s-8g", "cap_gib": cap_bytes / 2**30, "wall_s": time.time() - t0,
           "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
           "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
           "steps": res["steps"], "history": res["history"], "overrides": overrides}
print(json.dumps(summary))
with open(f"{out}/profile-2080.json", "w") as f:
    json.dump(summary, f, indent=1)

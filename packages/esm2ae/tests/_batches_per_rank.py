"""The real `esm2ae` entry point inside a torchrun process, recording the micro-batches this rank trains on.

    python -m torch.distributed.run ... _batches_per_rank.py OUT_DIR train --profile cpu-debug ...
When the command returns, appends one line to OUT_DIR/batches.rank<RANK>.jsonl: the launcher's ranks and,
per micro-batch trained on, its masked input ids (in order).
"""

import json
import os
import sys
from pathlib import Path

import esm2ae.train as train_mod
from esm2ae.cli import main


def record_batches(seen: list) -> None:
    real = train_mod.make_loss_fn

    def recording(cfg, device):
        loss_fn = real(cfg, device)

        def record(model, batch):
            seen.append(batch.input_ids.tolist())
            return loss_fn(model, batch)

        return record

    train_mod.make_loss_fn = recording


if __name__ == "__main__":
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    seen: list = []
    record_batches(seen)
    rc = main(argv)
    ranks = {k.lower(): int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")}
    with open(out_dir / f"batches.rank{ranks['rank']}.jsonl", "a") as f:
        f.write(json.dumps({**ranks, "rc": rc, "batches": seen}) + "\n")
    sys.exit(rc)

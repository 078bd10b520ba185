"""The real `chat-pretrain` entry point inside a torchrun process, recording the row ids this rank trains on.

    python -m torch.distributed.run ... _rows_per_rank.py OUT_DIR train --profile cpu-tiny ... data.id_column=id
When the command returns, appends one line to OUT_DIR/rows.rank<RANK>.jsonl: the launcher's ranks and the
row ids of every micro-batch this process trained on, in order (a padding batch adds none).
"""

import json
import os
import sys
from pathlib import Path

import chat_pretrain.train as train_mod
from chat_pretrain.cli import main


def record_rows(seen: list) -> None:
    real = train_mod.make_loss_fn

    def recording():
        loss_fn = real()

        def record(model, batch):
            seen.extend(batch["row_ids"])
            return loss_fn(model, batch)

        return record

    train_mod.make_loss_fn = recording


if __name__ == "__main__":
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    seen: list = []
    record_rows(seen)
    rc = main(argv)
    ranks = {k.lower(): int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")}
    with open(out_dir / f"rows.rank{ranks['rank']}.jsonl", "a") as f:
        f.write(json.dumps({**ranks, "rc": rc, "rows": seen}) + "\n")
    sys.exit(rc)

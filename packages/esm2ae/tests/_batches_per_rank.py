"""The real `esm2ae` entry point inside a torchrun process, recording the micro-batches this rank trains on.

    python -m torch.distributed.run ... _batches_per_rank.py OUT_DIR train --profile cpu-debug ...
When the command returns, appends one line to OUT_DIR/batches.rank<RANK>.jsonl: the launcher's ranks and,
per micro-batch trained on, its masked input ids (in order).
"""

import sys

import esm2ae.train as train_mod
from esm2ae.cli import main
from trainstack.testing import append_rank_record, record_loss_batches

if __name__ == "__main__":
    seen: list = []
    record_loss_batches(train_mod, lambda batch: seen.append(batch.input_ids.tolist()))
    rc = main(sys.argv[2:])
    append_rank_record(sys.argv[1], "batches", rc=rc, batches=seen)
    sys.exit(rc)

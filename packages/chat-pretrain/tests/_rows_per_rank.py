"""The real `chat-pretrain` entry point inside a torchrun process, recording the row ids this rank trains on.

    python -m torch.distributed.run ... _rows_per_rank.py OUT_DIR train --profile cpu-tiny ... data.id_column=id
When the command returns, appends one line to OUT_DIR/rows.rank<RANK>.jsonl: the launcher's ranks and the
row ids of every micro-batch this process trained on, in order (a padding batch adds none).
"""

import sys

import chat_pretrain.train as train_mod
from chat_pretrain.cli import main
from trainstack.testing import append_rank_record, record_loss_batches

if __name__ == "__main__":
    seen: list = []
    record_loss_batches(train_mod, lambda batch: seen.extend(batch["row_ids"]))
    rc = main(sys.argv[2:])
    append_rank_record(sys.argv[1], "rows", rc=rc, rows=seen)
    sys.exit(rc)

"""Two CPU processes (torchrun, gloo) train the toy on rank-split data; one rank alone gets SIGTERM.

    python -m torch.distributed.run --nproc_per_node 2 _toy_ranks.py RUN_DIR RESUME SIGNAL_AT_MICRO_STEP [DATA]
Each rank writes seen-<rank>.json: the row indices it trained on, in order. DATA "differs-on-rank-1" gives
rank 1 another data fingerprint (a node with its own copy of the data); a rank whose fit refuses the
checkpoint writes refused-<rank>.txt with the message and exits 2.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from trainstack.checkpoint import CheckpointError  # noqa: E402
from trainstack.loop import LoopConfig, fit  # noqa: E402
from trainstack.precision import resolve_precision  # noqa: E402


class RankRows:
    """Rank r trains on rows r, r+W, r+2W...: its position differs from every other rank's."""

    def __init__(self, rank: int, world: int, rows: int = 96, batch: int = 4):
        self.data = _toy.SeqData(rows)
        self.mine = list(range(rank, rows, world))
        self.batch, self.consumed, self.epoch = batch, 0, 0

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __len__(self):
        return len(self.mine) // self.batch

    def __iter__(self):
        while self.consumed + self.batch <= len(self.mine):
            rows = self.mine[self.consumed:self.consumed + self.batch]
            self.consumed += self.batch
            yield _toy.collate([self.data[i] for i in rows])

    def state_dict(self):
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state):
        self.epoch, self.consumed = state["epoch"], state["consumed"]


def main():
    run_dir, resume, signal_at = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(0)
    model = _toy.Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen, micro = [], [0]

    def loss_fn(model, batch):
        micro[0] += 1
        if rank == 1 and micro[0] == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # only this rank is told to stop
        seen.append(batch["index"].tolist())
        return _toy.loss_fn(model, batch)

    cfg = LoopConfig(epochs=2, grad_accum_steps=2, log_every_steps=1, tensorboard=False)
    data = "copy on rank 1" if len(sys.argv) > 4 and sys.argv[4] == "differs-on-rank-1" and rank == 1 else "shared"
    try:
        res = fit(model=model, optimizer=opt, scheduler=None, train_batches=RankRows(rank, accelerator.num_processes),
                  loss_fn=loss_fn, config=cfg, run_dir=run_dir, precision=resolve_precision("fp32"),
                  accelerator=accelerator, resume=resume, progress=False, resume_fingerprint={"data": data})
    except CheckpointError as e:
        (run_dir / f"refused-{rank}.txt").write_text(str(e))
        sys.exit(2)
    (run_dir / f"seen-{rank}-{int(resume)}.json").write_text(json.dumps({"seen": seen, "steps": res.steps}))
    sys.exit(130 if res.interrupted else 0)


if __name__ == "__main__":
    main()

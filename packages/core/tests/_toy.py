"""A tiny resumable training job shared by the loop tests and the SIGTERM subprocess."""

import json
import os
import sys
import time
from pathlib import Path

import torch
from trainstack.data import ParquetStream, ResumableLoader, TokenBudgetSampler
from trainstack.loop import LoopConfig, fit
from trainstack.optim import build_scheduler
from trainstack.precision import resolve_precision

VOCAB = 32


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.drop = torch.nn.Dropout(0.3)  # on in training: the RNG must be restored for exact resume
        self.head = torch.nn.Linear(16, 2)

    def forward(self, ids, mask):
        h = (self.drop(self.emb(ids)) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(h)


class SeqData(torch.utils.data.Dataset):
    def __init__(self, n=240):
        g = torch.Generator().manual_seed(123)
        self.seqs = [torch.randint(1, VOCAB, (int(torch.randint(2, 20, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(n)]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return i, self.seqs[i]


class ListBatches(list):
    """A list of ready batches with the loop's Batches protocol (no shuffling, nothing to resume)."""

    def set_epoch(self, epoch):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def collate(items):
    width = max(len(s) for _, s in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    for r, (_, s) in enumerate(items):
        ids[r, : len(s)] = torch.tensor(s)
    return {"index": torch.tensor([i for i, _ in items]), "ids": ids, "mask": (ids != 0).float()}


def collate_parquet(rows):
    return collate([(r["id"], r["tokens"]) for r in rows])


def loss_fn(model, batch):
    if os.environ.get("TOY_SLEEP"):
        time.sleep(float(os.environ["TOY_SLEEP"]))
    labels = batch["ids"].sum(1) % 2
    loss = torch.nn.functional.cross_entropy(model(batch["ids"], batch["mask"]), labels)
    return loss, batch["mask"].sum()


def make_batches(kind, parquet_dir=None):
    if kind == "tokens":
        ds = SeqData()
        sampler = TokenBudgetSampler([len(s) for s in ds.seqs], max_tokens=80, seed=1)
        return ResumableLoader(ds, batch_sampler=sampler, collate_fn=collate)
    stream = ParquetStream(parquet_dir, shuffle_buffer=64, seed=2)
    return ResumableLoader(stream, batch_size=8, collate_fn=collate_parquet)


def run(run_dir, max_steps, total_steps, kind="tokens", resume=False, parquet_dir=None, accum=2, loop=None,
        **fit_kwargs):
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    sched = build_scheduler(opt, "cosine", warmup_steps=3, total_steps=total_steps)
    batches = make_batches(kind, parquet_dir)
    seen = []
    inner = loss_fn

    def recording_loss(model, batch):
        seen.append(batch["index"].tolist())
        return inner(model, batch)

    cfg = LoopConfig(max_steps=max_steps, grad_accum_steps=accum, log_every_steps=1, seed=7, tensorboard=False,
                     **(loop or {}))
    res = fit(model=model, optimizer=opt, scheduler=sched, train_batches=batches, loss_fn=recording_loss,
              config=cfg, run_dir=run_dir, precision=resolve_precision("fp32"), resume=resume, progress=False,
              **fit_kwargs)
    return res, seen


if __name__ == "__main__":
    # python _toy.py RUN_DIR MAX_STEPS TOTAL KIND RESUME [PARQUET_DIR]
    torch.set_num_threads(1)
    run_dir, max_steps, total, kind, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \
        sys.argv[5] == "1"
    res, seen = run(run_dir, max_steps, total, kind, resume, sys.argv[6] if len(sys.argv) > 6 else None)
    Path(run_dir, "seen.json").write_text(json.dumps(seen))
    sys.exit(130 if res.interrupted else 0)

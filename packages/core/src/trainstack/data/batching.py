"""Length-bucketed batches under a token budget (padding counted), resumable mid-epoch."""

from __future__ import annotations

import random
from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int = 0,
                         bucket_size_multiplier: int = 100, max_batch_size: int | None = None) -> list[list[int]]:
    """Batches with ``len(batch) * max(length in batch) <= max_tokens``; each index exactly once.

    Indices are shuffled by (seed, epoch), cut into buckets of ``bucket_size_multiplier`` times a
    typical batch size, sorted by length inside a bucket (so a batch pads little), packed greedily,
    and the batch order is shuffled. A single sample longer than ``max_tokens`` gets a batch of its
    own (it must be trained on or dropped by the caller; silently dropping it would hide data loss).
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    n = len(lengths)
    if n == 0:
        return []
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    mean_len = max(1.0, sum(lengths) / n)
    typical = max(1, int(max_tokens / mean_len))
    if max_batch_size:
        typical = min(typical, max_batch_size)
    bucket = max(1, typical * bucket_size_multiplier)
    batches: list[list[int]] = []
    for start in range(0, n, bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        cur: list[int] = []
        cur_max = 0
        for i in chunk:
            new_max = max(cur_max, int(lengths[i]))
            too_many = max_batch_size is not None and len(cur) + 1 > max_batch_size
            if cur and ((len(cur) + 1) * new_max > max_tokens or too_many):
                batches.append(cur)
                cur, new_max = [], int(lengths[i])
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


class TokenBudgetSampler:
    """A ``batch_sampler`` for DataLoader over ``token_budget_batches``; resumable mid-epoch.

    ``state_dict()`` is ``{"epoch", "batches_consumed"}``: batches handed out by ``__iter__`` in this
    epoch. A DataLoader with workers pulls the sampler ahead of training, so a loop should record its
    own count of consumed batches (``ResumableLoader`` does) and pass that to ``load_state_dict``.
    With ``world_size > 1`` each rank takes every world_size-th batch (wrapping so counts match).
    """

    def __init__(self, lengths, max_tokens, seed=0, rank: int = 0, world_size: int = 1, **kwargs):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.seed = seed
        self.kwargs = kwargs
        self.epoch = 0
        self.batches_consumed = 0
        self._skip = 0

    def _batches(self) -> list[list[int]]:
        batches = token_budget_batches(self.lengths, self.max_tokens, self.seed, self.epoch, **self.kwargs)
        if self.world_size == 1:
            return batches
        # every rank must take the same number of steps (DDP): like DistributedSampler, wrap around,
        # so up to world_size - 1 batches repeat in an epoch
        per_rank = -(-len(batches) // self.world_size)
        padded = (batches * self.world_size)[: per_rank * self.world_size]
        return padded[self.rank::self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
            self.batches_consumed = 0
        self.epoch = epoch

    def __iter__(self):
        skip, self._skip = self._skip, 0
        batches = self._batches()
        self.batches_consumed = skip
        for b in batches[skip:]:
            self.batches_consumed += 1
            yield b

    def __len__(self) -> int:
        return len(self._batches())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.batches_consumed = self._skip = int(state["batches_consumed"])

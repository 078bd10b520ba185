"""Token-budget batches on a few fixed shapes, for a step that is compiled or captured once per shape.

    shapes = BatchShapes(LengthBuckets.parse("multiple:64", 192), max_tokens=32 * 192, max_rows=256)
    for key, indices in shapes.batches([(len(src), len(tgt)) for src, tgt in rows], seed=0, epoch=0):
        n_rows, src_len, tgt_len = shapes.shape(key)   # (48, 64, 128) for key (64, 128): pad to it, fill the rows

Every side of a row (a prompt and a response, say) goes to its length bucket; rows with the same
buckets form one group, and a group is cut into batches of ``rows(key)`` rows: the token budget over
the group's widest bucket, rounded down to a multiple of 8. A group's leftover rows move up to the
next larger group (one side one bucket longer) rather than make a short batch, so a call leaves at
most one short batch, which a fast path fills with filler rows. A batch never holds more than
``max_tokens`` padded tokens per side, and a fast path that pads each side to its bucket sees at most
(number of buckets) ** sides shapes, or one per bucket with ``shared_length``. The batches are the
same whether or not the step pads them, so the eager and the fast path train on the same rows
together and their losses can be compared.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .buckets import LengthBuckets


@dataclass(frozen=True)
class BatchShapes:
    buckets: LengthBuckets
    """Padded lengths per side; the last is the longest a row may have."""
    max_tokens: int
    """Padded tokens per side per batch: rows x the widest bucket of the batch."""
    max_rows: int
    """Upper bound on rows per batch (short rows would otherwise make very tall batches)."""
    shared_length: bool = False
    """Every side pads to the bucket of the longest side: one shape per bucket instead of one per
    combination of buckets (fewer compilations, more padding)."""
    row_multiple: int = 8
    """Rows per batch rounded down to a multiple of this when at least this many fit (matmul-friendly)."""

    def __post_init__(self):
        if self.max_tokens < self.buckets.sizes[-1]:
            raise ValueError(f"a token budget of {self.max_tokens} does not hold one row of the longest bucket "
                             f"({self.buckets.sizes[-1]})")
        if self.max_rows < 1 or self.row_multiple < 1:
            raise ValueError(f"max_rows and row_multiple must be >= 1, got {self.max_rows}, {self.row_multiple}")

    def key(self, lengths: Sequence[int]) -> tuple[int, ...]:
        """The padded length of each side of a row with these lengths."""
        if self.shared_length:
            return (self.buckets.bucket(max(lengths)),) * len(lengths)
        return tuple(self.buckets.bucket(n) for n in lengths)

    def rows(self, key: Sequence[int]) -> int:
        rows = min(self.max_rows, self.max_tokens // max(key))
        return rows - rows % self.row_multiple if rows >= self.row_multiple else rows

    def shape(self, key: Sequence[int]) -> tuple[int, ...]:
        """(rows, *padded lengths): what a fixed-shape batch of this group looks like."""
        return (self.rows(key), *key)

    def possible_shapes(self, sides: int = 2) -> list[tuple[int, ...]]:
        sizes = self.buckets.sizes
        keys = [(s,) * sides for s in sizes] if self.shared_length else itertools.product(sizes, repeat=sides)
        return [self.shape(k) for k in keys]

    def describe(self, sides: int = 2) -> str:
        """For the start-up line: "length buckets 64,128,192 per side, at most 9 shapes (rows x lengths)"."""
        how = "shared by the sides" if self.shared_length else "per side"
        return (f"length buckets {self.buckets.describe()} {how}, at most {len(self.possible_shapes(sides))} "
                f"batch shapes, {self.rows((self.buckets.sizes[-1],))} to {self.rows((self.buckets.sizes[0],))} rows")

    def batches(self, lengths: Sequence[Sequence[int]], seed, epoch: int = 0) -> list[tuple[tuple[int, ...], list[int]]]:
        """The indices of ``lengths`` (one tuple of side lengths per row) cut into batches, each index
        once, as (key, indices) pairs: ``shape(key)`` holds the batch (it has at most ``rows(key)`` rows,
        each side no longer than its bucket in ``key``).

        Rows are shuffled by (seed, epoch) and grouped by key. Groups are taken from the smallest key
        up; a group's rows, sorted by their longest side (so an unpadded batch pads little), are cut
        into ``rows(key)``-row batches, and the rows left over are carried up into the next key (one
        side's bucket one step longer) instead of making a short batch: only the largest key may leave
        one. The batches are then shuffled."""
        rng = random.Random(f"{seed}-{epoch}")
        order = list(range(len(lengths)))
        rng.shuffle(order)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in order:
            groups.setdefault(self.key(lengths[i]), []).append(i)
        sizes = self.buckets.sizes
        step = {size: i for i, size in enumerate(sizes)}
        out: list[tuple[tuple[int, ...], list[int]]] = []
        while groups:
            # Carrying raises one side by one bucket, so the smallest sum of bucket steps has no sender left.
            key = min(groups, key=lambda k: (sum(step[n] for n in k), k))
            members = sorted(groups.pop(key), key=lambda i: max(lengths[i]))  # stable: ties keep the shuffle
            n = self.rows(key)
            full = len(members) - len(members) % n
            out += [(key, members[j:j + n]) for j in range(0, full, n)]
            rest = members[full:]
            up = self._next_key(key)
            if rest and up is None:
                out.append((key, rest))
            elif rest:
                groups.setdefault(up, []).extend(rest)
        rng.shuffle(out)
        return out

    def _next_key(self, key: tuple[int, ...]) -> tuple[int, ...] | None:
        """``key`` with its shortest side (the first of equals) one bucket longer; None at the largest."""
        sizes = self.buckets.sizes
        shorter = [i for i, n in enumerate(key) if n < sizes[-1]]
        if not shorter:
            return None
        i = min(shorter, key=lambda j: key[j])
        longer = sizes[sizes.index(key[i]) + 1]
        return (longer,) * len(key) if self.shared_length else (*key[:i], longer, *key[i + 1:])

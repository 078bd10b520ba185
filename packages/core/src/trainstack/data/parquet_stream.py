"""Bounded-RAM parquet streaming: record batches, a shuffle buffer, (rank, worker) shards."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info


def _parquet_files(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.parquet")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such parquet file or directory")
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {list(map(str, paths))}")
    return files


class ParquetStream(IterableDataset):
    """Yields dict rows from parquet files without ever reading a whole table.

    Sharding unit is the row group: the epoch's row-group order (shuffled by ``seed + epoch`` when
    ``shuffle_buffer > 0``) is dealt round-robin to ``world_size * num_workers`` shards, so every row
    belongs to exactly one shard. Inside a shard, rows pass a shuffle buffer seeded by
    (seed, epoch, shard), so the order of an epoch is a pure function of its inputs and resuming is
    "skip the first N rows of this shard". ``state_dict`` counts rows yielded in this process:
    exact with ``num_workers=0`` (what ``ResumableLoader`` relies on); with worker processes the
    counts live in the workers and the position restarts at the epoch start.
    """

    def __init__(self, paths, columns=None, batch_rows: int = 1024, shuffle_buffer: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, loop: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.files = _parquet_files(paths)
        self.columns = list(columns) if columns is not None else None
        self.batch_rows = batch_rows
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.loop = loop
        self.epoch = 0
        self.rows_consumed = 0
        self._skip = 0
        # (file index, row group, rows) from footers only
        self._groups: list[tuple[int, int, int]] = []
        for fi, f in enumerate(self.files):
            md = pq.ParquetFile(f).metadata
            self._groups.extend((fi, g, md.row_group(g).num_rows) for g in range(md.num_row_groups))
        self.num_rows = sum(n for _, _, n in self._groups)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.rows_consumed = 0
            self._skip = 0
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "rows_consumed": self.rows_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.rows_consumed = self._skip = int(state["rows_consumed"])

    def _shard_groups(self, epoch: int, shard: int, num_shards: int) -> list[tuple[int, int, int]]:
        order = list(range(len(self._groups)))
        if self.shuffle_buffer > 0:
            random.Random(f"{self.seed}-{epoch}-groups").shuffle(order)
        return [self._groups[i] for i in order[shard::num_shards]]

    def _rows(self, epoch: int, shard: int, num_shards: int):
        handles: dict[int, pq.ParquetFile] = {}
        for fi, g, _ in self._shard_groups(epoch, shard, num_shards):
            pf = handles.get(fi)
            if pf is None:
                handles.clear()  # one open file at a time keeps footers and buffers bounded
                pf = handles[fi] = pq.ParquetFile(self.files[fi])
            for rb in pf.iter_batches(batch_size=self.batch_rows, row_groups=[g], columns=self.columns):
                yield from rb.to_pylist()

    def _shuffled(self, rows, rng: random.Random):
        buf: list = []
        for row in rows:
            if len(buf) < self.shuffle_buffer:
                buf.append(row)
                continue
            i = rng.randrange(len(buf))
            yield buf[i]
            buf[i] = row
        rng.shuffle(buf)
        yield from buf

    def __iter__(self):
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        shard, num_shards = self.rank * workers + wid, self.world_size * workers
        while True:
            epoch = self.epoch
            rows = self._rows(epoch, shard, num_shards)
            if self.shuffle_buffer > 0:
                rows = self._shuffled(rows, random.Random(f"{self.seed}-{epoch}-{shard}"))
            skip, self._skip = self._skip, 0
            for i, row in enumerate(rows):
                if i < skip:
                    continue
                self.rows_consumed = i + 1
                yield row
            if not self.loop:
                return
            self.set_epoch(epoch + 1)


def collate_rows(rows: list[dict]) -> dict:
    """Rows -> dict of lists (numbers become tensors); a default collate for ParquetStream."""
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = torch.tensor(vals) if isinstance(vals[0], (int, float)) else vals
    return out

import gc
import os
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader
from trainstack.data import (
    DeviceDataset,
    ParquetStream,
    ResumableLoader,
    TokenBudgetSampler,
    loader_settings,
    token_budget_batches,
)
from trainstack.hardware import simulated_hardware


def _write(path, n, row_group=100, start=0):
    ids = list(range(start, start + n))
    table = pa.table({"id": ids, "text": [f"row {i}" for i in ids]})
    pq.write_table(table, path, row_group_size=row_group)


@pytest.fixture
def pq_dir(tmp_path):
    _write(tmp_path / "a.parquet", 1030, row_group=100)
    _write(tmp_path / "b.parquet", 517, row_group=64, start=1030)
    return tmp_path


def test_num_rows_and_columns(pq_dir):
    s = ParquetStream(pq_dir, columns=["id"], batch_rows=50)
    assert s.num_rows == 1547
    rows = list(s)
    assert [r["id"] for r in rows] == list(range(1547))
    assert set(rows[0]) == {"id"}


def test_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        ParquetStream(tmp_path / "nope.parquet")


@pytest.mark.parametrize("world_size,workers", [(1, 0), (3, 0), (2, 2)])
def test_shards_cover_every_row_once(pq_dir, world_size, workers):
    seen = []
    for rank in range(world_size):
        s = ParquetStream(pq_dir, shuffle_buffer=37, seed=1, rank=rank, world_size=world_size)
        loader = DataLoader(s, batch_size=None, num_workers=workers)
        seen.extend(r["id"] for r in loader)
    assert sorted(seen) == list(range(1547))


def test_shuffle_deterministic_per_epoch(pq_dir):
    s = ParquetStream(pq_dir, shuffle_buffer=100, seed=3)
    e0 = [r["id"] for r in s]
    assert e0 != sorted(e0) and sorted(e0) == list(range(1547))
    assert [r["id"] for r in s] == e0
    s.set_epoch(1)
    e1 = [r["id"] for r in s]
    assert e1 != e0 and sorted(e1) == list(range(1547))


def test_resume_mid_epoch_exact(pq_dir):
    s = ParquetStream(pq_dir, shuffle_buffer=100, seed=3)
    s.set_epoch(2)
    full = [r["id"] for r in s]
    s2 = ParquetStream(pq_dir, shuffle_buffer=100, seed=3)
    s2.set_epoch(2)
    it = iter(s2)
    first = [next(it)["id"] for _ in range(611)]
    state = s2.state_dict()
    assert state == {"epoch": 2, "rows_consumed": 611}
    s3 = ParquetStream(pq_dir, shuffle_buffer=100, seed=3)
    s3.load_state_dict(state)
    assert first + [r["id"] for r in s3] == full


def test_two_million_rows_bounded_rss(tmp_path):
    path = tmp_path / "big.parquet"
    n, rg = 2_000_000, 50_000
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("label", pa.int32()), ("text", pa.string())])) as w:
        for start in range(0, n, rg):
            ids = pa.array(range(start, start + rg), pa.int64())
            w.write_table(pa.table({"id": ids, "label": pa.array([i % 7 for i in range(start, start + rg)],
                                                                   pa.int32()),
                                    "text": pa.array([f"sentence number {i} with words" for i in
                                                      range(start, start + rg)])}))
    gc.collect()
    proc = psutil.Process(os.getpid())
    rss0 = proc.memory_info().rss
    s = ParquetStream(path, batch_rows=4096, shuffle_buffer=2000)
    assert s.num_rows == n
    t0 = time.time()
    count = total = peak = 0
    for row in s:
        count += 1
        total += row["id"]
        if count % 200_000 == 0:
            peak = max(peak, proc.memory_info().rss - rss0)
    assert count == n and total == n * (n - 1) // 2
    assert peak < 300 * 2**20, f"RSS grew {peak / 2**20:.0f} MB"
    assert time.time() - t0 < 60


def test_token_budget_batches_properties():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (3000,), generator=g).tolist() + [500]
    budget = 400
    b = token_budget_batches(lengths, budget, seed=7, epoch=0, bucket_size_multiplier=10)
    flat = [i for batch in b for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in b:
        # the one over-budget sample (500 > 400) gets a batch to itself
        assert len(batch) * max(lengths[i] for i in batch) <= budget or len(batch) == 1
    assert [3000] in b
    assert token_budget_batches(lengths, budget, seed=7, epoch=0, bucket_size_multiplier=10) == b
    assert token_budget_batches(lengths, budget, seed=7, epoch=1, bucket_size_multiplier=10) != b
    capped = token_budget_batches(lengths, budget, seed=7, max_batch_size=3)
    assert max(len(x) for x in capped) <= 3
    # bucketing keeps padding small relative to random batching
    pad = sum(len(x) * max(lengths[i] for i in x) - sum(lengths[i] for i in x) for x in b)
    assert pad / sum(lengths) < 0.2


def test_sampler_resume_mid_epoch():
    lengths = [(i * 37) % 97 + 1 for i in range(500)]
    s = TokenBudgetSampler(lengths, 300, seed=1)
    s.set_epoch(3)
    full = list(s)
    assert len(s) == len(full)
    s2 = TokenBudgetSampler(lengths, 300, seed=1)
    s2.set_epoch(3)
    it = iter(s2)
    head = [next(it) for _ in range(5)]
    state = s2.state_dict()
    assert state == {"epoch": 3, "batches_consumed": 5}
    s3 = TokenBudgetSampler(lengths, 300, seed=1)
    s3.load_state_dict(state)
    assert head + list(s3) == full


class _Seqs(torch.utils.data.Dataset):
    def __init__(self, lengths):
        self.lengths = lengths

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_token_sampler(workers):
    lengths = [(i * 13) % 50 + 1 for i in range(300)]
    mk = lambda: ResumableLoader(_Seqs(lengths), batch_sampler=TokenBudgetSampler(lengths, 120, seed=2),  # noqa: E731
                                 num_workers=workers, collate_fn=list)
    a = mk()
    a.set_epoch(1)
    full = list(a)
    b = mk()
    b.set_epoch(1)
    it = iter(b)
    head = [next(it) for _ in range(4)]
    c = mk()
    c.load_state_dict(b.state_dict())
    assert head + list(c) == full


def test_resumable_loader_parquet(pq_dir):
    mk = lambda: ResumableLoader(ParquetStream(pq_dir, shuffle_buffer=50, seed=5), batch_size=32)  # noqa: E731
    full = [x["id"].tolist() for x in mk()]
    b = mk()
    it = iter(b)
    head = [next(it)["id"].tolist() for _ in range(7)]
    c = mk()
    c.load_state_dict(b.state_dict())
    assert head + [x["id"].tolist() for x in c] == full
    assert len(mk()) == len(full)


def test_device_dataset_batches():
    ds = DeviceDataset({"input_ids": [[1, 2, 3], [4], [5, 6]]}, pad_id=0)
    assert ds.tensors["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert ds.tensors["input_ids_mask"].sum().item() == 6
    g = torch.Generator().manual_seed(0)
    got = torch.cat([b["input_ids"] for b in ds.batches(2, g)])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, ds.tensors["input_ids"].tolist()))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ds.batches(1, g1), ds.batches(1, g2), strict=True))


def test_loader_settings():
    big = loader_settings(simulated_hardware("h100-80g"))
    assert big["num_workers"] > 0 and big["pin_memory"] and big["persistent_workers"] and big["prefetch_factor"]
    low = loader_settings(simulated_hardware("h100-80g"), low_ram=True)
    assert low == {"num_workers": 0, "pin_memory": False, "persistent_workers": False, "prefetch_factor": None}
    cpu = loader_settings(simulated_hardware("cpu"))
    assert cpu["pin_memory"] is False


def test_sampler_ranks_partition_batches():
    lengths = [(i * 7) % 31 + 1 for i in range(211)]
    whole = token_budget_batches(lengths, 100, seed=0)
    parts = [list(TokenBudgetSampler(lengths, 100, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    flat = [i for p in parts for b in p for i in b]
    assert set(flat) == set(range(211)) and len(flat) - 211 <= 2 * max(len(b) for b in whole)

"""Prompt/response parquet -> token-budget micro-batches, streamed in bounded RAM, resumable exactly.

Rows come from core's ParquetStream (record batches, shuffle buffer). Every `bucket_rows` rows are
tokenized together, truncated at the token level, and cut into length-bucketed batches by core's
`token_budget_batches`: a batch holds at most `batch_size * max_seq_len` tokens per side, padding
included, so short rows make bigger batches and no batch is larger than the users' fixed 32 x 192 shape.

Ranks: DDP needs every rank to run the same number of micro-batches, and token-budget batches over
different rows come out in different numbers, so sharding rows (row groups) over ranks would leave one
rank waiting in an all-reduce at the end of an epoch. Instead every rank reads the same stream and cuts
the same batches from each bucket, and rank r takes batches r, r + W, r + 2W, ...; when a bucket's
batch count is not a multiple of W, the ranks without a batch in the last round get a one-row
padding batch (`is_padding`, loss weight 0; at most W - 1 per bucket). Every row is trained on exactly
once per epoch across ranks, and all ranks hold the same position, so the position rank 0 saves is
every rank's. The price is that each rank reads and tokenizes all rows (fast next to a T5 step).

Shapes: with `speed.length_buckets` (core's `BatchShapes`) a bucket's rows are grouped by the length
buckets of their prompt and response, each group is cut into batches of as many rows as the token
budget allows at its wider bucket, and a group's leftover rows join the next larger group (so a bucket
of rows leaves at most one short batch). The eager path pads a batch to its longest row; the fast path
(`fixed_shapes`) pads each side to its group's buckets and fills a short batch with filler rows, so a
compiled or captured step sees one shape per group, and both paths train on the same rows together.

Position: the state of a batch is (the stream's state at the start of its bucket, how many batches
of that bucket this rank already yielded). A bucket is rebuilt deterministically from that state, so a
resumed run sees exactly the rows it had not seen yet; the state never holds more than one bucket of
work to redo.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from chat_pretrain.config import DataConfig


class DataError(ValueError):
    pass


def expand_files(paths: Sequence[str | Path], suffixes=(".parquet",)) -> list[Path]:
    """Files and directories (every matching file inside, sorted) -> a list of files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
            if not found:
                raise DataError(f"{p}: directory holds no {'/'.join(suffixes)} files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not out:
        raise DataError("no data files given")
    return out


def check_schema(files: Sequence[Path], columns: Sequence[str]) -> int:
    """Every file has the columns, as strings. Returns the total row count (metadata only)."""
    rows = 0
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for a non-parquet file
            raise DataError(f"{f}: not a readable parquet file ({e}); a truncated copy, or JSON/CSV saved "
                            f"as .parquet? Re-export it as parquet") from None
        schema = meta.schema_arrow
        for c in columns:
            if c not in schema.names:
                raise DataError(f"{f}: missing column '{c}' (columns: {', '.join(schema.names)}); "
                                f"set data.prompt_column / data.response_column")
            t = schema.field(c).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
                raise DataError(f"{f}: column '{c}' has type {t}, expected string")
        rows += meta.metadata.num_rows
    return rows


def has_usable_row(files: Sequence[Path], columns: Sequence[str], read_batch_rows: int = 65536) -> bool:
    """Whether any row has a non-null, non-empty value in every column (what training skips otherwise).
    Reads only those columns and stops at the first usable row; an all-null file is scanned through
    its validity bitmaps, fast."""
    import pyarrow.compute as pc

    for f in files:
        try:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=read_batch_rows, columns=list(columns)):
                ok = None
                for col in rb.columns:
                    col_ok = pc.fill_null(pc.greater(pc.utf8_length(col), 0), False)
                    ok = col_ok if ok is None else pc.and_(ok, col_ok)
                if ok is not None and pc.any(ok).as_py():
                    return True
        except (pa.ArrowException, OSError) as e:  # a page cut short in a file whose footer reads fine
            raise DataError(f"{f}: not a readable parquet file ({e})") from None
    return False


@dataclass
class SkipCounts:
    null: int = 0
    empty: int = 0
    first: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.null + self.empty


def tokenize_pairs(tokenizer, prompts: list[str], responses: list[str], max_seq_len: int, eos_id: int):
    """Token-level truncation: up to max_seq_len - 1 tokens, then EOS, on each side."""
    keep = max_seq_len - 1
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never use: ~1.5x faster.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    src = [e.ids[:keep] + [eos_id] for e in encode(prompts, add_special_tokens=False)]
    tgt = [e.ids[:keep] + [eos_id] for e in encode(responses, add_special_tokens=False)]
    return src, tgt


def collate(src: list[list[int]], tgt: list[list[int]], pad_id: int, pad_to: int | None = None,
            multiple_of: int = 1, shape: tuple[int, int, int] | None = None, filler_id: int = 0) -> dict:
    """Pad to the longest row in the batch (or to `pad_to`, as the users' loop does). Labels use -100 at
    padding. Vectorised: one numpy scatter per side instead of a tensor per row.

    ``shape`` = (rows, prompt width, response width), the fast path's: each side padded to its width and
    the batch filled to ``rows`` with filler rows. A filler row attends to one ``filler_id`` token (a
    fully masked attention row would give NaN) and has no targets: no loss, no gradient, no real token
    (see ``real_tokens``), and the mean loss over the real targets is unchanged."""
    if shape is not None:
        rows, src_width, tgt_width = shape
        fillers = rows - len(src)
        if fillers < 0 or max(map(len, src)) > src_width or max(map(len, tgt)) > tgt_width:
            raise ValueError(f"a batch of {len(src)} rows does not fit the shape {shape}")
        input_ids, attention_mask = _pad(src + [[filler_id]] * fillers, pad_id, src_width)
        labels, _ = _pad(tgt + [[]] * fillers, -100, tgt_width)
    else:
        input_ids, attention_mask = _pad(src, pad_id, pad_to, multiple_of)
        labels, _ = _pad(tgt, -100, pad_to, multiple_of)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def real_tokens(batch: dict):
    """Non-pad prompt + response tokens of a collated batch, on its device (no host sync on a GPU).
    A filler row's one attended token is not counted: it is a row without targets."""
    targets = batch["labels"] != -100
    return (batch["attention_mask"] * targets.any(dim=1, keepdim=True)).sum() + targets.sum()


def _pad(rows: list[list[int]], fill: int, pad_to: int | None, multiple_of: int = 1):
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = pad_to or int(lens.max())
    if multiple_of > 1:
        width = -(-width // multiple_of) * multiple_of
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lens.sum()))
    out = np.full((len(rows), width), fill, dtype=np.int64)
    mask = np.arange(width)[None, :] < lens[:, None]
    out[mask] = flat
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))


class PromptResponseBatches:
    """Core's `Batches` protocol over parquet files: set_epoch, __iter__, state_dict, load_state_dict."""

    def __init__(self, files, tokenizer, cfg: DataConfig, *, pad_id: int, eos_id: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, memory_log=None, shapes=None, fixed_shapes: bool = False):
        """``shapes`` (core's BatchShapes): batches grouped by length buckets (module docstring);
        ``fixed_shapes``: padded to the group's shape and filled with filler rows (the fast path)."""
        from trainstack.data import ParquetStream

        if fixed_shapes and shapes is None:
            raise ValueError("fixed_shapes needs shapes (length buckets)")
        self.shapes, self.fixed_shapes = shapes, fixed_shapes

        self.files = expand_files(files)
        self.cfg = cfg
        self.columns = [cfg.prompt_column, cfg.response_column]
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.num_rows = check_schema(self.files, self.columns)
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = pad_id, eos_id
        self.seed = seed
        self.id_column = cfg.id_column or None
        self.max_tokens = cfg.batch_size * cfg.max_seq_len
        self.max_batch_rows = cfg.max_batch_rows or cfg.batch_size * 8
        cols = self.columns + ([self.id_column] if self.id_column else [])
        # One unsharded stream on every rank: ranks split batches, not rows (module docstring).
        self.stream = ParquetStream([str(f) for f in self.files], columns=cols, batch_rows=cfg.read_batch_rows,
                                    shuffle_buffer=cfg.shuffle_buffer, seed=seed)
        self.epoch = 0
        self.skipped = SkipCounts()
        self.memory_log = memory_log  # callable(batches_yielded) or None
        self._resume: dict | None = None
        self.estimated_batches: int | None = None
        self._state = self._fresh_state()

    def _fresh_state(self) -> dict:
        return {"epoch": self.epoch, "stream": None, "bucket": 0, "batches_done": 0}

    # -- Batches protocol -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if self._resume is not None and self._resume["epoch"] == epoch:
            return  # keep the loaded mid-epoch position
        self._resume = None
        self.epoch = epoch
        self.stream.set_epoch(epoch)
        self._state = self._fresh_state()

    def state_dict(self) -> dict:
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.stream.set_epoch(self.epoch)
        if state.get("stream") is not None:
            self.stream.load_state_dict(state["stream"])
        self._state = dict(state)
        self._resume = dict(state)

    def __len__(self) -> int:
        """An upper bound on this rank's micro-batches per epoch (lengths are not known before reading).

        fit() stops a run after epochs * ceil(len / accum) optimizer steps, so this must never be below
        the real count, or the last epoch would end early without a word; over-counting only makes the
        progress bar's total too large. The bound: rows are at most max_seq_len tokens, so every batch
        but the last of each length-sorted chunk (>= 100 rows, core's token_budget_batches) holds at
        least min(batch_size, max_batch_rows) rows; each bucket adds at most one round on a rank.
        `estimate_batches` gives the expected count (used for the lr schedule).
        """
        if self.estimated_batches is None:
            buckets = math.ceil(self.num_rows / self.cfg.bucket_rows)
            if self.shapes is not None:  # the widest shape holds the fewest rows; one short batch per bucket
                min_rows = self.shapes.rows((self.cfg.max_seq_len,))
                partial = buckets
            else:
                min_rows = max(1, min(self.cfg.batch_size, self.max_batch_rows))
                partial = buckets * math.ceil(self.cfg.bucket_rows / 100)
            global_batches = math.ceil(self.num_rows / min_rows) + partial
            self.estimated_batches = max(1, math.ceil(global_batches / self.world_size) + buckets)
        return self.estimated_batches

    def estimate_batches(self, sample_rows: int = 4096, slack: float = 1.1) -> int:
        f = pq.ParquetFile(self.files[0])
        rb = next(f.iter_batches(batch_size=sample_rows, columns=self.columns), None)
        pairs = [] if rb is None else [(p, r) for p, r in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist(),
                                                              strict=True) if p and r]
        rows_per_rank = math.ceil(self.num_rows / self.world_size)
        if not pairs:
            return max(1, math.ceil(rows_per_rank / self.cfg.batch_size))
        src, tgt = tokenize_pairs(self.tokenizer, [p for p, _ in pairs], [r for _, r in pairs], self.cfg.max_seq_len,
                                  self.eos_id)
        n_batches = len(self._bucket_batches(src, tgt, 0))
        rows_per_batch = len(pairs) / n_batches
        # With W ranks, each bucket may end in one round that holds padding batches.
        padding_rounds = math.ceil(self.num_rows / self.cfg.bucket_rows) if self.world_size > 1 else 0
        return max(1, math.ceil(slack * rows_per_rank / rows_per_batch) + padding_rounds + 1)

    def __iter__(self) -> Iterator[dict]:
        resume, self._resume = self._resume, None
        bucket = resume["bucket"] if resume else 0
        skip = resume["batches_done"] if resume else 0
        # Rows pulled from the stream this epoch; a bucket's start position is "skip this many rows".
        pulled = [resume["stream"]["rows_consumed"] if resume and resume.get("stream") else 0]
        rows = iter(self.stream)
        yielded = 0
        while True:
            start_state = {"epoch": self.epoch, "rows_consumed": pulled[0]}
            chunk = self._read_bucket(rows, pulled)
            if chunk is None:
                break
            src, tgt, ids = chunk
            batches = self._bucket_batches(src, tgt, bucket)
            mine = batches[self.rank::self.world_size]
            rounds = -(-len(batches) // self.world_size)  # the same on every rank
            for i in range(skip, rounds):
                if i < len(mine):
                    key, idx = mine[i]
                    batch = self._collate([src[j] for j in idx], [tgt[j] for j in idx], key)
                    if ids is not None:
                        batch["row_ids"] = self._row_ids([ids[j] for j in idx], batch)
                else:
                    batch = self._padding_batch(ids is not None)
                self._state = {"epoch": self.epoch, "stream": start_state, "bucket": bucket, "batches_done": i + 1}
                yielded += 1
                if self.memory_log is not None:
                    self.memory_log(yielded)
                yield batch
            skip = 0
            bucket += 1

    def _collate(self, src: list[list[int]], tgt: list[list[int]], key: tuple[int, int] | None) -> dict:
        """``key``: the batch's group (core's BatchShapes), whose shape the fast path pads it to."""
        if not self.fixed_shapes:
            return collate(src, tgt, self.pad_id, multiple_of=self.cfg.pad_to_multiple_of)
        return collate(src, tgt, self.pad_id, shape=self.shapes.shape(key), filler_id=self.eos_id)

    def _row_ids(self, ids: list, batch: dict):
        if not self.fixed_shapes:
            return ids
        # A tensor, as a captured step needs every value of a batch to be; filler rows are -1.
        out = torch.full((batch["input_ids"].shape[0],), -1, dtype=torch.int64)
        out[:len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def _padding_batch(self, with_ids: bool) -> dict:
        """One EOS -> EOS row that keeps this rank in step with the others; its loss counts 0."""
        smallest = (self.shapes.buckets.sizes[0],) * 2 if self.shapes is not None else None
        batch = self._collate([[self.eos_id]], [[self.eos_id]], smallest)
        batch["is_padding"] = True
        if with_ids:
            batch["row_ids"] = self._row_ids([], batch)
        return batch

    # -- internals --------------------------------------------------------------------------
    def _read_bucket(self, rows: Iterator[dict], pulled: list[int]):
        prompts, responses, ids = [], [], []
        pc, rc = self.columns
        for row in rows:
            pulled[0] += 1
            p, r = row.get(pc), row.get(rc)
            if p is None or r is None:
                self._bad_row("null", pc if p is None else rc, row)
                continue
            if not p or not r:
                self._bad_row("empty", pc if not p else rc, row)
                continue
            prompts.append(p)
            responses.append(r)
            if self.id_column:
                ids.append(row[self.id_column])
            if len(prompts) >= self.cfg.bucket_rows:
                break
        if not prompts:
            return None
        src, tgt = tokenize_pairs(self.tokenizer, prompts, responses, self.cfg.max_seq_len, self.eos_id)
        return src, tgt, (ids if self.id_column else None)

    def _bad_row(self, kind: str, column: str, row: dict) -> None:
        where = f"row {row[self.id_column]!r}" if self.id_column else "a row"
        files = ", ".join(map(str, self.files[:3])) + (" ..." if len(self.files) > 3 else "")
        what = f"{where} of {files} has {'a null' if kind == 'null' else 'an empty'} '{column}'"
        if self.cfg.on_bad_row == "error":
            raise DataError(what + " (data.on_bad_row=skip counts and skips such rows)")
        if kind == "null":
            self.skipped.null += 1
        else:
            self.skipped.empty += 1
        if len(self.skipped.first) < 5:
            self.skipped.first.append(what)

    def _bucket_batches(self, src, tgt, bucket: int) -> list[tuple[tuple[int, int] | None, list[int]]]:
        """(shape key or None without length buckets, row indices) per batch of this bucket of rows."""
        from trainstack.data import token_budget_batches

        seed = self.seed * 1_000_003 + bucket
        if self.shapes is not None:
            return self.shapes.batches([(len(s), len(t)) for s, t in zip(src, tgt, strict=True)], seed, self.epoch)
        lengths = [max(len(s), len(t)) for s, t in zip(src, tgt, strict=True)]
        return [(None, idx) for idx in token_budget_batches(lengths, self.max_tokens, seed=seed, epoch=self.epoch,
                                                             max_batch_size=self.max_batch_rows)]


def read_valid_pairs(files, cfg: DataConfig, rank: int = 0, world_size: int = 1, max_rows: int = 0,
                     tokenizer=None, eos_id: int | None = None,
                     skipped: SkipCounts | None = None) -> Iterator[tuple[list[int], list[int], str]]:
    """This rank's share of the validation rows, in file order: (prompt ids, response ids, response text).
    Row i goes to rank i % world_size, so the union over ranks is the whole set, each row once. Null or
    empty rows are skipped and counted in `skipped` (every rank counts all of them)."""
    files = expand_files(files)
    columns = [cfg.prompt_column, cfg.response_column]
    check_schema(files, columns)
    i = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=cfg.read_batch_rows, columns=columns):
            prompts, responses = rb.column(0).to_pylist(), rb.column(1).to_pylist()
            mine_p, mine_r = [], []
            for p, r in zip(prompts, responses, strict=True):
                if max_rows and i >= max_rows:
                    break
                ok = bool(p) and bool(r)
                if not ok and skipped is not None:
                    if p is None or r is None:
                        skipped.null += 1
                    else:
                        skipped.empty += 1
                if ok and i % world_size == rank:
                    mine_p.append(p)
                    mine_r.append(r)
                i += ok
            if mine_p:
                src, tgt = tokenize_pairs(tokenizer, mine_p, mine_r, cfg.max_seq_len, eos_id)
                yield from zip(src, tgt, mine_r, strict=True)
            if max_rows and i >= max_rows:
                return


class MemoryLog:
    """Appends RSS and GPU memory to run_dir/memory.jsonl every `every` micro-batches (no GPU sync)."""

    def __init__(self, path, every: int):
        self.path = Path(path)
        self.every = every
        self.t0 = time.time()

    def __call__(self, batches: int) -> None:
        if not self.every or batches % self.every:
            return
        from trainstack.memory import memory_report

        rec = {"batches": batches, "seconds": round(time.time() - self.t0, 2), **memory_report().as_dict()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

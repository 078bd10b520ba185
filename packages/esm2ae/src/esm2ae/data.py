"""Protein data: FASTA (plain or gzip) and parquet (`sequence` column), alphabet validation,
cropping, MLM masking (15%, 80/10/10), held-out split, token-budget packing into micro-batches.

Bad records are skipped and counted by reason, with their ids, never fatal mid-run; a file with
no usable record at all is an error naming the file.
"""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esm2ae.model import CLS_ID, EOS_ID, MASK_ID, RESIDUE_IDS, TOKEN_TO_ID, PackedBatch, pack_sequences

# The 20 standard residues plus X (unknown), B (D/N), Z (E/Q), U (selenocysteine), O (pyrrolysine).
ALPHABET = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
STANDARD_IDS = [TOKEN_TO_ID[c] for c in "ACDEFGHIKLMNPQRSTVWY"]


class DataError(ValueError):
    """Input that cannot be used at all (empty file, unreadable gzip, missing column)."""


@dataclass
class Record:
    id: str
    sequence: str


@dataclass
class ReadReport:
    path: str
    records: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)   # reason -> record ids
    longer_than_crop: int = 0

    def skip(self, reason: str, rid: str) -> None:
        self.skipped.setdefault(reason, []).append(rid)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.records} records, {self.kept} kept"]
        for reason, ids in self.skipped.items():
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            parts.append(f"{len(ids)} skipped ({reason}: {shown})")
        if self.longer_than_crop:
            parts.append(f"{self.longer_than_crop} longer than max_length (training crops them at random each epoch; eval and embed split them into windows)")
        return "; ".join(parts)


def _open_text(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def iter_fasta(path) -> Iterator[Record]:
    """Records of a FASTA file (gzip detected by magic bytes). Corrupt gzip -> DataError."""
    path = Path(path)
    rid, chunks, line_no = None, [], 0
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if rid is not None:
                        yield Record(rid, "".join(chunks))
                    rid = line[1:].split()[0] if len(line) > 1 else f"record@line{line_no}"
                    chunks = []
                elif rid is None:
                    raise DataError(f"{path}:{line_no}: sequence data before the first '>' header; not FASTA?")
                else:
                    chunks.append(line)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable (corrupt or truncated gzip?) after line {line_no}: {e}") from None
    if rid is not None:
        yield Record(rid, "".join(chunks))


def iter_parquet(path, column: str = "sequence", id_column: str = "id") -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path}: no '{column}' column; columns: {', '.join(names)}")
    cols = [column] + ([id_column] if id_column in names else [])
    row = 0
    batches = pf.iter_batches(columns=cols, batch_size=4096)
    while True:
        try:
            rb = next(batches, None)
        except (OSError, ValueError) as e:  # pyarrow's errors: a page cut short behind a readable footer
            raise DataError(f"{path}: unreadable after row {row}: {e}") from None
        if rb is None:
            return
        seqs = rb.column(column).to_pylist()
        ids = rb.column(id_column).to_pylist() if id_column in names else [None] * len(seqs)
        for s, i in zip(seqs, ids, strict=True):
            yield Record(str(i) if i is not None else f"row{row}", s or "")
            row += 1


def check_parquet_source(path, column: str = "sequence") -> int:
    """For streamed input, before training: every parquet file under ``path`` opens and has the
    column, and at least one row is usable (the scan stops at the first). Returns the file count;
    raises DataError naming the file or the path."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"{p}: no *.parquet files inside")
    for f in files:
        try:
            names = pq.ParquetFile(f).schema_arrow.names
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"{f}: not a readable parquet file: {e}") from None
        if column not in names:
            raise DataError(f"{f}: no '{column}' column; columns: {', '.join(names)}")
    report = ReadReport(str(p))
    for f in files:
        for rec in iter_parquet(f, column):
            if clean(rec, report) is not None:
                return len(files)
    raise DataError(f"{p}: no usable sequences" + (f" ({report.summary()})" if report.records else " (no rows)"))


def iter_records(path) -> Iterator[Record]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.suffix == ".parquet":
        return iter_parquet(p)
    return iter_fasta(p)


def clean(record: Record, report: ReadReport) -> str | None:
    """Upper-cased sequence, or None (counted in ``report``) when it cannot be used."""
    report.records += 1
    seq = (record.sequence or "").strip().upper()
    if seq.endswith("*"):  # a trailing stop codon marker is common in FASTA exports
        seq = seq[:-1]
    if not seq:
        report.skip("empty sequence", record.id)
        return None
    bad = set(seq) - ALPHABET
    if bad:
        report.skip("invalid characters", f"{record.id} ({''.join(sorted(bad))[:10]})")
        return None
    report.kept += 1
    return seq


def read_sequences(path, max_length: int | None = None, limit: int | None = None) -> tuple[list[Record], ReadReport]:
    """All usable records of a file (validated), with a report of what was skipped and why."""
    report = ReadReport(str(path))
    out = []
    try:
        for rec in iter_records(path):
            seq = clean(rec, report)
            if seq is None:
                continue
            if max_length and len(seq) + 2 > max_length:
                report.longer_than_crop += 1
            out.append(Record(rec.id, seq))
            if limit and len(out) >= limit:
                break
    except DataError as e:
        # all input is read before training starts, so a bad file stops the run here, not mid-run
        raise DataError(f"{e}; {report.records} records read before the error") from None
    if not out:
        detail = f" ({report.summary()})" if report.records else ""
        raise DataError(f"{path}: no usable sequences{detail}")
    return out, report


def encode(seq: str) -> list[int]:
    return [CLS_ID] + [TOKEN_TO_ID[c] for c in seq] + [EOS_ID]


def crop(tokens_body: str, max_length: int, rng: random.Random | None) -> str:
    """Crop a residue string so that it fits max_length tokens with <cls>/<eos>: a random window
    (new each epoch) when ``rng`` is given, the first window otherwise (evaluation)."""
    room = max_length - 2
    if len(tokens_body) <= room:
        return tokens_body
    start = rng.randrange(len(tokens_body) - room + 1) if rng is not None else 0
    return tokens_body[start:start + room]


def split_windows(seq: str, max_length: int) -> list[str]:
    """Non-overlapping windows covering a long sequence (for embedding / evaluation)."""
    room = max_length - 2
    return [seq[i:i + room] for i in range(0, len(seq), room)] or [seq]


def mask_tokens(tokens: list[int], rng: random.Random, prob: float = 0.15) -> tuple[list[int], list[int]]:
    """BERT/ESM masking over residues (never <cls>/<eos>): 15% chosen; 80% -> <mask>,
    10% -> a random standard residue, 10% unchanged. Labels are -100 elsewhere. At least one
    position is chosen so every sequence contributes to the loss."""
    n = len(tokens)
    inp, lab = list(tokens), [-100] * n
    chosen = [i for i in range(1, n - 1) if rng.random() < prob]
    if not chosen and n > 2:
        chosen = [rng.randrange(1, n - 1)]
    for i in chosen:
        lab[i] = tokens[i]
        r = rng.random()
        if r < 0.8:
            inp[i] = MASK_ID
        elif r < 0.9:
            inp[i] = rng.choice(STANDARD_IDS)
    return inp, lab


def train_val_split(records: list[Record], val_fraction: float, seed: int,
                    min_val: int = 1) -> tuple[list[Record], list[Record]]:
    """Deterministic held-out split by record (shuffled with ``seed``)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_val = 0 if val_fraction <= 0 else max(min_val, int(round(len(records) * val_fraction)))
    n_val = min(n_val, len(records) - 1)
    val = [records[i] for i in sorted(idx[:n_val])]
    train = [records[i] for i in sorted(idx[n_val:])]
    return train, val


def pack_indices(lengths: list[int], max_tokens: int, rng: random.Random | None) -> list[list[int]]:
    """Micro-batches of at most ``max_tokens`` real tokens. Packed rows need no length bucketing:
    first-fit over a shuffled order keeps fill high without sorting by length."""
    order = list(range(len(lengths)))
    if rng is not None:
        rng.shuffle(order)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        # first fit among the last few open bins: cheap and fills to ~99% with 512-token crops
        for b in range(max(0, len(bins) - 8), len(bins)):
            if room[b] >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_tokens - n)
    if rng is not None:
        rng.shuffle(bins)
    return bins


class PackedMLMBatches:
    """Resumable epoch iterator of packed, masked micro-batches (core's ``Batches`` protocol).

    Each epoch re-crops long sequences at random, re-masks, and re-packs, all from
    (seed, epoch), so a resumed run sees exactly the batches it would have seen.

    With ``world_size > 1`` every rank packs all sequences the same way and takes every
    world_size-th micro-batch, cut to the same count on every rank: ranks that ran out of batches
    at different times would leave a gradient all-reduce waiting at the end of an epoch.
    """

    def __init__(self, sequences: list[str], max_length: int, max_tokens: int, seed: int = 0,
                 mask_prob: float = 0.15, fixed_len: bool = False, overfit_batches: int = 0,
                 random_crop: bool = True, mask: bool = True, rank: int = 0, world_size: int = 1):
        if max_tokens < max_length:
            raise ValueError(f"max_tokens_per_batch ({max_tokens}) < max_length ({max_length})")
        self.sequences = sequences
        self.max_length = max_length
        self.max_tokens = max_tokens
        self.seed = seed
        self.mask_prob = mask_prob
        self.fixed_len = fixed_len
        self.overfit_batches = overfit_batches
        self.random_crop = random_crop
        self.mask = mask
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch
        self._plan = None

    def _build(self):
        # overfit_batches: the same first batches every epoch (crops and masks fixed too)
        epoch = 0 if self.overfit_batches else self.epoch
        rng = random.Random(self.seed * 1_000_003 + epoch)
        bodies = [crop(s, self.max_length, rng if self.random_crop else None) for s in self.sequences]
        toks = [encode(b) for b in bodies]
        groups = pack_indices([len(t) for t in toks], self.max_tokens, rng)
        if self.world_size > 1:
            per_rank = len(groups) // self.world_size
            if per_rank == 0:
                raise ValueError(f"{len(groups)} packed micro-batches for {self.world_size} GPUs: "
                                 "too little data or too large batch.max_tokens_per_batch")
            groups = groups[self.rank::self.world_size][:per_rank]
        if self.overfit_batches:
            groups = groups[: self.overfit_batches]
        return toks, groups, rng

    def plan(self):
        if self._plan is None:
            self._plan = self._build()
        return self._plan

    def __len__(self) -> int:
        return len(self.plan()[1])

    def __iter__(self) -> Iterator[PackedBatch]:
        toks, groups, _ = self.plan()
        while self.position < len(groups):
            g = groups[self.position]
            # per-batch RNG so masks do not depend on where a resumed run started
            rng = random.Random(hash((self.seed, self.epoch if not self.overfit_batches else 0, self.rank,
                                      self.position)))
            if self.mask:
                pairs = [mask_tokens(toks[i], rng, self.mask_prob) for i in g]
                inputs, labels = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                inputs, labels = [toks[i] for i in g], None
            self.position += 1
            yield pack_sequences(inputs, labels, total_len=self.max_tokens if self.fixed_len else None)
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._plan = None


def real_tokens(batch: PackedBatch) -> torch.Tensor:
    return batch.cu_seqlens[batch.num_seqs]


__all__ = ["ALPHABET", "DataError", "PackedMLMBatches", "ReadReport", "Record", "RESIDUE_IDS", "crop", "encode",
           "iter_fasta", "iter_parquet", "mask_tokens", "pack_indices", "read_sequences", "split_windows",
           "train_val_split"]


class StreamingMLMBatches:
    """Packed, masked micro-batches streamed from parquet files larger than RAM, through core's
    ``ParquetStream`` (row groups sharded over ranks, shuffle buffer, resumable by rows consumed).

    Bad rows are skipped and counted in ``report`` as they stream by. A resumed run restarts at
    the first row of the next micro-batch, with the same crops and masks as an uninterrupted run.
    """

    def __init__(self, paths, max_length: int, max_tokens: int, seed: int = 0, mask_prob: float = 0.15,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 10_000, fixed_len: bool = False,
                 column: str = "sequence"):
        from trainstack.data import ParquetStream

        self.stream = ParquetStream(paths, columns=[column], shuffle_buffer=shuffle_buffer, seed=seed,
                                    rank=rank, world_size=world_size)
        self.column = column
        self.max_length, self.max_tokens = max_length, max_tokens
        self.seed, self.mask_prob, self.fixed_len = seed, mask_prob, fixed_len
        self.report = ReadReport(str(paths))
        self._batch_start_rows = 0

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def _rng(self, epoch: int, first_row: int) -> random.Random:
        # one RNG per micro-batch, keyed by its first row: crops and masks after a resume match
        # the uninterrupted run's
        return random.Random(hash((self.seed, epoch, self.stream.rank, first_row)))

    def __iter__(self) -> Iterator[PackedBatch]:
        epoch = self.stream.epoch
        self._batch_start_rows = self.stream.rows_consumed
        rng = self._rng(epoch, self._batch_start_rows)
        inputs, labels, used = [], [], 0
        for row in self.stream:
            row_index = self.stream.rows_consumed - 1
            seq = clean(Record(f"row{row_index}", row[self.column]), self.report)
            if seq is None:
                continue
            n_tokens = min(len(seq), self.max_length - 2) + 2   # after cropping, whatever the window
            if used + n_tokens > self.max_tokens and inputs:
                # this row starts the next batch: once the consumer has the finished one, a
                # checkpoint must resume from here (set before the yield, not after)
                self._batch_start_rows = row_index
                yield pack_sequences(inputs, labels, total_len=self.max_tokens if self.fixed_len else None)
                rng = self._rng(epoch, row_index)
                inputs, labels, used = [], [], 0
            toks = encode(crop(seq, self.max_length, rng))
            inp, lab = mask_tokens(toks, rng, self.mask_prob)
            inputs.append(inp)
            labels.append(lab)
            used += n_tokens
        if inputs:
            self._batch_start_rows = self.stream.rows_consumed
            yield pack_sequences(inputs, labels, total_len=self.max_tokens if self.fixed_len else None)

    def state_dict(self) -> dict:
        return {"epoch": self.stream.epoch, "rows_consumed": self._batch_start_rows}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self._batch_start_rows = int(state["rows_consumed"])

"""Sentence pairs in, token-budget batches out.

    sources (hub names or .tsv/.jsonl/.parquet) -> selection (per-source caps, 10..400-char filter,
    dedup: data.selection) -> held-out validation slice -> tokenize with language codes -> parquet
    cache (by fingerprint) -> TranslationBatches (length-bucketed token-budget batches, resumable mid-epoch)

data.selection=recipe (the default) follows the users' recipe: the first 5,000,000 rows of WMT19
zh-en as they are, plus the first 500,000 rows of OPUS-100 en-zh kept when both sides are 10..400
characters; no dedup. A cap takes the first N rows of its source (rows later dropped still count).
data.selection=cleaned is ours: every source length-filtered, exact duplicates dropped across
sources, and a cap counts the pairs kept.

Bad rows (wrong column count, empty side, non-UTF-8, invalid JSON, missing key) are counted per
source and reported with their file:line; they never stop the run. Over-length pairs are dropped by
the character filter or, past `max_length` tokens, truncated; both are counted.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from trainstack.data import token_budget_batches

CACHE_VERSION = 1
HUB_SOURCES = {
    # name -> (dataset id, config, train split, test split). OPUS-100 only ships "en-zh": the pair is
    # read by language key, never by position, so its column order does not matter.
    "wmt19": ("wmt/wmt19", "zh-en", "train", "validation"),
    "opus100": ("Helsinki-NLP/opus-100", "en-zh", "train", "test"),
    "opus-100": ("Helsinki-NLP/opus-100", "en-zh", "train", "test"),
}
MAX_REPORTED_EXAMPLES = 5


class DataError(ValueError):
    pass


@dataclass
class SourceReport:
    name: str
    rule: str = ""
    """How this source's pairs were chosen (cap, filter, dedup), for the log."""
    read: int = 0
    kept: int = 0
    bad: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    def bad_row(self, where: str, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.examples) < MAX_REPORTED_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def as_dict(self) -> dict:
        return {"name": self.name, "rule": self.rule, "read": self.read, "kept": self.kept, "bad": dict(self.bad),
                "filtered": dict(self.filtered), "examples": self.examples}

    def line(self) -> str:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items())) or "none"
        filt = ", ".join(f"{k} {v}" for k, v in sorted(self.filtered.items())) or "none"
        rule = f" ({self.rule})" if self.rule else ""
        return f"data {self.name}{rule}: read {self.read}, kept {self.kept}, bad rows: {bad}; filtered: {filt}"


SHIPPED_SAMPLES = {"sample": "zh-en.sample.tsv", "sample-test": "zh-en.test.tsv"}


def resolve_source(source: str) -> str:
    """The shipped zh-en samples by name ("sample", "sample-test"); anything else unchanged."""
    if source in SHIPPED_SAMPLES and not Path(source).exists():
        from importlib import resources

        return str(resources.files("mt_nllb") / "data" / SHIPPED_SAMPLES[source])
    return source


def _is_hub_name(source: str) -> bool:
    return source.lower() in HUB_SOURCES and not Path(source).exists()


def _pairs_from_translation(obj, src_key, tgt_key):
    if isinstance(obj, dict) and "translation" in obj and isinstance(obj["translation"], dict):
        t = obj["translation"]
        if src_key not in t or tgt_key not in t:
            return None, f"translation lacks key {src_key!r} or {tgt_key!r} (has {sorted(t)})"
        return (t[src_key], t[tgt_key]), None
    if isinstance(obj, dict) and "src" in obj and "tgt" in obj:
        return (obj["src"], obj["tgt"]), None
    if isinstance(obj, dict) and src_key in obj and tgt_key in obj:
        return (obj[src_key], obj[tgt_key]), None
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    return None, f"expected 'translation' {{{src_key}, {tgt_key}}} or 'src'/'tgt' keys, got {keys}"


def _at_row_cap(report: SourceReport, max_rows: int) -> bool:
    return bool(max_rows) and report.read >= max_rows


def iter_source(source: str, src_key: str, tgt_key: str, report: SourceReport, split: str = "train",
                max_rows: int = 0):
    """Yield (src, tgt, where) raw pairs; malformed rows go to ``report``. ``max_rows`` > 0: read only
    the first that many rows (bad rows included), as a dataset's ``select(range(N))`` does."""
    source = resolve_source(source)
    if _is_hub_name(source):
        yield from _iter_hub(source, src_key, tgt_key, report, split, max_rows)
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source not found: {source} (not a file, nor one of {', '.join(HUB_SOURCES)})")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if _at_row_cap(report, max_rows):
                    return
                report.read += 1
                where = f"{path.name}:{n}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    report.bad_row(where, f"not UTF-8 ({e.reason} at byte {e.start})")
                    continue
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 2:
                    report.bad_row(where, f"expected 2 tab-separated columns, got {len(parts)}")
                    continue
                yield parts[0], parts[1], where
    elif suffix in (".jsonl", ".json"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path.name}:{n}"
                if not raw.strip():
                    continue
                if _at_row_cap(report, max_rows):
                    return
                report.read += 1
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    report.bad_row(where, f"not UTF-8 ({e.reason} at byte {e.start})")
                    continue
                except json.JSONDecodeError as e:
                    report.bad_row(where, f"invalid JSON ({e.msg})")
                    continue
                pair, err = _pairs_from_translation(obj, src_key, tgt_key)
                if err:
                    report.bad_row(where, err)
                    continue
                yield pair[0], pair[1], where
    elif suffix == ".parquet":
        yield from _iter_parquet(path, src_key, tgt_key, report, max_rows)
    else:
        raise DataError(f"{source}: unsupported file type {suffix!r} (use .tsv, .jsonl or .parquet)")


def _iter_hub(source: str, src_key: str, tgt_key: str, report: SourceReport, split: str, max_rows: int = 0):
    from trainstack.hub import loading

    dataset_id, config, train_split, test_split = HUB_SOURCES[source.lower()]
    # Offline, not cached, or `datasets` missing: one line naming the dataset and what to do.
    with loading(dataset_id, what="dataset", key="data.train" if split == "train" else "data.test",
                 install="mt-nllb[hub]"):
        from datasets import load_dataset

        ds = load_dataset(dataset_id, config, split=train_split if split == "train" else test_split, streaming=True)
        rows = iter(ds)
        i = 0
        while not _at_row_cap(report, max_rows) and (row := next(rows, None)) is not None:
            report.read += 1
            pair, err = _pairs_from_translation(row, src_key, tgt_key)
            if err:
                report.bad_row(f"{source}:{i}", err)
            else:
                yield pair[0], pair[1], f"{source}:{i}"
            i += 1


def _iter_parquet(path: Path, src_key: str, tgt_key: str, report: SourceReport, max_rows: int = 0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                if _at_row_cap(report, max_rows):
                    return
                n += 1
                report.read += 1
                pair, err = _pairs_from_translation(row, src_key, tgt_key)
                if err:
                    report.bad_row(f"{path.name}:row {n}", err)
                    continue
                yield pair[0], pair[1], f"{path.name}:row {n}"
    except (pa.ArrowException, OSError) as e:  # truncated, or another format under a .parquet name
        raise DataError(f"{path}: not a readable parquet file after {n} rows ({e}); a truncated copy, or JSON/TSV "
                        f"saved as .parquet? Re-export it, or name it by its format (.jsonl, .tsv)") from None


def read_pairs(sources, caps, src_key, tgt_key, min_chars, max_chars, dedup=True, split="train", *,
               length_filter=None, caps_count="kept"):
    """Mixed pairs ``[(src, tgt)]`` and one SourceReport per source.

    ``length_filter``: per source, whether the min_chars..max_chars filter applies (None = every
    source). ``caps_count``: "rows" = a cap takes the first N rows of its source; "kept" = a cap
    counts the pairs kept after filtering and dedup. ``dedup`` drops exact duplicate pairs across
    sources. Empty sides and rows that are not text are bad rows under every rule."""
    if caps_count not in ("rows", "kept"):
        raise ValueError(f"caps_count must be 'rows' or 'kept', got {caps_count!r}")
    caps = list(caps) or [0] * len(sources)
    filters = [True] * len(sources) if length_filter is None else list(length_filter)
    pairs, reports, seen = [], [], set()
    for source, cap, filtered in zip(sources, caps, filters, strict=True):
        report = SourceReport(source, _describe_rule(cap, caps_count, filtered, min_chars, max_chars, dedup))
        reports.append(report)
        rows = iter_source(source, src_key, tgt_key, report, split=split,
                           max_rows=cap if caps_count == "rows" else 0)
        for src, tgt, where in rows:
            if cap and caps_count == "kept" and report.kept >= cap:
                break
            if not isinstance(src, str) or not isinstance(tgt, str):
                report.bad_row(where, "a side is not text")
                continue
            src, tgt = src.strip(), tgt.strip()
            if not src or not tgt:
                report.bad_row(where, "empty side")
                continue
            if filtered and not (min_chars <= len(src) <= max_chars and min_chars <= len(tgt) <= max_chars):
                report.filtered["length"] += 1
                continue
            if dedup:
                key = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=12).digest()
                if key in seen:
                    report.filtered["duplicate"] += 1
                    continue
                seen.add(key)
            report.kept += 1
            pairs.append((src, tgt))
    return pairs, reports


def _describe_rule(cap: int, caps_count: str, filtered: bool, min_chars: int, max_chars: int, dedup: bool) -> str:
    parts = [f"first {cap} rows" if caps_count == "rows" else f"up to {cap} kept pairs"] if cap else []
    parts.append(f"{min_chars}..{max_chars} chars" if filtered else "no length filter")
    parts.append("dedup" if dedup else "no dedup")
    return ", ".join(parts)


def _is_opus100(source: str) -> bool:
    return _is_hub_name(source) and HUB_SOURCES[source.lower()][0] == "Helsinki-NLP/opus-100"


def selection_options(data_cfg) -> dict:
    """read_pairs' keyword arguments for ``data.selection`` (and the data keys that refine it)."""
    recipe = data_cfg.selection == "recipe"
    if not recipe:
        length_filter = None
    elif data_cfg.length_filter:
        length_filter = list(data_cfg.length_filter)
    else:  # the users' recipe filters OPUS-100 only
        length_filter = [_is_opus100(source) for source in data_cfg.train]
    dedup = (not recipe) if data_cfg.dedup is None else data_cfg.dedup
    return {"dedup": dedup, "length_filter": length_filter, "caps_count": "rows" if recipe else "kept"}


def read_training_pairs(data_cfg):
    """The training pairs (validation not yet held out) and the per-source reports, as ``data.*`` says."""
    return read_pairs(data_cfg.train, data_cfg.caps, data_cfg.src_key, data_cfg.tgt_key, data_cfg.min_chars,
                      data_cfg.max_chars, **selection_options(data_cfg))


def split_validation(pairs, validation_rows: int, seed: int):
    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    n_val = min(validation_rows, max(0, len(pairs) - 1))
    val = [pairs[i] for i in sorted(idx[:n_val])]
    train = [pairs[i] for i in sorted(idx[n_val:])]
    return train, val


@dataclass
class TokenizedPairs:
    """Token ids as flat int32 arrays + offsets (compact at millions of pairs), texts kept for eval."""
    src_flat: np.ndarray
    src_offsets: np.ndarray
    tgt_flat: np.ndarray
    tgt_offsets: np.ndarray
    src_text: list[str]
    tgt_text: list[str]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src(self, i: int) -> np.ndarray:
        return self.src_flat[self.src_offsets[i]:self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_flat[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.maximum(np.diff(self.src_offsets), np.diff(self.tgt_offsets))


def _flatten(seqs):
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def tokenize_pairs(pairs, tokenizer, src_lang_id: int, tgt_lang_id: int, eos_id: int, max_length: int,
                   batch_rows: int = 10000, progress: bool = False) -> TokenizedPairs:
    """NLLB layout on both sides: [lang_code] pieces </s> (the non-legacy NllbTokenizer format)."""
    src_seqs, tgt_seqs, truncated = [], [], 0
    body = max_length - 2
    starts = range(0, len(pairs), batch_rows)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="tokenize", unit="chunk")
    for start in starts:
        chunk = pairs[start:start + batch_rows]
        src_ids = tokenizer([p[0] for p in chunk], add_special_tokens=False)["input_ids"]
        tgt_ids = tokenizer([p[1] for p in chunk], add_special_tokens=False)["input_ids"]
        for s, t in zip(src_ids, tgt_ids, strict=True):
            if len(s) > body or len(t) > body:
                truncated += 1
            src_seqs.append([src_lang_id, *s[:body], eos_id])
            tgt_seqs.append([tgt_lang_id, *t[:body], eos_id])
    sf, so = _flatten(src_seqs)
    tf, to = _flatten(tgt_seqs)
    return TokenizedPairs(sf, so, tf, to, [p[0] for p in pairs], [p[1] for p in pairs], truncated)


def save_tokenized(tp: TokenizedPairs, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = pa.ListArray.from_arrays(pa.array(tp.src_offsets.astype(np.int32)), pa.array(tp.src_flat))
    tgt = pa.ListArray.from_arrays(pa.array(tp.tgt_offsets.astype(np.int32)), pa.array(tp.tgt_flat))
    table = pa.table({"src_ids": src, "tgt_ids": tgt, "src": tp.src_text, "tgt": tp.tgt_text})
    table = table.replace_schema_metadata({"truncated": str(tp.truncated)})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def load_tokenized(path: Path) -> TokenizedPairs:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    src, tgt = table.column("src_ids").combine_chunks(), table.column("tgt_ids").combine_chunks()
    meta = table.schema.metadata or {}
    return TokenizedPairs(
        src.values.to_numpy().astype(np.int32), src.offsets.to_numpy().astype(np.int64),
        tgt.values.to_numpy().astype(np.int32), tgt.offsets.to_numpy().astype(np.int64),
        table.column("src").to_pylist(), table.column("tgt").to_pylist(),
        int(meta.get(b"truncated", b"0")))


def _source_identity(source: str) -> str:
    path = Path(resolve_source(source))
    if path.exists():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"hub:{source.lower()}"


def fingerprint(data_cfg, tokenizer_spec: str, src_lang: str, tgt_lang: str) -> str:
    """Everything that changes the tokenized output; a rerun with the same fingerprint loads the cache."""
    payload = {
        "version": CACHE_VERSION, "sources": [_source_identity(s) for s in data_cfg.train],
        "caps": list(data_cfg.caps), "validation_rows": data_cfg.validation_rows,
        "chars": [data_cfg.min_chars, data_cfg.max_chars], "max_length": data_cfg.max_length,
        "selection": selection_options(data_cfg), "keys": [data_cfg.src_key, data_cfg.tgt_key], "seed": data_cfg.seed,
        "tokenizer": tokenizer_spec, "langs": [src_lang, tgt_lang],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def collate(tp: TokenizedPairs, indices, pad_id: int, decoder_start_id: int, buckets=None, rows: int = 0,
            head_row_multiple: int = 0):
    """input_ids/attention_mask (source), decoder_input_ids (shifted labels), labels (-100 on pad).

    For the fast path (a compiled or captured step sees a few shapes): ``buckets`` (core's
    LengthBuckets) pads each side to its bucket, and ``rows`` fills a short batch with filler rows. A
    filler row attends to one pad token (a fully masked attention row would give NaN) and all its
    labels are ignored: no loss, zero gradient, the mean over real tokens unchanged.
    ``head_row_multiple``: also head_positions / head_labels (head_gather), the rows the LM head runs over."""
    import torch

    n = len(indices)
    s_len = max(len(tp.src(i)) for i in indices)
    t_len = max(len(tp.tgt(i)) for i in indices)
    if buckets is not None:
        s_len, t_len = buckets.bucket(s_len), buckets.bucket(t_len)
    height = max(n, rows)
    input_ids = np.full((height, s_len), pad_id, dtype=np.int64)
    attention = np.zeros((height, s_len), dtype=np.int64)
    labels = np.full((height, t_len), -100, dtype=np.int64)
    dec = np.full((height, t_len), pad_id, dtype=np.int64)
    attention[n:, 0] = 1
    dec[:, 0] = decoder_start_id
    for row, i in enumerate(indices):
        s, t = tp.src(i), tp.tgt(i)
        input_ids[row, :len(s)] = s
        attention[row, :len(s)] = 1
        labels[row, :len(t)] = t
        dec[row, 1:len(t)] = t[:-1]
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
             "decoder_input_ids": torch.from_numpy(dec), "labels": torch.from_numpy(labels)}
    if head_row_multiple:
        positions, head_labels = head_gather(labels, head_row_multiple)
        batch.update(head_positions=torch.from_numpy(positions), head_labels=torch.from_numpy(head_labels))
    return batch


def head_gather(labels: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, their labels): the flat positions of ``labels``' real tokens, in order, padded to a
    multiple of ``multiple`` (never past every position) with a position whose label is ignored, so
    the padded rows add no loss and no gradient. The head then runs over these rows instead of every
    padded position: a shape of its own that depends on the real token count, in steps of ``multiple``."""
    flat = labels.reshape(-1)
    real = np.flatnonzero(flat != -100)
    size = min(max(-(-len(real) // multiple), 1) * multiple, len(flat))
    positions = np.empty(size, dtype=np.int64)
    positions[:len(real)] = real
    if size > len(real):  # then some position is padding
        positions[len(real):] = np.flatnonzero(flat == -100)[0]
    return positions, flat[positions]


def side_grouped_batches(side_lengths, buckets, max_tokens: int, seed: int, epoch: int, max_batch_size: int = 0,
                         fixed_batch_size: int = 0):
    """Batches whose rows share both sides' length buckets (core's BatchShapes): a batch sorted by its
    longest side still mixes short and long targets where source and target lengths differ, and pads
    every target to the longest. ``side_lengths``: (n, 2) source and target lengths. Fixed-size
    batches of ``fixed_batch_size`` rows (at most one short one), or a token budget per side."""
    from trainstack.speed.shapes import BatchShapes

    if fixed_batch_size:
        shapes = BatchShapes(buckets, max_tokens=fixed_batch_size * buckets.sizes[-1], max_rows=fixed_batch_size,
                             row_multiple=1)
    else:
        shapes = BatchShapes(buckets, max_tokens=max_tokens, max_rows=max_batch_size or max_tokens)
    rows = [(int(s), int(t)) for s, t in side_lengths]
    return [indices for _, indices in shapes.batches(rows, seed, epoch)]


def length_bucketed_batches(lengths, max_tokens: int, seed: int, epoch: int, max_batch_size: int = 0,
                            fixed_batch_size: int = 0):
    """Token-budget batches from core (padding counted), or fixed-size length-bucketed batches when
    ``fixed_batch_size`` is set (the same effective batch as a fixed-batch recipe, with little padding)."""
    lengths = [int(x) for x in lengths]
    if fixed_batch_size:
        budget = fixed_batch_size * max(lengths)  # never binding: the size cap decides
        return token_budget_batches(lengths, budget, seed=seed, epoch=epoch, max_batch_size=fixed_batch_size)
    return token_budget_batches(lengths, max_tokens, seed=seed, epoch=epoch, max_batch_size=max_batch_size or None)


class TranslationBatches:
    """core's ``Batches`` protocol over TokenizedPairs: set_epoch, iteration, resumable position."""

    def __init__(self, tp: TokenizedPairs, *, max_tokens: int, pad_id: int, decoder_start_id: int, seed: int = 0,
                 max_batch_size: int = 0, fixed_batch_size: int = 0, rank: int = 0, world_size: int = 1,
                 buckets=None, group_buckets=None, head_row_multiple: int = 0):
        """``buckets`` (core's LengthBuckets, the fast path): both sides padded to a bucket, and with a
        ``fixed_batch_size`` every batch filled to that many rows, so the step sees few shapes; with a
        ``head_row_multiple`` each batch also says which rows the LM head runs over (collate).
        ``group_buckets``: rows grouped by both sides' buckets (side_grouped_batches) instead of sorted
        by their longest side; the same batches whether or not ``buckets`` pads them."""
        self.rank, self.world_size, self.buckets, self.group_buckets = rank, world_size, buckets, group_buckets
        self.head_row_multiple = head_row_multiple if buckets is not None else 0
        self.tp, self.max_tokens, self.pad_id, self.decoder_start_id = tp, max_tokens, pad_id, decoder_start_id
        self.seed, self.max_batch_size, self.fixed_batch_size = seed, max_batch_size, fixed_batch_size
        self.lengths = tp.lengths()
        too_long = int((self.lengths > max_tokens).sum()) if not fixed_batch_size else 0
        if too_long:
            raise DataError(f"{too_long} pairs are longer than speed.max_tokens_per_batch={max_tokens}; "
                            f"raise it to at least data.max_length")
        self.epoch, self.position = 0, 0
        self._plan = None

    def _batches(self):
        if self._plan is None or self._plan[0] != self.epoch:
            if self.group_buckets is not None:
                sides = np.stack([np.diff(self.tp.src_offsets), np.diff(self.tp.tgt_offsets)], axis=1)
                plan = side_grouped_batches(sides, self.group_buckets, self.max_tokens, self.seed, self.epoch,
                                            self.max_batch_size, self.fixed_batch_size)
            else:
                plan = length_bucketed_batches(self.lengths, self.max_tokens, self.seed, self.epoch,
                                               self.max_batch_size, self.fixed_batch_size)
            if self.world_size > 1:
                # Same plan on every rank (same seed and epoch); each takes every world_size-th batch,
                # cut to a multiple of world_size so all ranks run the same number of steps.
                plan = plan[:len(plan) - len(plan) % self.world_size][self.rank::self.world_size]
            self._plan = (self.epoch, plan)
        return self._plan[1]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        batches = self._batches()
        while self.position < len(batches):
            indices = batches[self.position]
            self.position += 1
            yield collate(self.tp, indices, self.pad_id, self.decoder_start_id, self.buckets,
                          rows=self.fixed_batch_size if self.buckets is not None else 0,
                          head_row_multiple=self.head_row_multiple)
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

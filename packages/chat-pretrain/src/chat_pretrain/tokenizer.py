"""Tokenizers: load (tokenizer.json or a directory), check ([UNK] rate, the Metaspace defect), train.

    chat-pretrain tokenizer check --tokenizer path/to/chatlm-tokenizer --files data/train.parquet
    chat-pretrain tokenizer check --tokenizer path/to/chatlm-tokenizer --write-fixed out/tok
    chat-pretrain tokenizer train --files data/train.parquet --vocab-size 32000 --out out/tok

The ChatLM tokenizer's pre-tokenizer is Whitespace, Punctuation, Digits, then Metaspace with
replacement "\u2581". No vocab entry contains "\u2581", so every pre-token starts with an [UNK]: about
half of all tokens in Chinese text are [UNK]. Whitespace has already removed the spaces, so the fix
is to drop the Metaspace step; decoding is unchanged (its decoder only turns "\u2581" into spaces).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

SPECIAL_TOKENS = ["[PAD]", "[EOS]", "[SEP]", "[BOS]", "[CLS]", "[MASK]", "[UNK]"]


def tokenizer_file(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (expected tokenizer.json or a directory holding one)")
    return p


def metaspace_defect(spec: dict) -> str | None:
    """A one-line description of the defect in a tokenizer.json dict, or None."""
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        pieces = {v[0] for v in vocab}
    elif isinstance(vocab, dict):
        pieces = set(vocab)
    else:
        return None
    for step in _metaspace_steps(spec.get("pre_tokenizer")):
        rep = step.get("replacement", "\u2581")
        if rep not in pieces and not any(rep in p for p in pieces):
            return (f"pre_tokenizer Metaspace(replacement={rep!r}) emits {rep!r}, which no vocab entry contains: "
                    f"every pre-token gets a leading [UNK]")
    return None


def _metaspace_steps(pre):
    if not pre:
        return []
    if pre.get("type") == "Metaspace":
        return [pre]
    if pre.get("type") == "Sequence":
        return [p for p in pre.get("pretokenizers", []) if p.get("type") == "Metaspace"]
    return []


def fix_metaspace(spec: dict) -> dict:
    """Copy of a tokenizer.json dict without the Metaspace pre-tokenizer step(s)."""
    spec = json.loads(json.dumps(spec))
    pre = spec.get("pre_tokenizer")
    if pre and pre.get("type") == "Metaspace":
        spec["pre_tokenizer"] = None
    elif pre and pre.get("type") == "Sequence":
        pre["pretokenizers"] = [p for p in pre["pretokenizers"] if p.get("type") != "Metaspace"]
    return spec


@dataclass
class LoadedTokenizer:
    tokenizer: Tokenizer
    path: Path
    pad_id: int
    eos_id: int
    unk_id: int | None
    fixed: str | None  # what was fixed at load time, or None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def decode_batch(self, ids: list[list[int]]) -> list[str]:
        return self.tokenizer.decode_batch(ids, skip_special_tokens=True)


def _special_id(tok: Tokenizer, candidates: Iterable[str]) -> int | None:
    for name in candidates:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def load_tokenizer(path, fix: bool = True) -> LoadedTokenizer:
    file = tokenizer_file(path)
    spec = json.loads(file.read_text(encoding="utf-8"))
    fixed = None
    defect = metaspace_defect(spec)
    if defect and fix:
        spec = fix_metaspace(spec)
        fixed = f"fixed at load time: {defect}; dropped the Metaspace pre-tokenizer"
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.no_truncation()
    tok.no_padding()
    pad = _special_id(tok, ["[PAD]", "<pad>", "<|pad|>"])
    eos = _special_id(tok, ["[EOS]", "</s>", "<|endoftext|>", "<eos>"])
    if pad is None or eos is None:
        raise ValueError(f"{file}: needs a pad token ([PAD] or <pad>) and an end token ([EOS] or </s>)")
    unk = _special_id(tok, ["[UNK]", "<unk>"])
    return LoadedTokenizer(tok, file, pad, eos, unk, fixed)


@dataclass
class CheckReport:
    rows: int
    tokens: int
    unk_tokens: int
    defect: str | None
    unk_rate_fixed: float | None

    @property
    def unk_rate(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0


def _unk_count(tok: Tokenizer, unk_id, texts: list[str]) -> tuple[int, int]:
    total = unk = 0
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        total += len(enc.ids)
        if unk_id is not None:
            unk += sum(1 for i in enc.ids if i == unk_id)
    return total, unk


def check_tokenizer(path, texts: list[str]) -> CheckReport:
    raw = load_tokenizer(path, fix=False)
    tokens, unk = _unk_count(raw.tokenizer, raw.unk_id, texts)
    spec = json.loads(raw.path.read_text(encoding="utf-8"))
    defect = metaspace_defect(spec)
    fixed_rate = None
    if defect:
        fixed = load_tokenizer(path, fix=True)
        t2, u2 = _unk_count(fixed.tokenizer, fixed.unk_id, texts)
        fixed_rate = u2 / t2 if t2 else 0.0
    return CheckReport(len(texts), tokens, unk, defect, fixed_rate)


def write_fixed(path, out_dir) -> Path:
    """Write a fixed tokenizer.json (plus the sidecar JSON files, copied) into out_dir."""
    src = tokenizer_file(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = fix_metaspace(json.loads(src.read_text(encoding="utf-8")))
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    for side in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src.parent / side).is_file():
            (out / side).write_text((src.parent / side).read_text(encoding="utf-8"), encoding="utf-8")
    return out / "tokenizer.json"


def iter_texts(files, columns=("prompt", "response"), batch_rows: int = 1024, max_rows: int = 0) -> Iterator[str]:
    """Texts from parquet files (the given string columns) or text files (one text per line), read in
    record batches so RAM stays bounded whatever the file size."""
    import pyarrow.parquet as pq

    from chat_pretrain.data import expand_files

    n = 0
    for f in expand_files(files, suffixes=(".parquet", ".txt", ".text", ".jsonl")):
        if f.suffix == ".parquet":
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names]
            if not cols:
                raise ValueError(f"{f}: none of the columns {list(columns)} found; has {pf.schema_arrow.names}")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                for col in batch.columns:
                    for s in col.to_pylist():
                        if isinstance(s, str) and s:
                            yield s
                            n += 1
                            if max_rows and n >= max_rows:
                                return
        else:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if line:
                        yield line
                        n += 1
                        if max_rows and n >= max_rows:
                            return


def train_tokenizer(files, vocab_size: int, kind: str = "bpe", columns=("prompt", "response"),
                    max_texts: int = 0, out_dir=None) -> Tokenizer:
    """Byte-level BPE or unigram, trained from an iterator. The files are read in record batches, but
    the trainer keeps a count per distinct pre-token, so RAM grows with the distinct texts seen:
    `max_texts` is the bound (the CLI defaults to 300k texts)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        # Metaspace here is consistent: the unigram trainer puts "\u2581" pieces into the vocab.
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]",
                                          show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; allowed: bpe, unigram")
    tok.train_from_iterator(iter_texts(files, columns, max_rows=max_texts), trainer=trainer)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
        (out / "special_tokens_map.json").write_text(json.dumps(
            {"eos_token": "[EOS]", "pad_token": "[PAD]", "unk_token": "[UNK]"}), encoding="utf-8")
    return tok

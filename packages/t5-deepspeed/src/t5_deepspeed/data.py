"""Translation pairs from local JSONL files or a hub dataset, checked row by row.

Local files hold one JSON object per line, as run_translation.py reads them:
    {"translation": {"en": "The book is on the table.", "ro": "Cartea este pe masă."}}
A hub dataset (`--dataset_name wmt16 --dataset_config ro-en`) is read through `datasets`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and key."""


def sample_file(split: str) -> Path:
    """Path of the shipped en-ro sample ("train" | "validation" | "test"): 64/8/8 pairs."""
    return Path(str(resources.files("t5_deepspeed") / "data" / f"en-ro.{split}.jsonl"))


def _check_pair(row, where: str, source_lang: str, target_lang: str) -> tuple[str, str]:
    if not isinstance(row, dict) or not isinstance(row.get("translation"), dict):
        raise DataError(f'{where}: expected an object with a "translation" object, got {json.dumps(row)[:80]}')
    pair = row["translation"]
    for lang in (source_lang, target_lang):
        if lang not in pair:
            raise DataError(
                f'{where}: key "translation.{lang}" missing (has: {", ".join(sorted(pair)) or "nothing"}); '
                "check --source_lang/--target_lang"
            )
        if not isinstance(pair[lang], str):
            raise DataError(f'{where}: "translation.{lang}" must be a string, got {type(pair[lang]).__name__}')
    return pair[source_lang], pair[target_lang]


def read_jsonl_pairs(path, source_lang: str, target_lang: str, max_samples: int | None = None) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: expected a .jsonl file of translation pairs")
    pairs = []
    offset = 0  # byte offset of the current line, so a decoding error can name the exact byte
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[err.start]:02x} at byte offset {offset + err.start} "
                    "of the file); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
            offset += len(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is UTF-8, not data
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON: {err.msg}") from None
            pairs.append(_check_pair(row, f"{path}:{lineno}", source_lang, target_lang))
            if max_samples is not None and len(pairs) >= max_samples:
                break
    if not pairs:
        raise DataError(f"{path}: no translation pairs")
    return pairs


def read_hub_pairs(name: str, config: str | None, split: str, source_lang: str, target_lang: str,
                   max_samples: int | None = None, cache_dir: str | None = None) -> list[tuple[str, str]]:
    from trainstack.hub import HubUnavailable, loading

    try:
        # Offline, not cached, or `datasets` missing: trainstack.hub's one line (exit 2).
        with loading(name, what="dataset", key="--dataset_name", install="datasets",
                     instead="pass local JSONL files (--train_file, --validation_file, --test_file)"):
            import datasets

            ds = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except HubUnavailable:
        raise
    except Exception as err:  # datasets raises many types (a wrong config or split name...): one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"dataset {name}/{config} split {split}: {first}") from None
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if "translation" not in ds.column_names:
        raise DataError(f'dataset {name}/{config}: no "translation" column (has: {", ".join(ds.column_names)})')
    return [_check_pair(row, f"dataset {name}/{config} {split} row {i}", source_lang, target_lang)
            for i, row in enumerate(ds)]


# run_translation's split names -> hub split names
HUB_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def load_split(split: str, *, files: dict, dataset_name: str | None, dataset_config: str | None,
               source_lang: str, target_lang: str, max_samples: int | None, cache_dir=None):
    """Pairs for one split: the local file when given, else the hub dataset's split."""
    if files.get(split):
        return read_jsonl_pairs(files[split], source_lang, target_lang, max_samples)
    if dataset_name:
        return read_hub_pairs(dataset_name, dataset_config, HUB_SPLITS[split], source_lang, target_lang,
                              max_samples, cache_dir)
    flag = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}[split]
    raise DataError(f"no {split} data: pass --dataset_name (e.g. wmt16 --dataset_config ro-en) or {flag}")


class PairsDataset:
    """Tokenized pairs as a map-style dataset of dicts (what DataCollatorForSeq2Seq takes)."""

    def __init__(self, pairs, tokenizer, prefix: str, max_source_length: int, max_target_length: int):
        self.pairs = pairs
        sources = [prefix + s for s, _ in pairs]
        enc = tokenizer(sources, max_length=max_source_length, truncation=True)
        labels = tokenizer(text_target=[t for _, t in pairs], max_length=max_target_length, truncation=True)
        self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": lab}
                     for ids, mask, lab in zip(enc["input_ids"], enc["attention_mask"], labels["input_ids"], strict=True)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

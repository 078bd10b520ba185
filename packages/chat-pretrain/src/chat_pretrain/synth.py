"""Generated prompt/response parquet files for tests, benchmarks and the memory-limit run.

    chat-pretrain make-data out/train.parquet --rows 10000000 --median-chars 60

Text is random characters from the first 3000 code points of the CJK block (U+4E00 + 0..2999; code
point order, not a frequency list), so the ChatLM tokenizer maps it to about one token per character,
but about 68% of those tokens are [UNK] even after the Metaspace fix (measured with
`chat-pretrain tokenizer check` on 2000 rows): fine for speed and memory, not for language. Lengths are log-normal around `median_chars` (sigma 0.7), clipped to [2, 400]:
short chats with a long tail, which is what token-budget batching is for. The `copy` task makes the
response a copy of the prompt, which a tiny model learns in a few hundred steps (BLEU tests).
Rows are written in row groups from a fixed pool of sentences, so 10M rows take seconds and
little RAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def sentence_pool(n: int, median_chars: float, seed: int, sigma: float = 0.7) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_chars), sigma, size=n).astype(int), 2, 400)
    chars = rng.integers(0x4E00, 0x4E00 + 3000, size=int(lengths.sum()))
    text = "".join(map(chr, chars))
    out, pos = [], 0
    for n_chars in lengths:
        out.append(text[pos: pos + n_chars])
        pos += n_chars
    return out


def make_parquet(path, rows: int, *, median_chars: float = 60, seed: int = 0, row_group_rows: int = 100_000,
                 pool_size: int = 20_000, task: str = "random", with_id: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = pa.array(sentence_pool(pool_size, median_chars, seed), type=pa.string())
    rng = np.random.default_rng(seed + 1)
    fields = [("id", pa.int64())] if with_id else []
    schema = pa.schema(fields + [("prompt", pa.string()), ("response", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, row_group_rows):
            n = min(row_group_rows, rows - start)
            p = pool.take(pa.array(rng.integers(0, pool_size, size=n)))
            r = p if task == "copy" else pool.take(pa.array(rng.integers(0, pool_size, size=n)))
            cols = ([pa.array(np.arange(start, start + n, dtype=np.int64))] if with_id else []) + [p, r]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=row_group_rows)
    return path

"""500,000 rows through the training data path (stream -> tokenize -> token-budget batches) with peak
RSS growth under 100 MB, next to none of it after the first fifth of the file: memory does not grow
with the file.

The size is chosen so that the bound can fail: keeping the tokenized rows (lists of ids) would take
~260 MB at 500,000 rows, while the path's working set (a bucket of 16,384 tokenized rows, the shuffle
buffer, a record batch) is ~45 MB whatever the file's size. The earlier 2,000,000 rows under 500 MB
asked the same of each row and took 4x as long (2 minutes of a 2-core CI machine)."""

import gc

import pytest
from chat_pretrain.config import DataConfig
from chat_pretrain.data import PromptResponseBatches
from chat_pretrain.synth import make_parquet
from trainstack.memory import rss_gib

ROWS = 500_000
MAX_GROWTH_MB = 100
# After the first fifth of the rows every buffer is as large as it gets; keeping even a quarter of the
# tokenized rows would add ~50 MB over the rest of the file (keeping the prompts' ids added 87 MB).
MAX_LATE_GROWTH_MB = 40


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    # Short rows keep the test fast; 10 row groups, so the stream crosses row-group boundaries.
    return make_parquet(tmp_path_factory.mktemp("big") / "big.parquet", ROWS, median_chars=3, row_group_rows=50_000,
                        pool_size=5000)


def test_half_a_million_rows_stream_in_bounded_rss(big_parquet, tok):
    cfg = DataConfig(max_seq_len=192, batch_size=32, max_batch_rows=1024, shuffle_buffer=5000, read_batch_rows=4096,
                     bucket_rows=16384)
    gc.collect()
    batches = PromptResponseBatches([big_parquet], tok.tokenizer, cfg, pad_id=tok.pad_id, eos_id=tok.eos_id)
    batches.set_epoch(0)
    start = rss_gib()
    peak = start
    early_peak = None  # the peak once a fifth of the rows went through
    rows = 0
    for i, b in enumerate(batches):
        rows += b["input_ids"].shape[0]
        if i % 50 == 0:
            peak = max(peak, rss_gib())
        if early_peak is None and rows >= ROWS // 5:
            early_peak = peak = max(peak, rss_gib())
    peak = max(peak, rss_gib())
    assert rows == ROWS
    growth_mb, late_mb = (peak - start) * 1024, (peak - early_peak) * 1024
    print(f"rows {rows:,}; RSS start {start * 1024:.0f} MB, peak growth {growth_mb:.0f} MB, "
          f"{late_mb:.0f} MB of it after the first fifth")
    assert growth_mb < MAX_GROWTH_MB
    assert late_mb < MAX_LATE_GROWTH_MB

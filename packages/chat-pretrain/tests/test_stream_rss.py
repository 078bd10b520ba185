"""2,000,000 rows through the training data path (stream -> tokenize -> token-budget batches) with
peak RSS growth under 500 MB: memory does not grow with the file."""

import gc

import pytest
from chat_pretrain.config import DataConfig
from chat_pretrain.data import PromptResponseBatches
from chat_pretrain.synth import make_parquet
from trainstack.memory import rss_gib

ROWS = 2_000_000


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory):
    # Short rows keep the test fast; the file has 2M rows in 20 row groups.
    return make_parquet(tmp_path_factory.mktemp("big") / "big.parquet", ROWS, median_chars=3, row_group_rows=100_000,
                        pool_size=5000)


def test_two_million_rows_stream_in_bounded_rss(big_parquet, tok):
    cfg = DataConfig(max_seq_len=192, batch_size=32, max_batch_rows=1024, shuffle_buffer=5000, read_batch_rows=4096,
                     bucket_rows=16384)
    gc.collect()
    batches = PromptResponseBatches([big_parquet], tok.tokenizer, cfg, pad_id=tok.pad_id, eos_id=tok.eos_id)
    batches.set_epoch(0)
    start = rss_gib()
    peak = start
    rows = 0
    for i, b in enumerate(batches):
        rows += b["input_ids"].shape[0]
        if i % 50 == 0:
            peak = max(peak, rss_gib())
    peak = max(peak, rss_gib())
    assert rows == ROWS
    growth_mb = (peak - start) * 1024
    print(f"rows {rows:,}; RSS start {start * 1024:.0f} MB, peak growth {growth_mb:.0f} MB")
    assert growth_mb < 500

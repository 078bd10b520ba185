import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_pretrain.config import DataConfig
from chat_pretrain.data import DataError, PromptResponseBatches, check_schema, collate, tokenize_pairs
from chat_pretrain.synth import make_parquet

CFG = DataConfig(max_seq_len=16, batch_size=4, bucket_rows=50, shuffle_buffer=30, read_batch_rows=17, id_column="id",
                 pad_to_multiple_of=1)


def _batches(path, tok, cfg=CFG, **kw):
    return PromptResponseBatches([path], tok.tokenizer, cfg, pad_id=tok.pad_id, eos_id=tok.eos_id, seed=1, **kw)


def _ids(batches):
    return [i for b in batches for i in b["row_ids"]]


def test_truncation_is_by_tokens_with_eos(tok):
    long = "今天天气很好，我们去公园散步吧。" * 10
    src, tgt = tokenize_pairs(tok.tokenizer, [long, "你好"], ["好", long], 16, tok.eos_id)
    ref = tok.tokenizer.encode(long, add_special_tokens=False).ids
    assert len(ref) > 16
    assert src[0] == ref[:15] + [tok.eos_id] and tgt[1] == src[0]
    assert src[1] == tok.tokenizer.encode("你好", add_special_tokens=False).ids + [tok.eos_id]
    b = collate(src, tgt, tok.pad_id)
    assert b["input_ids"].shape == (2, 16) and b["labels"][0, len(tgt[0]):].eq(-100).all()
    assert b["attention_mask"].sum().item() == len(src[0]) + len(src[1])


@pytest.mark.parametrize("world", [2, 3])
def test_one_epoch_sees_every_row_once_across_ranks_in_equal_steps(tmp_path, tok, world):
    """DDP needs the same number of micro-batches on every rank; rows are split, none twice, none lost."""
    path = make_parquet(tmp_path / "d.parquet", 333, median_chars=12, row_group_rows=40)
    seen, counts, states, paddings = [], [], [], []
    for rank in range(world):
        b = _batches(path, tok, rank=rank, world_size=world)
        b.set_epoch(0)
        batches = list(b)
        for x in batches:  # the token budget counts padding; no batch exceeds it
            n, width = x["input_ids"].shape
            assert n * width <= CFG.batch_size * CFG.max_seq_len and n * x["labels"].shape[1] <= 64
        counts.append(len(batches))
        assert len(b) >= len(batches)  # fit() caps the run at len(): an upper bound, never below
        states.append(b.state_dict())
        paddings.append(sum(bool(x.get("is_padding")) for x in batches))
        seen += _ids(batches)
    assert sorted(seen) == list(range(333))
    assert len(set(counts)) == 1 and all(s == states[0] for s in states)
    buckets = states[0]["bucket"] + 1
    assert sum(paddings) <= (world - 1) * buckets
    assert world == 2 or sum(paddings) > 0  # this file exercises the padding round with 3 ranks
    # A new epoch reshuffles.
    b = _batches(path, tok)
    b.set_epoch(0)
    e0 = _ids(b)
    b.set_epoch(1)
    e1 = _ids(b)
    assert sorted(e0) == sorted(e1) == list(range(333)) and e0 != e1


def test_two_ranks_resume_from_rank_zeros_state(tmp_path, tok):
    """fit() saves rank 0's position only; it must be every rank's."""
    path = make_parquet(tmp_path / "d.parquet", 300, median_chars=12, row_group_rows=40)
    head, tail = [], []
    for rank in range(2):
        b = _batches(path, tok, rank=rank, world_size=2)
        b.set_epoch(0)
        it = iter(b)
        head += _ids([next(it) for _ in range(9)])
        if rank == 0:
            state = b.state_dict()
    for rank in range(2):
        b = _batches(path, tok, rank=rank, world_size=2)
        b.load_state_dict(state)
        b.set_epoch(0)
        tail += _ids(b)
    assert not set(head) & set(tail) and sorted(head + tail) == list(range(300))


def test_resume_mid_epoch_yields_exactly_the_unseen_rows(tmp_path, tok):
    path = make_parquet(tmp_path / "d.parquet", 400, median_chars=12, row_group_rows=64)
    full = _batches(path, tok)
    full.set_epoch(0)
    reference = _ids(full)
    for stop in (1, 7, 13, 20):  # inside the first bucket, at bucket edges, later
        first = _batches(path, tok)
        first.set_epoch(0)
        it = iter(first)
        head = [next(it) for _ in range(stop)]
        state = first.state_dict()
        again = _batches(path, tok)
        again.load_state_dict(state)
        again.set_epoch(state["epoch"])
        tail = list(again)
        seen, rest = _ids(head), _ids(tail)
        assert not set(seen) & set(rest)
        assert sorted(seen + rest) == list(range(400))
        assert seen + rest == reference  # the same order as the uninterrupted epoch


def test_missing_column_and_wrong_type_name_the_file(tmp_path, tok):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["a"], "response": ["b"]}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet: missing column 'prompt'"):
        check_schema([bad], ["prompt", "response"])
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"prompt": [1, 2], "response": ["a", "b"]}), typed)
    with pytest.raises(DataError, match=r"typed\.parquet: column 'prompt' has type int64, expected string"):
        _batches(typed, tok, cfg=dataclasses.replace(CFG, id_column=""))
    # Configurable column names.
    ok = dataclasses.replace(CFG, prompt_column="question", id_column="")
    b = _batches(bad, tok, cfg=ok)
    b.set_epoch(0)
    assert len(list(b)) == 1


def test_nulls_and_empty_rows_are_counted_or_fatal(tmp_path, tok):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"id": list(range(6)), "prompt": ["你好", None, "早上好", "", "晚安", "谢谢"],
                             "response": ["好", "好", None, "好", "好", "不客气"]}), path)
    b = _batches(path, tok)
    b.set_epoch(0)
    assert sorted(_ids(b)) == [0, 4, 5]
    assert (b.skipped.null, b.skipped.empty) == (2, 1)
    assert sorted(b.skipped.first) == sorted(f"row {i} of {path} has {w}" for i, w in
                                             [(1, "a null 'prompt'"), (2, "a null 'response'"), (3, "an empty 'prompt'")])
    from chat_pretrain.data import SkipCounts, read_valid_pairs

    counts = SkipCounts()
    valid = list(read_valid_pairs([path], CFG, tokenizer=tok.tokenizer, eos_id=tok.eos_id, skipped=counts))
    assert [v[2] for v in valid] == ["好", "好", "不客气"] and (counts.null, counts.empty) == (2, 1)
    strict = _batches(path, tok, cfg=dataclasses.replace(CFG, on_bad_row="error", shuffle_buffer=0))
    strict.set_epoch(0)
    with pytest.raises(DataError, match=r"row 1 of .*nulls\.parquet has a null 'prompt'"):
        list(strict)


def test_pad_to_multiple_of_rounds_the_width(tok):
    from chat_pretrain.data import collate

    b = collate([[5, 6, 7]], [[8] * 9], tok.pad_id, multiple_of=8)
    assert b["input_ids"].shape == (1, 8) and b["labels"].shape == (1, 16)
    assert b["attention_mask"].sum().item() == 3 and (b["labels"] != -100).sum().item() == 9


def test_len_bounds_the_epoch_when_later_rows_are_longer(tmp_path, tok):
    """The lr-schedule estimate samples the first rows; len() must still bound an epoch whose later
    rows are much longer (fit() would otherwise end the last epoch early)."""
    short = ["你好"] * 5000  # more than the 4096 rows the estimate samples
    long = ["今天天气很好，我们去公园散步吧。" * 3] * 2000
    path = tmp_path / "skewed.parquet"
    pq.write_table(pa.table({"prompt": short + long, "response": short + long}), path, row_group_size=1000)
    cfg = dataclasses.replace(CFG, id_column="", shuffle_buffer=0, bucket_rows=1000, max_batch_rows=64)
    b = _batches(path, tok, cfg=cfg)
    b.set_epoch(0)
    actual = len(list(b))
    assert b.estimate_batches() < actual <= len(b)

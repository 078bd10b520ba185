"""Readers, filters, bad rows, cache fingerprint, batches."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mt_nllb import data as D


def test_formats_filter_dedup_caps(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("这是一个足够长的中文句子。\tThis is a long enough sentence.\n"
                   "这是一个足够长的中文句子。\tThis is a long enough sentence.\n"  # duplicate
                   "太短了\tToo short\n"  # under 10 chars
                   "另一个足够长的中文句子在这里。\tAnother long enough sentence here.\n", encoding="utf-8")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"translation": {"en": "English comes first here.", "zh": "这里英文在前面的一行数据。"}},
                                ensure_ascii=False) + "\n"
                     + json.dumps({"src": "源语言和目标语言的键名。", "tgt": "Keys named src and tgt."}, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"translation": [{"zh": "帕奎特文件中的一行数据。", "en": "A row from a parquet file."},
                                             {"zh": "帕奎特文件中的第二行数据。", "en": "A second parquet row."}]}), pqf)
    pairs, reports = D.read_pairs([str(tsv), str(jsonl), str(pqf)], [0, 0, 1], "zh", "en", 10, 400)
    assert ("这里英文在前面的一行数据。", "English comes first here.") in pairs  # key order, not position
    assert ("源语言和目标语言的键名。", "Keys named src and tgt.") in pairs
    assert len(pairs) == 2 + 2 + 1  # parquet capped at 1
    assert reports[0].filtered == {"duplicate": 1, "length": 1}
    assert reports[2].kept == 1


def test_bad_rows_are_counted_not_fatal(tmp_path):
    tsv = tmp_path / "bad.tsv"
    good = "这是一个足够长的中文句子。\tThis is a long enough sentence.\n".encode()
    tsv.write_bytes(good + b"\xff\xfe broken bytes\tx\n" + "只有一列的坏数据行而已\n".encode()
                    + b"\tEmpty source side here.\n" + "三\t列\t太多了\n".encode())
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"translation": {"zh": "好的一行中文数据在这里。", "en": "A good row of data."}}\n'
                     '{not json\n{"translation": {"de": "x", "en": "y"}}\n[1, 2]\n', encoding="utf-8")
    pairs, reports = D.read_pairs([str(tsv), str(jsonl)], [], "zh", "en", 10, 400)
    assert len(pairs) == 2
    t, j = reports
    assert sum(t.bad.values()) == 4 and t.bad["empty side"] == 1
    assert any("not UTF-8" in k for k in t.bad) and "bad.tsv:2" in t.examples[0]
    assert sum(j.bad.values()) == 3 and any("invalid JSON" in k for k in j.bad)
    assert "bad rows" in t.line()


def test_missing_source_and_unknown_type_are_one_line_errors(tmp_path):
    with pytest.raises(D.DataError, match="not found: nope.tsv"):
        D.read_pairs(["nope.tsv"], [], "zh", "en", 10, 400)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(D.DataError, match="unsupported file type"):
        D.read_pairs([str(tmp_path / "x.csv")], [], "zh", "en", 10, 400)


def test_tokenize_cache_roundtrip_and_language_codes(tmp_path, sample_tokenizer):
    pairs, _ = D.read_pairs(["sample"], [0], "zh", "en", 10, 400)
    src_id = sample_tokenizer.convert_tokens_to_ids("zho_Hans")
    tgt_id = sample_tokenizer.convert_tokens_to_ids("eng_Latn")
    tp = D.tokenize_pairs(pairs[:20], sample_tokenizer, src_id, tgt_id, 2, max_length=12)
    assert tp.truncated > 0
    assert tp.src(0)[0] == src_id and tp.src(0)[-1] == 2 and tp.tgt(0)[0] == tgt_id
    assert max(tp.lengths()) <= 12
    D.save_tokenized(tp, tmp_path / "t.parquet")
    back = D.load_tokenized(tmp_path / "t.parquet")
    assert back.src_flat.tolist() == tp.src_flat.tolist() and back.tgt_text == tp.tgt_text
    assert back.truncated == tp.truncated
    # decoder inputs are labels shifted right behind decoder_start (</s>)
    batch = D.collate(tp, [0, 1], pad_id=1, decoder_start_id=2)
    n = len(tp.tgt(0))
    assert batch["decoder_input_ids"][0, 0] == 2
    assert batch["decoder_input_ids"][0, 1:n].tolist() == batch["labels"][0, :n - 1].tolist()


def test_batches_resume_mid_epoch(sample_tokenizer):
    pairs, _ = D.read_pairs(["sample"], [0], "zh", "en", 10, 400)
    tp = D.tokenize_pairs(pairs, sample_tokenizer, 4, 5, 2, max_length=64)
    make = lambda: D.TranslationBatches(tp, max_tokens=256, pad_id=1, decoder_start_id=2, seed=3)  # noqa: E731
    full = [b["input_ids"].tolist() for b in make()]
    a = make()
    it = iter(a)
    first = [next(it)["input_ids"].tolist() for _ in range(3)]
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    rest = [x["input_ids"].tolist() for x in b]
    assert first + rest == full
    seen = sorted(len(x) for x in full)
    assert sum(seen) == len(tp)


def test_fingerprint_changes_with_inputs(tmp_path):
    from mt_nllb.config import DataConfig

    a = D.fingerprint(DataConfig(train=["sample"]), "sample", "zho_Hans", "eng_Latn")
    assert a == D.fingerprint(DataConfig(train=["sample"]), "sample", "zho_Hans", "eng_Latn")
    assert a != D.fingerprint(DataConfig(train=["sample"], max_length=128), "sample", "zho_Hans", "eng_Latn")
    assert a != D.fingerprint(DataConfig(train=["sample"]), "other-tok", "zho_Hans", "eng_Latn")


def test_batches_shard_across_ranks_without_overlap(sample_tokenizer):
    pairs, _ = D.read_pairs(["sample"], [0], "zh", "en", 10, 400)
    tp = D.tokenize_pairs(pairs, sample_tokenizer, 4, 5, 2, max_length=64)
    shards = [D.TranslationBatches(tp, max_tokens=256, pad_id=1, decoder_start_id=2, seed=3, rank=r, world_size=2)
              for r in range(2)]
    plans = [s._batches() for s in shards]
    assert len(plans[0]) == len(plans[1]) > 0
    flat = [i for p in plans for b in p for i in b]
    assert len(flat) == len(set(flat))


def test_fast_path_batches_are_bucketed_and_full():
    """On the fast path every batch has bucketed widths and batch_size rows; filler rows attend to one
    token and carry no label, and the real rows are the eager batch's, unchanged."""
    import numpy as np
    import torch
    from mt_nllb.bench import synthetic_pairs
    from trainstack.speed import LengthBuckets

    tp = synthetic_pairs(70, vocab=500, seed=1)
    buckets = LengthBuckets.parse("multiple:16", 256)
    make = lambda b: D.TranslationBatches(tp, max_tokens=10**6, pad_id=1, decoder_start_id=2, seed=3,  # noqa: E731
                                          fixed_batch_size=32, buckets=b)
    fast, eager = list(make(buckets)), list(make(None))
    assert len(fast) == len(eager) == 3  # 32 + 32 + 6: the last batch is filled with 26 filler rows
    for f, e in zip(fast, eager, strict=True):
        assert all(v.shape[0] == 32 for v in f.values())
        assert f["input_ids"].shape[1] % 16 == 0 and f["labels"].shape[1] % 16 == 0
        n, s, t = e["input_ids"].shape[0], e["input_ids"].shape[1], e["labels"].shape[1]
        for k in f:
            width = s if k in ("input_ids", "attention_mask") else t
            assert torch.equal(f[k][:n, :width], e[k]), k
        filler = slice(n, None)
        assert (f["labels"][filler] == -100).all()
        assert (f["attention_mask"][filler].sum(dim=1) == 1).all()
        assert (f["attention_mask"].sum(dim=1) >= 1).all()
    assert int(np.sum([(b["labels"] != -100).sum() for b in fast])) == int(np.sum([(b["labels"] != -100).sum()
                                                                                   for b in eager]))


def _two_sources(tmp_path):
    """A WMT19-like TSV and an OPUS-100-like JSONL, each with a short pair, a duplicate or an
    over-long pair, a bad row, and rows past the caps used below ([4, 3])."""
    wmt = tmp_path / "wmt.tsv"
    wmt.write_text("第一句足够长的中文句子。\tThe first long enough sentence.\n"
                   "短句子\tShort.\n"                                                  # under 10 chars
                   "第一句足够长的中文句子。\tThe first long enough sentence.\n"       # duplicate of row 1
                   "\tAn empty source side.\n"                                         # bad row, inside the cap
                   "第五行在前四行之后。\tRow five comes after the first four.\n",      # past the first 4 rows
                   encoding="utf-8")
    opus = tmp_path / "opus.jsonl"
    rows = [("开放语料的第一行数据。", "The first OPUS row of data."),
            ("太短", "Too short"),                                                    # under 10 chars
            ("长" * 401, "A source side over 400 characters."),
            ("开放语料的第四行数据。", "The fourth OPUS row of data.")]               # past the first 3 rows
    opus.write_text("".join(json.dumps({"translation": {"en": e, "zh": z}}, ensure_ascii=False) + "\n"
                            for z, e in rows), encoding="utf-8")
    return [str(wmt), str(opus)]


def test_recipe_selection_takes_the_first_rows_and_filters_only_the_marked_source(tmp_path):
    from mt_nllb.config import DataConfig

    cfg = DataConfig(train=_two_sources(tmp_path), caps=[4, 3], length_filter=[False, True])
    assert cfg.selection == "recipe"  # the default follows the users' recipe
    pairs, (wmt, opus) = D.read_training_pairs(cfg)
    assert pairs == [
        ("第一句足够长的中文句子。", "The first long enough sentence."),
        ("短句子", "Short."),                                      # WMT19 is not length-filtered
        ("第一句足够长的中文句子。", "The first long enough sentence."),  # nor deduplicated
        ("开放语料的第一行数据。", "The first OPUS row of data."),  # OPUS: rows 2 and 3 filtered, row 4 past its cap
    ]
    assert (wmt.read, wmt.kept, sum(wmt.bad.values()), dict(wmt.filtered)) == (4, 3, 1, {})  # the bad row counts
    assert (opus.read, opus.kept, dict(opus.filtered)) == (3, 1, {"length": 2})
    assert "first 4 rows, no length filter, no dedup" in wmt.line()
    assert "first 3 rows, 10..400 chars, no dedup" in opus.line()


def test_cleaned_selection_filters_every_source_dedups_and_caps_pairs_kept(tmp_path):
    from mt_nllb.config import DataConfig

    cfg = DataConfig(train=_two_sources(tmp_path), caps=[2, 3], selection="cleaned")
    pairs, (wmt, opus) = D.read_training_pairs(cfg)
    assert pairs == [
        ("第一句足够长的中文句子。", "The first long enough sentence."),
        ("第五行在前四行之后。", "Row five comes after the first four."),  # the 2nd pair kept, from row 5
        ("开放语料的第一行数据。", "The first OPUS row of data."),
        ("开放语料的第四行数据。", "The fourth OPUS row of data."),          # 2 kept, under the cap of 3
    ]
    assert dict(wmt.filtered) == {"length": 1, "duplicate": 1} and sum(wmt.bad.values()) == 1
    assert dict(opus.filtered) == {"length": 2}


def test_recipe_filters_the_opus100_hub_source_by_default_and_selection_is_in_the_fingerprint():
    from mt_nllb.config import DataConfig, TrainConfig
    from trainstack.config import ConfigError

    recipe = D.selection_options(DataConfig(train=["wmt19", "opus100"], caps=[5000000, 500000]))
    assert recipe == {"dedup": False, "length_filter": [False, True], "caps_count": "rows"}
    cleaned = D.selection_options(DataConfig(train=["wmt19", "opus100"], selection="cleaned"))
    assert cleaned == {"dedup": True, "length_filter": None, "caps_count": "kept"}
    assert D.selection_options(DataConfig(train=["sample"], dedup=True))["dedup"] is True
    fp = lambda **kw: D.fingerprint(DataConfig(train=["sample"], **kw), "sample", "zho_Hans", "eng_Latn")  # noqa: E731
    assert fp() != fp(selection="cleaned") and fp() != fp(length_filter=[True])
    with pytest.raises(ConfigError, match="'data.length_filter': 1 entries for 2 sources"):
        TrainConfig(data=DataConfig(train=["wmt19", "opus100"], length_filter=[True]))
    with pytest.raises(ConfigError, match="applies to data.selection=recipe"):
        TrainConfig(data=DataConfig(train=["sample"], selection="cleaned", length_filter=[True]))


def test_side_grouped_batches_pad_less_where_the_sides_differ():
    """group_by=each_side on the bench's length mix (source and target lengths drawn independently):
    every pair once, batches of 96 but at most one short one, each side within its key's bucket, and
    less padding than batches sorted by the longer side."""
    import numpy as np
    from mt_nllb.bench import synthetic_pairs
    from trainstack.speed import LengthBuckets

    tp = synthetic_pairs(6000, vocab=500, seed=0)
    buckets = LengthBuckets.parse("multiple:16", 256)
    sides = np.stack([np.diff(tp.src_offsets), np.diff(tp.tgt_offsets)], axis=1)
    grouped = D.side_grouped_batches(sides, buckets, 0, seed=3, epoch=0, fixed_batch_size=96)
    longest = D.length_bucketed_batches(tp.lengths(), 0, seed=3, epoch=0, fixed_batch_size=96)
    assert sorted(i for b in grouped for i in b) == list(range(6000))
    assert sum(len(b) != 96 for b in grouped) <= 1

    def padded(plan):  # the fast path's padded tokens: 96 rows x each side's bucket
        return sum(96 * (buckets.bucket(int(sides[b, 0].max())) + buckets.bucket(int(sides[b, 1].max())))
                   for b in plan)

    assert padded(grouped) < 0.9 * padded(longest)
    assert D.side_grouped_batches(sides, buckets, 0, seed=3, epoch=0, fixed_batch_size=96) == grouped  # resumable
    assert D.side_grouped_batches(sides, buckets, 0, seed=3, epoch=1, fixed_batch_size=96) != grouped

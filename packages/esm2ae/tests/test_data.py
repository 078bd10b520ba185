"""FASTA/parquet reading, validation with counts and ids, cropping, masking, packing."""
import gzip
import random
from pathlib import Path

import pytest
from esm2ae.data import (
    DataError,
    PackedMLMBatches,
    crop,
    encode,
    mask_tokens,
    pack_indices,
    read_sequences,
    train_val_split,
)
from esm2ae.model import CLS_ID, EOS_ID, MASK_ID
from esm2ae.train import SAMPLE_FASTA


def test_shipped_sample_is_clean():
    recs, rep = read_sequences(SAMPLE_FASTA)
    assert 50 <= len(recs) <= 100 and rep.kept == rep.records and not rep.skipped


def test_bad_records_skipped_with_ids_and_counts(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text(">ok1\nMKV\nLLA\n>bad1 desc\nMKJV\n>empty\n>ok2\nMKVO*\n>bad2\nMK1\n")
    recs, rep = read_sequences(f, max_length=5)
    assert [r.id for r in recs] == ["ok1", "ok2"]
    assert recs[0].sequence == "MKVLLA" and recs[1].sequence == "MKVO"
    assert rep.records == 5 and rep.kept == 2
    s = rep.summary()
    assert "bad1" in s and "bad2" in s and "empty" in s and "3 records" not in s
    assert rep.longer_than_crop == 2            # 6 + 2 and 4 + 2 tokens > 5


def test_empty_fasta_is_a_clear_error(tmp_path):
    f = tmp_path / "empty.fasta"
    f.write_text("")
    with pytest.raises(DataError, match="empty.fasta: no usable sequences"):
        read_sequences(f)


def test_all_invalid_reports_counts(tmp_path):
    f = tmp_path / "bad.fa"
    f.write_text(">a\n1234\n>b\n@@\n")
    with pytest.raises(DataError, match=r"2 records, 0 kept; 2 skipped \(invalid characters: a \(1234\), b \(@\)\)"):
        read_sequences(f)


def test_gzip_and_corrupt_gzip(tmp_path):
    good = tmp_path / "g.fasta.gz"
    with gzip.open(good, "wt") as fh:
        fh.write(">p1\nMKVLA\n>p2\nGGSW\n")
    recs, _ = read_sequences(good)
    assert [r.sequence for r in recs] == ["MKVLA", "GGSW"]
    data = good.read_bytes()
    bad = tmp_path / "bad.fasta.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad.fasta.gz: unreadable .*; 0 records read before the error"):
        read_sequences(bad)


def test_parquet_sequence_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "sequence": ["MKV", "XZ#", "WWW"]}), p)
    recs, rep = read_sequences(p)
    assert [r.id for r in recs] == ["a", "c"] and "b" in rep.summary()
    q = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"seq": ["MKV"]}), q)
    with pytest.raises(DataError, match="no 'sequence' column"):
        read_sequences(q)


def test_random_crop_changes_and_fits():
    r = random.Random(0)
    seq = "".join(r.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(1000))
    a = crop(seq, 512, random.Random(1))
    b = crop(seq, 512, random.Random(2))
    assert len(a) == len(b) == 510 and a != b and a in seq
    assert crop(seq, 512, None) == seq[:510]
    assert len(encode(a)) == 512


def test_mask_80_10_10():
    rng = random.Random(0)
    toks = encode("ACDEFGHIKLMNPQRSTVWY" * 500)
    inp, lab = mask_tokens(toks, rng)
    chosen = [i for i, v in enumerate(lab) if v != -100]
    assert 0 not in chosen and len(toks) - 1 not in chosen
    frac = len(chosen) / (len(toks) - 2)
    assert 0.14 < frac < 0.16
    masked = sum(inp[i] == MASK_ID for i in chosen) / len(chosen)
    same = sum(inp[i] == toks[i] for i in chosen) / len(chosen)
    assert 0.77 < masked < 0.83 and 0.08 < same < 0.13 + 0.05 / 20   # random draw can hit the same residue
    assert inp[0] == CLS_ID and inp[-1] == EOS_ID


def test_pack_indices_respects_budget_and_covers_all():
    lengths = [random.Random(i).randint(20, 512) for i in range(300)]
    bins = pack_indices(lengths, 2048, random.Random(0))
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 2048 for b in bins)
    fill = sum(lengths) / (len(bins) * 2048)
    assert fill > 0.9


def test_batches_resume_mid_epoch_identically():
    seqs = [r.sequence for r in read_sequences(SAMPLE_FASTA)[0]]
    a = PackedMLMBatches(seqs, 128, 1024, seed=3)
    a.set_epoch(1)
    full = [b.input_ids.tolist() for b in a]
    b = PackedMLMBatches(seqs, 128, 1024, seed=3)
    b.set_epoch(1)
    it = iter(b)
    next(it), next(it)
    state = b.state_dict()
    c = PackedMLMBatches(seqs, 128, 1024, seed=3)
    c.load_state_dict(state)
    rest = [x.input_ids.tolist() for x in c]
    assert rest == full[2:]
    a.set_epoch(2)
    assert [x.input_ids.tolist() for x in a] != full    # new crops/masks/packing each epoch


def test_batches_dealt_to_ranks_equally_and_disjointly():
    # DDP: every rank must take the same number of micro-batches per epoch, or the last
    # gradient all-reduce of an epoch waits for a rank that has finished
    seqs = [r.sequence for r in read_sequences(SAMPLE_FASTA)[0]]
    whole = PackedMLMBatches(seqs, 128, 1024, seed=3)
    ranks = [PackedMLMBatches(seqs, 128, 1024, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for b in [whole, *ranks]:
            b.set_epoch(epoch)
        groups = [b.plan()[1] for b in ranks]
        assert len({len(g) for g in groups}) == 1 and len(groups[0]) == len(whole) // 3
        # the packing one process would make, dealt round-robin: disjoint, nothing repeated
        plan = whole.plan()[1][: 3 * len(groups[0])]
        assert groups == [plan[r::3] for r in range(3)]
        taken = [i for g in groups for batch in g for i in batch]
        assert len(taken) == len(set(taken))
    with pytest.raises(ValueError, match="packed micro-batches for 500 GPUs"):
        len(PackedMLMBatches(seqs, 128, 1024, rank=0, world_size=500))


def test_held_out_split_is_disjoint_and_deterministic():
    recs, _ = read_sequences(SAMPLE_FASTA)
    tr, va = train_val_split(recs, 0.1, seed=0)
    tr2, va2 = train_val_split(recs, 0.1, seed=0)
    assert {r.id for r in tr}.isdisjoint({r.id for r in va}) and len(va) == 8
    assert [r.id for r in va] == [r.id for r in va2]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_sequences(Path(tmp_path) / "nope.fasta")

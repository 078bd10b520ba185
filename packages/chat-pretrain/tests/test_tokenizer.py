import json

import pyarrow as pa
import pyarrow.parquet as pq
from chat_pretrain.cli import main
from chat_pretrain.tokenizer import (
    check_tokenizer,
    load_tokenizer,
    metaspace_defect,
    train_tokenizer,
    write_fixed,
)

TEXTS = ["在地球上为什么没有感觉到重力的作用？", "今天天气很好，我们去公园散步吧。", "价格是 2023 元"]


def test_shared_tokenizer_defect_detected_and_fixed(real_chatlm_dir):
    chatlm_dir = real_chatlm_dir
    raw = load_tokenizer(chatlm_dir, fix=False)
    enc = raw.tokenizer.encode(TEXTS[0], add_special_tokens=False)
    # The defect: an [UNK] before every pre-token.
    pre_tokens = raw.tokenizer.pre_tokenizer.pre_tokenize_str(TEXTS[0])
    assert enc.ids[0] == raw.unk_id and enc.ids.count(raw.unk_id) == len(pre_tokens) == 2
    spec = json.loads((chatlm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert "Metaspace" in metaspace_defect(spec)

    fixed = load_tokenizer(chatlm_dir)
    assert fixed.fixed and fixed.pad_id == 0 and fixed.eos_id == 1 and fixed.vocab_size == 29298
    ids = fixed.tokenizer.encode(TEXTS[0], add_special_tokens=False).ids
    assert fixed.unk_id not in ids
    assert fixed.decode_batch([ids]) == [TEXTS[0]]

    rep = check_tokenizer(chatlm_dir, TEXTS)
    assert rep.defect and rep.unk_rate > 0.1 and rep.unk_rate_fixed == 0.0


def test_tokenizer_check_cli_prints_fix_and_writes_fixed(real_chatlm_dir, tmp_path, capsys):
    chatlm_dir = real_chatlm_dir
    assert main(["tokenizer", "check", "--tokenizer", str(chatlm_dir)]) == 1
    out = capsys.readouterr().out
    assert "DEFECT" in out and "fix: drop the Metaspace step" in out
    assert main(["tokenizer", "check", "--tokenizer", str(chatlm_dir), "--write-fixed", str(tmp_path / "fixed")]) == 0
    assert main(["tokenizer", "check", "--tokenizer", str(tmp_path / "fixed")]) == 0
    assert "no Metaspace defect" in capsys.readouterr().out
    assert write_fixed(chatlm_dir, tmp_path / "again").is_file()


def test_train_bpe_and_unigram_from_parquet(tmp_path):
    rows = [f"第{i}号：今天天气很好，我们去公园散步吧。hello world {i}" for i in range(300)]
    pq.write_table(pa.table({"prompt": rows, "response": rows[::-1]}), tmp_path / "t.parquet")
    (tmp_path / "t.txt").write_text("\n".join(rows[:50]), encoding="utf-8")
    for kind in ("bpe", "unigram"):
        out = tmp_path / kind
        assert main(["tokenizer", "train", "--files", str(tmp_path / "t.parquet"), str(tmp_path / "t.txt"),
                     "--vocab-size", "300", "--kind", kind, "--out", str(out)]) == 0
        tok = load_tokenizer(out)
        assert tok.fixed is None and tok.pad_id == 0 and tok.eos_id == 1
        assert 100 < tok.vocab_size <= 300
        ids = tok.tokenizer.encode(rows[7], add_special_tokens=False).ids
        assert tok.unk_id not in ids
        assert tok.decode_batch([ids])[0].replace(" ", "") == rows[7].replace(" ", "")
    tok = train_tokenizer([tmp_path / "t.parquet"], 280, "bpe", max_texts=20)
    assert tok.get_vocab_size() <= 280


def test_bpe_training_gives_the_same_tokenizer_for_the_same_files(tmp_path):
    """What the README and `--kind`'s help promise (unigram makes no such promise)."""
    from chat_pretrain.synth import make_parquet

    data = make_parquet(tmp_path / "text.parquet", 2000, seed=7)
    first, second = (train_tokenizer([data], 2000, "bpe").to_str() for _ in range(2))
    assert first == second


def test_the_benchmarks_stand_in_tokenizer_has_the_chatlm_size_and_one_token_per_generated_character(tmp_path):
    """scripts/stand_in_tokenizer.py (the GPU bench scripts' tokenizer when TOK is unset): the ChatLM
    vocabulary's size, so the model is the 0.2B T5, and one token per character of make-data's text."""
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq
    from chat_pretrain.synth import make_parquet
    from chat_pretrain.tokenizer import load_tokenizer

    script = Path(__file__).parents[1] / "scripts" / "stand_in_tokenizer.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "tok")], check=True, capture_output=True)
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 29298 and tok.pad_id == 0 and tok.eos_id == 1
    rows = pq.read_table(make_parquet(tmp_path / "d.parquet", 20, median_chars=12)).to_pylist()
    for text in (r["prompt"] for r in rows):
        ids = tok.tokenizer.encode(text).ids
        assert len(ids) == len(text) and tok.unk_id not in ids

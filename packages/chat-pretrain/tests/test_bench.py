"""`chat-pretrain bench` on CPU: both arms run through the real entry point and report comparable figures."""

import json

from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet


def test_bench_both_arms_on_cpu(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "b.parquet", 400, median_chars=8, row_group_rows=100)
    out = tmp_path / "res.json"
    argv = ["bench", "--tokenizer", str(chatlm_dir), "--data", str(data), "--profile", "cpu-tiny", "--steps", "2",
            "--warmup", "1", "grad_accum_steps=2", "data.max_batch_rows=8", "data.batch_size=4"]
    for arm in ("ours", "users"):
        assert main([*argv, "--arm", arm, "--json-out", str(out.with_name(f"{arm}.json"))]) == 0
    capsys.readouterr()
    ours = json.loads(out.with_name("ours.json").read_text())
    users = json.loads(out.with_name("users.json").read_text())
    for r in (ours, users):
        assert r["steps"] == 2 and r["real_tokens"] > 0 and r["tokens_per_s"] > 0
        assert r["extra"]["peak_host_rss_gib"] > 0 and r["extra"]["grad_accum"] == 2
    # Users: fixed 4-row micro-batches; ours: a token budget of 4 x 32 per side, at most 8 rows.
    assert users["samples"] == 2 * 2 * 4
    assert ours["samples"] >= users["samples"]
    from trainstack.bench import BenchResult, compare

    table = compare([BenchResult(**users), BenchResult(**ours)], baseline="users")
    assert "speedup" in table and "CPU figures" in table

"""The bench harness on CPU with the tiny architecture: it runs, counts real tokens, says CPU figures."""

import numpy as np
from mt_nllb.bench import main, synthetic_lengths


def test_synthetic_lengths_follow_the_stated_distribution():
    n = synthetic_lengths(20000, seed=0)
    assert n.min() >= 4 and n.max() <= 256
    assert abs(np.median(n) - 38) <= 1.5
    assert abs(np.log(n).std() - 0.6) < 0.03


def test_bench_ours_and_profile_variant_on_cpu(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["--model-config", "tiny", "--only", "ours,rtx4080s-16g-adamw", "--pairs", "288", "--fixed-length", "40", "--warmup-steps", "1",
               "--timed-steps", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "CPU figures" in text
    import json

    res = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert res["ours"]["samples"] == 96 and res["rtx4080s-16g-adamw"]["samples"] == 96  # same effective batch
    assert res["ours"]["real_tokens"] == 96 * 80 and res["ours"]["extra"]["max_padded_len"] == 40


def test_fused_vs_chunked_stage_on_cpu(tmp_path, capsys):
    """The stage's wiring: the h100-80g profile's rows, the architecture's width and vocabulary, the
    comparison in bench.json. On CPU liger is skipped, saying why, and the chunked path meets the
    float64 reference."""
    import json

    out = tmp_path / "b.json"
    rc = main(["--model-config", "tiny", "--only", "fused-vs-chunked", "--head-batches", "1", "--pairs", "10",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    bench = json.loads(out.read_text())
    res = bench["fused_vs_chunked"]
    assert bench["fast_vs_eager"] is None and bench["results"] == []
    assert (res["width"], res["vocab"], res["shapes"][0][0], res["device"]) == (64, 512, 96, "cpu")
    assert res["liger"] == "skipped: needs a CUDA GPU and liger-kernel" and res["paths"] == ["chunked", "reference"]
    assert res["differences"]["chunked_vs_reference"]["grad_weight_max_rel"] < 1e-5
    assert "fused-vs-chunked: chunked_vs_reference: loss" in text

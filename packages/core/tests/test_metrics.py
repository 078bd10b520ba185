import math
import sys

import pytest
import torch
from trainstack.hardware import GPUInfo, simulated_hardware
from trainstack.metrics import (
    ThroughputMeter,
    bleu,
    chrf,
    peak_bf16_flops,
    transformer_flops_per_token,
)


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-40GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA A10", 125),
        ("NVIDIA L4", 121),
        ("NVIDIA L40S", 362),
        ("NVIDIA GeForce RTX 4080 SUPER", 104.4),
        ("NVIDIA GeForce RTX 4080", 97.5),
        ("NVIDIA GeForce RTX 3080", 59.5),
        ("NVIDIA GeForce RTX 3080 Ti", 68.2),
        ("NVIDIA GeForce RTX 2080 SUPER", 44.6),
        ("Tesla T4", 65),
    ],
)
def test_peak_table(monkeypatch, name, tflops):
    monkeypatch.delenv("TRAINSTACK_PEAK_FLOPS", raising=False)
    assert peak_bf16_flops(GPUInfo(name, (8, 0), 10.0)) == pytest.approx(tflops * 1e12)


def test_peak_unknown_none_and_env_override(monkeypatch):
    monkeypatch.delenv("TRAINSTACK_PEAK_FLOPS", raising=False)
    assert peak_bf16_flops(None) is None
    assert peak_bf16_flops(GPUInfo("NVIDIA A10G", (8, 6), 22.0)) is None  # "A10" must not match A10G
    assert peak_bf16_flops(GPUInfo("Some Future GPU", (10, 0), 200.0)) is None
    monkeypatch.setenv("TRAINSTACK_PEAK_FLOPS", "2e14")
    assert peak_bf16_flops(GPUInfo("Some Future GPU", (10, 0), 200.0)) == 2e14


def test_every_simulated_gpu_has_a_peak(monkeypatch):
    monkeypatch.delenv("TRAINSTACK_PEAK_FLOPS", raising=False)
    for name in ("rtx2080s-8g", "rtx4080s-16g", "rtx3080-10g", "a100-40g", "h100-80g"):
        assert peak_bf16_flops(simulated_hardware(name).gpu) is not None, name


def test_transformer_flops_closed_form():
    # GPT-2 small-ish: 124M params, 12 layers, d=768, T=1024
    n, layers, d, t = 124e6, 12, 768, 1024
    assert transformer_flops_per_token(n, layers, d, t) == 6 * n + 12 * layers * d * t
    assert transformer_flops_per_token(n, layers, d, t, causal=True) == 6 * n + 6 * layers * d * t


def test_throughput_meter_rates_and_mfu(monkeypatch):
    monkeypatch.delenv("TRAINSTACK_PEAK_FLOPS", raising=False)
    clock = iter([100.0, 102.0, 106.0])
    monkeypatch.setattr("trainstack.metrics.time.perf_counter", lambda: next(clock))
    gpu = GPUInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1)
    meter = ThroughputMeter(flops_per_token=1e9, gpu=gpu)  # clock 100
    meter.update(torch.tensor(4000), 8)  # clock 102: 2 s
    s = meter.summary()
    assert s["tokens_per_s"] == 2000 and s["samples_per_s"] == 4
    assert s["mfu"] == pytest.approx(2000 * 1e9 / 989e12)
    meter.update(4000, 4)  # clock 106: 4 s
    s = meter.summary()
    assert s["tokens_per_s"] == 1000 and s["samples_per_s"] == 1
    assert s["avg_tokens_per_s"] == pytest.approx(8000 / 6) and s["total_tokens"] == 8000
    assert s["peak_memory_gib"] is None  # CPU


def test_throughput_meter_without_flops_has_no_mfu():
    meter = ThroughputMeter()
    meter.update(10, 1)
    assert meter.summary()["mfu"] is None


def test_bleu_matches_sacrebleu_and_reports_signature():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog barked loudly"]
    refs = ["the cat sat on a mat", "the dog barked loudly"]
    res = bleu(hyps, refs)
    assert res.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert "tok:13a" in res.signature and "nrefs:1" in res.signature
    assert bleu(hyps, hyps).score == pytest.approx(100.0)


def test_bleu_multiple_references_per_hypothesis():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog barked"]
    refs = [["the cat sat on a mat", "a cat sat on the mat"], ["the dog barked", "a dog barked"]]
    res = bleu(hyps, refs)
    streams = [[r[0] for r in refs], [r[1] for r in refs]]
    assert res.score == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert "nrefs:2" in res.signature
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(hyps, refs[:1])


def test_bleu_chinese_tokenizer():
    hyps = ["我喜欢吃苹果"]
    refs = ["我喜欢吃苹果和香蕉"]
    res = bleu(hyps, refs, tokenize="zh")
    assert "tok:zh" in res.signature
    # zh tokenizer splits characters: all n-grams match, only the brevity penalty (6 vs 9 chars) applies
    assert res.score == pytest.approx(100 * math.exp(1 - 9 / 6), abs=1e-6)
    assert bleu(hyps, refs).score == 0.0  # 13a sees one token each: no match


def test_chrf_and_chrf_plus_plus():
    import sacrebleu

    hyps = ["the cat sat on the mat"]
    refs = ["the cat sat on a mat"]
    c = chrf(hyps, refs)
    cpp = chrf(hyps, refs, word_order=2)
    assert c.score == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert cpp.score == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert "nw:2" in cpp.signature and "nw:0" in c.signature
    assert c.score != cpp.score


def test_bleu_without_sacrebleu_names_the_extra(monkeypatch):
    from trainstack.extras import MissingExtra

    for name in [m for m in sys.modules if m == "sacrebleu" or m.startswith("sacrebleu.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now fails as if not installed
    for score in (bleu, chrf):
        with pytest.raises(MissingExtra, match=r"needs sacrebleu, which is not installed: "
                                               r"pip install 'trainstack-core\[metrics\]'$"):
            score(["a b"], ["a b"])

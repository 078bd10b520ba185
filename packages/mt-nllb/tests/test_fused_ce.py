"""speed.liger_ce (liger-kernel's fused linear CE): refused where it cannot run, one line and nothing
written; CUDA graphs off with the reason said; the call liger gets; the bench's head comparison on CPU;
liger against the chunked path on a GPU."""

import sys
import types

import pytest
import torch
from mt_nllb import fused_ce
from mt_nllb import head_compare as H
from mt_nllb import train as T
from mt_nllb.bench import synthetic_lengths
from mt_nllb.cli import main
from mt_nllb.config import TrainConfig
from mt_nllb.loss import chunked_smoothed_ce, full_logits_smoothed_ce
from trainstack.config import ConfigError, load_config

FP32 = types.SimpleNamespace(use_grad_scaler=False)  # all resolve_train_speed reads of the precision


def _train(tmp_path, *extra):
    return main(["train", "--profile", "cpu-debug", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 f"data.cache_dir={tmp_path / 'cache'}", *extra])


def _refused(tmp_path, capsys, *extra) -> str:
    """The one line of a refused `mt-nllb train` (exit 2) that wrote no run directory and no data cache."""
    assert _train(tmp_path, *extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mt-nllb: error:"), lines
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    return lines[0]


def test_graphs_true_with_liger_is_refused_by_the_config_check(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "speed.cuda_graphs=true", "speed.liger_ce=true")
    assert "config key 'speed.cuda_graphs'" in line and "speed.liger_ce" in line and "host" in line
    load_config(TrainConfig, {}, ["speed.cuda_graphs=false", "speed.liger_ce=true"])  # false is fine


def test_auto_graphs_resolve_off_with_the_reason(monkeypatch):
    monkeypatch.setattr(fused_ce, "HAS_LIGER_KERNEL", True)
    cuda = torch.device("cuda")  # resolution reads the device type only: no GPU needed
    plain = load_config(TrainConfig, {}, [])
    assert T.resolve_train_speed(plain, cuda, FP32).cuda_graphs
    cfg = load_config(TrainConfig, {}, ["speed.liger_ce=true"])
    speed = T.resolve_train_speed(cfg, cuda, FP32)
    assert not speed.cuda_graphs
    assert speed.reason.endswith(f"(CUDA; no graphs: {fused_ce.GRAPH_BLOCKER})")
    assert not T.compile_loss_chunks(cfg, speed)  # no chunk math of ours to compile
    assert "liger-kernel's fused linear CE in chunks of up to 2048 rows, real tokens only" in T.describe_loss(cfg, speed)
    with pytest.raises(ConfigError, match="needs a CUDA device, and this run's device is cpu"):
        T.resolve_train_speed(cfg, torch.device("cpu"), FP32)


def test_missing_liger_kernel_is_one_line_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fused_ce, "HAS_LIGER_KERNEL", False)  # as if not installed, whether it is or not
    # An absent data file would be its own error: the liger one comes first, before the data is read.
    line = _refused(tmp_path, capsys, "speed.liger_ce=true", f"data.train=[{tmp_path / 'absent.tsv'}]")
    assert "config key 'speed.liger_ce'" in line and "pip install 'mt-nllb[gpu]'" in line
    assert "speed.liger_ce=false" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without a CUDA device "
                                                     "(test_auto_graphs_resolve_off_with_the_reason checks it anywhere)")
def test_no_cuda_device_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fused_ce, "HAS_LIGER_KERNEL", True)
    line = _refused(tmp_path, capsys, "speed.liger_ce=true")
    assert "config key 'speed.liger_ce'" in line and "needs a CUDA device" in line and "speed.liger_ce=false" in line


def _liger_chunk_rows(rows, width, vocab, c):
    """liger-kernel 0.8.5's chunk size (ops/fused_linear_cross_entropy.py, fused_linear_cross_entropy_forward)."""
    inc_factor = -(-vocab // (c * width))
    chunk = 1 << (-(-rows // inc_factor) - 1).bit_length()  # triton.next_power_of_2
    return min(chunk, rows)


@pytest.mark.parametrize("rows", [1, 37, 1000, 3840, 4096, 5000, 20000])
@pytest.mark.parametrize("chunk_rows", [1, 256, 2048, 3000, 8192])
def test_chunk_mem_const_is_the_largest_within_the_chunk_rows(rows, chunk_rows):
    width, vocab = 1024, 256206
    c = fused_ce.chunk_mem_const(rows, width, vocab, chunk_rows)
    smallest = _liger_chunk_rows(rows, width, vocab, 1)
    assert _liger_chunk_rows(rows, width, vocab, c) <= max(chunk_rows, smallest)
    if _liger_chunk_rows(rows, width, vocab, c) < rows:  # a larger constant would pass chunk_rows
        assert _liger_chunk_rows(rows, width, vocab, c + 1) > chunk_rows


@pytest.mark.parametrize("fixed_shapes", [False, True], ids=["real-rows", "fixed-shapes"])
def test_liger_is_called_with_our_rows_and_settings(monkeypatch, fixed_shapes):
    """The call liger-kernel gets (its functional API stood in for by the float64 loss over the rows it
    is given, ignore_index honoured): the real rows only eagerly, every row with padding ignored under
    fixed shapes; label smoothing, mean over non-ignored rows, fp32 accumulation, the chunk constant."""
    calls = []

    def liger_fused_linear_cross_entropy(input, weight, target, **kw):
        calls.append({"rows": input.shape[0], "target": target, **kw})
        return full_logits_smoothed_ce(input.double() @ weight.double().t(), target, kw["label_smoothing"])[0]

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(3, 8, 16, generator=g), torch.randn(301, 16, generator=g)
    labels = torch.randint(0, 301, (3, 8), generator=g)
    labels[1, 5:] = labels[2, :] = -100
    loss, count = fused_ce.liger_smoothed_ce(hidden, weight, labels, 0.1, 2048, fixed_shapes)
    (call,) = calls
    assert int(count) == 13 and call["rows"] == (24 if fixed_shapes else 13)
    assert int(call["target"].ne(-100).sum()) == 13
    assert {k: call[k] for k in ("ignore_index", "label_smoothing", "reduction", "accum_dtype", "chunk_mem_const")} == {
        "ignore_index": -100, "label_smoothing": 0.1, "reduction": "mean", "accum_dtype": torch.float32,
        "chunk_mem_const": fused_ce.chunk_mem_const(call["rows"], 16, 301, 2048)}
    assert loss.item() == pytest.approx(chunked_smoothed_ce(hidden, weight, labels, 0.1)[0].item(), rel=1e-6)


def test_train_loss_fn_takes_liger_for_the_head(monkeypatch):
    """make_loss_fn (train's and the bench's) hands the decoder output and the LM head to liger's loss
    under speed.liger_ce, with the run's label smoothing and chunk rows."""
    from mt_nllb.model import load_arch_config
    from transformers import M2M100ForConditionalGeneration

    seen = []

    def head(hidden, weight, labels, epsilon, chunk_rows, fixed_shapes):
        seen.append((hidden.shape, weight is model.lm_head.weight, epsilon, chunk_rows, fixed_shapes))
        return chunked_smoothed_ce(hidden, weight, labels, epsilon, chunk_rows, fixed_shapes)

    monkeypatch.setattr(fused_ce, "liger_smoothed_ce", head)
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(load_arch_config("tiny", vocab_size=257))
    labels = torch.randint(4, 257, (2, 5))
    batch = {"input_ids": torch.randint(4, 257, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "decoder_input_ids": torch.randint(4, 257, (2, 5)), "labels": labels}
    cfg = load_config(TrainConfig, {}, ["speed.liger_ce=true", "speed.ce_chunk_tokens=64", "label_smoothing=0.2"])
    loss, count = T.make_loss_fn(cfg)(model, batch)
    assert seen == [((2, 5, 64), True, 0.2, 64, False)] and int(count) == 10
    plain = load_config(TrainConfig, {}, ["speed.ce_chunk_tokens=64", "label_smoothing=0.2"])
    assert loss.item() == pytest.approx(T.make_loss_fn(plain)(model, batch)[0].item(), rel=1e-6) and len(seen) == 1


def _compare_on_cpu(paths, seed=0):
    lengths = [synthetic_lengths(6, seed=seed + i)[:, 1] for i in range(2)]
    weight, batches = H.head_batches(lengths, width=16, vocab=301, seed=seed, device="cpu")  # 301: not aligned
    return H.compare_heads(weight, batches, paths)


def test_head_comparison_chunked_matches_the_float64_reference_on_cpu():
    result = _compare_on_cpu(H.head_paths(0.1, chunk_rows=7, liger=False, reference_dtype=torch.float64))
    assert result["paths"] == ["chunked", "reference"] and not result["skipped"]
    padded = [rows * length for rows, length in result["shapes"]]
    assert all(0 < n < size for n, size in zip(result["rows"], padded, strict=True))  # the batches carry padding
    d = result["differences"]["chunked_vs_reference"]
    assert d["loss_rel"] < 1e-6 and d["grad_hidden_max_rel"] < 1e-5 and d["grad_weight_max_rel"] < 1e-5
    assert set(result["per_path"]) == {"chunked", "reference"}


def test_head_comparison_reports_a_path_that_differs():
    """The comparison's numbers are not blind: a path with another label smoothing (0.3) is reported
    off, in the loss a little (near-uniform logits: every token's loss is near log V) and in the
    gradients by a fifth (the target's weight 1 - eps)."""
    paths = H.head_paths(0.1, chunk_rows=7, liger=False, reference_dtype=torch.float64)
    paths = {"off": H.head_paths(0.3, chunk_rows=7, liger=False, reference_dtype=torch.float64)["chunked"], **paths}
    d = _compare_on_cpu(paths)["differences"]
    assert d["off_vs_reference"]["loss_rel"] > 1e-4 > 1e-6 > d["chunked_vs_reference"]["loss_rel"]
    assert d["off_vs_reference"]["grad_hidden_max_rel"] > 0.1 and d["off_vs_reference"]["grad_weight_max_rel"] > 0.1
    assert d["off_vs_chunked"]["grad_weight_max_rel"] > 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and fused_ce.HAS_LIGER_KERNEL),
                    reason="needs a CUDA GPU and liger-kernel")
@pytest.mark.parametrize("fixed_shapes", [False, True], ids=["real-rows", "fixed-shapes"])
def test_liger_matches_the_chunked_path_on_a_gpu(fixed_shapes, monkeypatch):
    """fp32 throughout (no autocast, no TF32), a vocabulary that is not a multiple of 128, many chunks:
    liger's loss and gradients equal the chunked path's up to fp32 rounding."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(5003, 256, generator=g) * 0.02).cuda()
    for _ in range(2):
        labels = torch.randint(0, 5003, (24, 60), generator=g)
        labels[torch.arange(60) >= torch.randint(4, 61, (24, 1), generator=g)] = -100
        hidden, labels = torch.randn(24, 60, 256, generator=g).cuda(), labels.cuda()
        runs = {}
        for name, fn in (("liger", fused_ce.liger_smoothed_ce), ("chunked", chunked_smoothed_ce)):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            loss, count = fn(h, w, labels, 0.1, 64, fixed_shapes)
            loss.backward()
            runs[name] = (loss.item(), int(count), h.grad, w.grad)
        (a, ca, ha, wa), (b, cb, hb, wb) = runs["liger"], runs["chunked"]
        assert ca == cb and a == pytest.approx(b, rel=1e-5)
        torch.testing.assert_close(ha, hb, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-6)


# speed.triton_ce: the chunk math by ce_kernel's Triton kernel.

@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without a CUDA device "
                                                     "(test_triton_ce_true_without_triton_is_refused checks it anywhere)")
def test_triton_ce_true_without_cuda_is_one_line_before_the_data_is_read(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "speed.triton_ce=true", f"data.train=[{tmp_path / 'absent.tsv'}]")
    assert "config key 'speed.triton_ce'" in line and "this run's device is cpu" in line


def test_triton_ce_true_without_triton_is_refused(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    cfg = load_config(TrainConfig, {}, ["speed.triton_ce=true"])
    with pytest.raises(ConfigError, match="speed.triton_ce.*Triton is not installed"):
        T.resolve_train_speed(cfg, torch.device("cuda"), FP32)  # reads the device type only: no GPU needed
    assert not T.triton_ce_on(load_config(TrainConfig, {}, []), torch.device("cuda"))  # auto: off, silently


def test_triton_ce_auto_is_off_on_cpu_and_under_liger():
    cfg = load_config(TrainConfig, {}, [])
    assert not T.triton_ce_on(cfg, torch.device("cpu"))
    speed = T.resolve_train_speed(cfg, torch.device("cpu"), FP32)
    assert "Triton" not in T.describe_loss(cfg, speed, torch.device("cpu"))
    liger = load_config(TrainConfig, {}, ["speed.liger_ce=true", "speed.triton_ce=true"])
    assert not T.triton_ce_on(liger, torch.device("cuda"))  # liger's loss runs no chunk math of ours

"""The compiled layer: the same losses as eager, one graph for every layer and batch, attention backends
chosen by compute capability, and the Turing profiles pinned to what runs there."""
import json

import pytest
import torch
import torch.nn.functional as F
from esm2ae import model as M
from esm2ae.cli import main
from esm2ae.config import Config, deepspeed_json
from esm2ae.model import CLS_ID, EOS_ID, MASK_ID, PackedEsm, esm2_config, pack_sequences
from esm2ae.profiles import get_profile, profile_hardware
from trainstack.config import load_config
from trainstack.precision import resolve_precision
from transformers import EsmForMaskedLM

from .test_train import TINY


@pytest.fixture(autouse=True)
def _fresh_compile_state(monkeypatch, tmp_path):
    # each test counts its own graphs; enable_compile_cache writes these variables: restored afterwards
    torch._dynamo.reset()
    M.compiled_esm_layers.cache_clear()
    monkeypatch.setenv("TRAINSTACK_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(var, "unset-by-test")
        monkeypatch.delenv(var)
    yield
    torch._dynamo.reset()
    M.compiled_esm_layers.cache_clear()


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def test_compiled_training_has_the_eager_losses(tmp_path, capsys):
    """`esm2ae train` with the layer compiled (aot_eager: the graphs Inductor would get, traced on a CPU)
    logs the losses of the eager run, step by step, at equal weights and batches."""
    common = ["train", "--profile", "cpu-debug", *TINY, "max_steps=4", "log_every_steps=1", "eval_every_steps=0",
              "save_checkpoints=false"]
    assert main([*common, "model.compile=false", f"run_dir={tmp_path / 'eager'}"]) == 0
    assert "compile: the layer function" not in capsys.readouterr().out
    assert main([*common, "model.compile=true", "model.compile_backend=aot_eager", f"run_dir={tmp_path / 'compiled'}"]) == 0
    out = capsys.readouterr().out
    assert f"one graph for all 2 layers (aot_eager); compile cache {tmp_path / 'cache' / 'compile'}" in out
    assert "first optimizer step after" in out
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 4
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-5)
    # time to the first step is logged from the process start; aot_eager generates no code to cache
    assert all(r["first_step_seconds"] > 0 and r["compile_cache"] == "unused" for r in compiled)


def _tiny_hf(layers=3):
    torch.manual_seed(0)
    cfg = esm2_config("esm2_tiny", num_hidden_layers=layers)
    return EsmForMaskedLM(cfg).double()


def _batches(total_len=96):
    """Batches of one fixed length with 2, 4 and 3 sequences: the varlen kernels' boundaries change in number."""
    g = torch.Generator().manual_seed(3)
    out = []
    for lengths in ([30, 41], [12, 20, 9, 33], [25, 25, 40]):
        seqs = [[CLS_ID] + torch.randint(4, 24, (n - 2,), generator=g).tolist() + [EOS_ID] for n in lengths]
        labels = [[-100] * n for n in lengths]
        for s, lab in zip(seqs, labels, strict=True):
            lab[3], s[3] = s[3], MASK_ID
        out.append(pack_sequences(seqs, labels, total_len=total_len))
    return out


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale):
    """torch's varlen_attn contract (T, H, D) in, (T, H, D) out, from SDPA one sequence at a time."""
    assert torch.equal(cu_q, cu_k) and max_q == max_k
    bounds = cu_q.tolist()
    assert max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)) <= max_q
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        parts.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
    return torch.cat(parts)


def reference_fa4(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale):
    """flash-attn-4's flash_attn_varlen_func contract as esm2ae calls it: keywords in, (out, lse) out."""
    out = reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=softmax_scale)
    return out, None


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, n, _ = model(batch)
    loss_sum.backward()
    return loss_sum.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend,graphs", [("sdpa", 1), ("varlen", 3), ("fa4", 3)])
def test_one_compiled_graph_serves_every_layer_and_batch(monkeypatch, backend, graphs):
    """Compiled once: the first batch compiles (one graph for the whole layer; around a varlen kernel three:
    the first layer before attention, a layer after attention with the next one before it, the last after),
    the other layers and the later batches, with other numbers of sequences, reuse it; losses and
    gradients equal the eager SDPA path's (float64)."""
    from torch._dynamo.utils import counters

    if backend != "sdpa":  # the kernels need an sm_80+ GPU: their contracts, from SDPA, stand in on a CPU
        monkeypatch.setattr(M, "varlen_kernel", lambda: reference_varlen)
        monkeypatch.setattr(M, "fa4_kernel", lambda: reference_fa4)
        monkeypatch.setattr(M, "pick_attention_backend", lambda requested, device_type, capability=None: requested)
    hf = _tiny_hf()
    eager = PackedEsm(hf, "sdpa")
    compiled = PackedEsm(hf, backend, compile=True, compile_backend="aot_eager")
    new_graphs = []
    for batch in _batches():
        before = counters["stats"]["unique_graphs"]
        got_loss, got_grads = _loss_and_grads(compiled, batch)
        new_graphs.append(counters["stats"]["unique_graphs"] - before)
        ref_loss, ref_grads = _loss_and_grads(eager, batch)
        torch.testing.assert_close(got_loss, ref_loss, rtol=1e-10, atol=1e-10)
        assert got_grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-9, atol=1e-10, msg=name)
    assert new_graphs == [graphs, 0, 0]


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_compiled_layers_under_gradient_checkpointing_have_the_eager_gradients(monkeypatch, backend):
    """With gradient checkpointing the compiled layers run (and are recomputed) one layer at a time, not
    chained from one attention call to the next: losses and gradients still equal the eager path's."""
    monkeypatch.setattr(M, "varlen_kernel", lambda: reference_varlen)
    monkeypatch.setattr(M, "pick_attention_backend", lambda requested, device_type, capability=None: requested)
    hf = _tiny_hf()
    eager = PackedEsm(hf, "sdpa")
    compiled = PackedEsm(hf, backend, compile=True, compile_backend="aot_eager")
    compiled.gradient_checkpointing = True
    chained = []
    monkeypatch.setattr(M.CompiledLayers, "stack", lambda *a: chained.append(a) or pytest.fail("chained"))
    for batch in _batches()[:2]:
        got_loss, got_grads = _loss_and_grads(compiled, batch)
        ref_loss, ref_grads = _loss_and_grads(eager, batch)
        torch.testing.assert_close(got_loss, ref_loss, rtol=1e-10, atol=1e-10)
        assert got_grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-9, atol=1e-10, msg=name)
    assert not chained


def test_flash_kernels_are_never_picked_automatically_below_sm80(monkeypatch):
    monkeypatch.setattr(M, "HAS_FLASH_ATTN4", False)
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", True)
    monkeypatch.setattr(M, "HAS_TORCH_VARLEN", True)
    pick = M.pick_attention_backend
    assert pick("auto", "cuda", (7, 5)) == "sdpa"    # Turing: no flash kernels, and not FlexAttention
    assert pick("auto", "cuda", (7, 0)) == "sdpa"
    assert pick("auto", "cuda", (8, 0)) == "flash"
    assert pick("auto", "cpu") == "sdpa"
    for requested in ("flash", "varlen"):
        with pytest.raises(ValueError, match=f"attention={requested} runs on CUDA GPUs of compute capability 8.0"):
            pick(requested, "cuda", (7, 5))
        with pytest.raises(ValueError, match="not on a CPU"):
            pick(requested, "cpu")
        assert pick(requested, "cuda", (9, 0)) == requested
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", False)
    assert pick("auto", "cuda", (9, 0)) == "varlen"   # torch's own flash varlen kernel
    monkeypatch.setattr(M, "HAS_TORCH_VARLEN", False)
    assert pick("auto", "cuda", (9, 0)) == "flex"
    # the model asks the device it runs on
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert PackedEsm(_tiny_hf(1)).backend("cuda") == "sdpa"


def test_fa4_when_installed_on_sm80_and_auto_only_on_hopper(monkeypatch):
    pick = M.pick_attention_backend
    monkeypatch.setattr(M, "HAS_FLASH_ATTN4", False)
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", False)
    monkeypatch.setattr(M, "HAS_TORCH_VARLEN", True)
    with pytest.raises(ValueError, match=r"^model.attention=fa4 needs FlashAttention-4: pip install 'esm2ae\[fa4\]'"):
        pick("fa4", "cuda", (9, 0))
    assert pick("auto", "cuda", (9, 0)) == "varlen"
    monkeypatch.setattr(M, "HAS_FLASH_ATTN4", True)
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", True)
    assert pick("fa4", "cuda", (9, 0)) == "fa4"
    assert pick("fa4", "cuda", (8, 0)) == "fa4"
    # auto's choices are the measured ones: FlashAttention-4 on Hopper (before flash-attn 2), not elsewhere
    assert pick("auto", "cuda", (9, 0)) == "fa4"
    assert pick("auto", "cuda", (8, 0)) == "flash"
    assert pick("auto", "cuda", (10, 0)) == "flash"
    assert pick("auto", "cuda", None) == "flash"      # capability unknown: not a guess at Hopper
    monkeypatch.setattr(M, "HAS_FLASH_ATTN", False)
    assert pick("auto", "cuda", (8, 6)) == "varlen"
    with pytest.raises(ValueError, match="attention=fa4 runs on CUDA GPUs of compute capability 8.0"):
        pick("fa4", "cuda", (7, 5))


def test_flash_attn_2_and_4_are_told_apart_without_importing_them(monkeypatch, tmp_path):
    """flash-attn-4 installs a ``flash_attn`` package holding only ``flash_attn.cute``: it is not flash-attn
    2 (whose ``flash_attn_2_cuda`` extension auto would pick), and it is found without an import."""
    import importlib
    import sys

    fa4_site = tmp_path / "fa4"
    (fa4_site / "flash_attn" / "cute").mkdir(parents=True)
    (fa4_site / "flash_attn" / "cute" / "interface.py").write_text("raise RuntimeError('imported')\n")
    fa2_site = tmp_path / "fa2"
    (fa2_site / "flash_attn").mkdir(parents=True)
    (fa2_site / "flash_attn" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    for site, expected in ((fa4_site, True), (fa2_site, False)):
        monkeypatch.setattr(sys, "path", [str(site), *sys.path])
        importlib.invalidate_caches()
        assert M._has_flash_attn4() is expected
        assert importlib.util.find_spec("flash_attn_2_cuda") is None
        assert "flash_attn" not in sys.modules


def test_varlen_without_torch_support_is_one_line(monkeypatch):
    monkeypatch.setattr(M, "HAS_TORCH_VARLEN", False)
    with pytest.raises(ValueError, match=r"model.attention=varlen needs torch >= 2.10"):
        M.pick_attention_backend("varlen", "cuda", (9, 0))


def test_torch_varlen_is_detected_on_this_torch():
    from torch.nn.attention import varlen  # noqa: F401 - torch >= 2.10, as the dev environment pins

    assert M.HAS_TORCH_VARLEN


@pytest.mark.parametrize("name", ["rtx2080s-8g", "2x-rtx2080s-8g"])
def test_turing_profiles_pin_sdpa_fp16_with_loss_scaling_and_no_compile(name):
    profile = get_profile(name)
    cfg = load_config(Config, profile.settings)
    hw = profile_hardware(profile)
    assert hw.gpu.capability < (8, 0)
    assert cfg.model.attention == "sdpa" and cfg.model.compile is False
    assert cfg.model.residual_dtype == "fp32"   # what ran under the 8 GB cap; an fp16 residual did not
    precision = resolve_precision(cfg.precision, hw)
    assert precision.name == "fp16" and precision.use_grad_scaler
    # under DeepSpeed the dynamic loss scale is DeepSpeed's (loss_scale 0 = dynamic)
    ds = deepspeed_json(cfg, precision.name, cfg.batch.grad_accum_steps(), max(1, profile.requires.gpu_count))
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0
    assert M.pick_attention_backend(cfg.model.attention, "cuda", hw.gpu.capability) == "sdpa"


def test_validate_rejects_flash_on_a_turing_profile(tmp_path, capsys):
    import yaml

    src = get_profile("rtx2080s-8g")
    data = yaml.safe_load(src.path.read_text())
    data["settings"]["model"]["attention"] = "varlen"
    path = tmp_path / "turing-varlen.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["profiles", "validate", str(path)]) == 2
    assert "model.attention=varlen needs a GPU of compute capability 8.0 or newer" in capsys.readouterr().out

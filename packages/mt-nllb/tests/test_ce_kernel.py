"""ce_kernel (speed.triton_ce): the Triton kernel's loss and gradient against the torch chunk math,
on CPU under Triton's interpreter (where Triton is installed) and on a GPU; and the chunked head with
the kernel against the float64 reference on a GPU."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (it comes with PyTorch's CUDA "
                                                       "builds; `pip install triton` runs this check on CPU)")
needs_gpu = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()),
                               reason="needs a CUDA GPU and Triton: the kernel's compiled form runs there only")

# Rows: ordinary, one labelled with the first and one with the last vocabulary column, an ignored one,
# and one whose logits grow along the row (the running max moves in every block).
COMPARE = """
import json, torch
from mt_nllb import ce_kernel, loss
torch.manual_seed(0)
vocab, cols, eps = {vocab}, {cols}, 0.1
logits = (torch.randn(6, cols) * 3).to({dtype})
logits[5] = torch.linspace(-20, 30, cols).to({dtype})
labels = torch.tensor([[3], [0], [vocab - 1], [-100], [17], [vocab // 2]])
logits, labels = logits.to("{device}"), labels.to("{device}")
ref_loss, ref_grad = loss._chunk_loss_and_grad(logits, labels, eps, True, vocab)
got_loss, got_grad = ce_kernel.chunk_loss_and_grad_(logits.clone(), labels, eps, True, vocab, block={block})
print(json.dumps({{"loss": ref_loss.item(), "loss_diff": (got_loss - ref_loss).abs().item(),
                  "grad_diff": (got_grad.float() - ref_grad.float()).abs().max().item(),
                  "ignored_row": got_grad[3].abs().max().item(), "padding_columns": got_grad[:, vocab:].abs().max().item()}}))
"""


def _compare(device: str, dtype: str, vocab: int, cols: int, block: int, interpret: bool) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    code = COMPARE.format(vocab=vocab, cols=cols, dtype=dtype, device=device, block=block)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU host checks the compiled kernel instead (below)")
@pytest.mark.parametrize("dtype,tolerance", [("torch.float32", 1e-5), ("torch.bfloat16", 8e-3)])
def test_kernel_matches_torch_chunk_math_under_the_interpreter(dtype, tolerance):
    # 300 of 384 columns are the vocabulary; blocks of 64 columns: several iterations, a partial one.
    r = _compare("cpu", dtype, vocab=300, cols=384, block=64, interpret=True)
    assert r["loss_diff"] <= 1e-5 * r["loss"]
    assert r["grad_diff"] <= tolerance  # bf16: one rounding step of the stored gradient
    assert r["ignored_row"] == 0 and r["padding_columns"] == 0


@needs_gpu
def test_kernel_matches_torch_chunk_math_on_gpu_at_nllb_vocabulary():
    r = _compare("cuda", "torch.bfloat16", vocab=256206, cols=256256, block=4096, interpret=False)
    assert r["loss_diff"] <= 1e-5 * r["loss"]
    assert r["grad_diff"] <= 8e-3
    assert r["ignored_row"] == 0 and r["padding_columns"] == 0


@needs_gpu
def test_chunked_head_with_kernel_matches_torch_chunk_math_and_float64_reference_on_gpu():
    """The whole chunked head under bf16 autocast, fixed shapes (padded rows masked), three chunks:
    with the kernel as with the torch chunk math (same bf16 matmuls), and both near the float64
    reference (bf16 logits: ~0.5% on the gradients, as `mt-nllb bench --only fused-vs-chunked` shows)."""
    from mt_nllb import loss as L

    torch.manual_seed(0)
    n, d, v, eps = 300, 64, 5000, 0.1
    hidden = torch.randn(2, n // 2, d, device="cuda")
    weight = torch.randn(v, d, device="cuda") * 0.05
    labels = torch.randint(0, v, (2, n // 2), device="cuda")
    labels[1, 100:] = -100

    def run(triton_kernel):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        L.configure(False, triton_kernel=triton_kernel)
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, count = L.chunked_smoothed_ce(h, w, labels, eps, chunk_rows=128, fixed_shapes=True)
            loss.backward()
        finally:
            L.configure(False)
        return loss.detach().double(), h.grad.double(), w.grad.double(), count

    kernel, torch_ops = run(True), run(False)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref, _ = L.full_logits_smoothed_ce(h64 @ w64.t(), labels, eps)
    ref.backward()
    assert kernel[3].item() == int(labels.ne(-100).sum())
    for got, want, rtol in ((kernel, torch_ops, 1e-5), (kernel, (ref.detach(), h64.grad, w64.grad), 1e-2)):
        assert abs(got[0] - want[0]).item() <= rtol * want[0].item()
        for g, w in zip(got[1:3], want[1:3], strict=True):
            assert (g - w).abs().max().item() <= max(rtol, 2e-3) * w.abs().max().item()

"""The chunked linear + label-smoothed CE against transformers' LabelSmoother and a float64 reference."""

import pytest
import torch
from mt_nllb import loss as L
from mt_nllb.model import load_arch_config
from transformers import M2M100ForConditionalGeneration
from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right
from transformers.trainer_pt_utils import LabelSmoother


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0
    labels = torch.randint(4, vocab, (3, 7), generator=g)
    labels[2, 4:] = -100
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": shift_tokens_right(labels, 1, 2),
            "labels": labels}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return M2M100ForConditionalGeneration(load_arch_config("tiny", vocab_size=257)).eval()


@pytest.mark.parametrize("chunk_rows", [1, 5, 4096])
def test_loss_matches_hf_label_smoother(model, chunk_rows):
    batch = _batch(257)
    hf = LabelSmoother(epsilon=0.1)(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          labels=batch["labels"]), batch["labels"])
    ours, count = L.seq2seq_loss(model, batch, 0.1, chunked=True, chunk_rows=chunk_rows)
    assert int(count) == int((batch["labels"] != -100).sum())
    assert abs(ours.item() - hf.item()) <= 1e-3 * abs(hf.item())
    assert abs(ours.item() - hf.item()) < 1e-5  # in fact equal up to fp32 rounding


def _head_inputs(seed, rows, n, d, v):
    """Random decoder outputs (rows, n, d) and head weight (v, d), both requiring gradients, and
    labels (rows, n)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, n, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    return hidden, weight, torch.randint(0, v, (rows, n), generator=g)


def test_loss_and_gradients_match_float64_reference():
    n, d, v, eps = 11, 8, 50, 0.1
    hidden, weight, labels = _head_inputs(1, 2, n, d, v)
    labels[0, 7:] = -100
    loss, _ = L.chunked_smoothed_ce(hidden, weight, labels, eps, chunk_rows=3)
    loss.backward()
    _assert_matches_float64_reference(loss, hidden, weight, labels, eps)


def _assert_matches_float64_reference(loss, hidden, weight, labels, eps):
    """``loss`` and the gradients in ``hidden.grad``/``weight.grad`` against the float64 label-smoothed
    CE over the real (label != -100) tokens."""
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    logp = torch.log_softmax(h64 @ w64.t(), dim=-1)
    m = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[m].mean()
    smooth = (-logp.sum(-1))[m].mean() / weight.shape[0]
    ref = (1 - eps) * nll + eps * smooth
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


def test_no_grad_path_and_unchunked_agree(model):
    batch = _batch(257, seed=3)
    with torch.no_grad():
        a, _ = L.seq2seq_loss(model, batch, 0.1, chunked=True, chunk_rows=4)
        b, _ = L.seq2seq_loss(model, batch, 0.1, chunked=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_model_gradients_match_hf(model):
    batch = _batch(257, seed=5)
    model.zero_grad()
    L.seq2seq_loss(model, batch, 0.1, chunked=True, chunk_rows=4)[0].backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"])
    LabelSmoother(epsilon=0.1)(out, batch["labels"]).backward()
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("compiled,symbolic", [(False, True), (True, True), (True, False)],
                         ids=["eager", "compiled", "compiled-constant-vocabulary"])
def test_fixed_shapes_loss_and_gradients_match_float64_reference(compiled, symbolic):
    """The fast path's head keeps every row and masks padding (a captured graph cannot pick rows):
    loss and gradients equal the float64 reference over real tokens, eager and compiled (every size
    symbolic, or the vocabulary a constant: speed.symbolic_widths)."""
    n, d, v, eps = 10, 8, 40, 0.1
    hidden, weight, labels = _head_inputs(2, 3, n, d, v)
    labels[0, 6:] = -100
    labels[2, :] = -100  # a filler row: no label at all
    L.configure(compiled, dynamic=symbolic)
    try:
        loss, count = L.chunked_smoothed_ce(hidden, weight, labels, eps, chunk_rows=7, fixed_shapes=True)
        loss.backward()
    finally:
        L.configure(False)
    assert int(count) == int((labels != -100).sum())
    _assert_matches_float64_reference(loss, hidden, weight, labels, eps)
    assert hidden.grad[2].abs().max() == 0  # the filler row gets no gradient


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gathered_head_rows_match_float64_reference(compiled):
    """speed.head_row_multiple: the head runs over the collate's gathered real positions, padded with
    an ignored position (repeated): loss and gradients still equal the float64 reference over real
    tokens, and the padded positions get no gradient."""
    import numpy as np
    from mt_nllb.data import head_gather

    n, d, v, eps = 10, 8, 40, 0.1
    hidden, weight, labels = _head_inputs(6, 3, n, d, v)
    labels[0, 6:] = -100
    labels[2, :] = -100
    positions, head_labels = head_gather(labels.numpy(), 8)
    assert len(positions) == 16 and (head_labels != -100).all()  # 16 real tokens, a multiple of 8
    positions, head_labels = head_gather(labels.numpy(), 12)
    assert len(positions) == 24 and (head_labels[16:] == -100).all()
    gather = (torch.from_numpy(positions), torch.from_numpy(np.ascontiguousarray(head_labels)))
    L.configure(compiled, dynamic=False)
    try:
        loss, count = L.chunked_smoothed_ce(hidden, weight, labels, eps, chunk_rows=7, fixed_shapes=True,
                                            gather=gather)
        loss.backward()
    finally:
        L.configure(False)
    assert int(count) == int((labels != -100).sum()) == 16
    _assert_matches_float64_reference(loss, hidden, weight, labels, eps)
    assert hidden.grad[labels == -100].abs().max() == 0


def test_head_gather_pads_with_an_ignored_position_and_never_past_the_batch():
    from mt_nllb.data import head_gather

    labels = torch.full((2, 4), -100)
    labels[0, :3] = torch.tensor([5, 6, 7])
    labels[1, :2] = torch.tensor([8, 9])
    positions, y = head_gather(labels.numpy(), 4)
    assert positions.tolist() == [0, 1, 2, 4, 5, 3, 3, 3] and y.tolist() == [5, 6, 7, 8, 9, -100, -100, -100]
    full = torch.arange(8).reshape(2, 4)  # every position real: no room to pad, none needed
    positions, y = head_gather(full.numpy(), 5)
    assert positions.tolist() == list(range(8)) and y.tolist() == list(range(8))
    positions, y = head_gather(torch.full((1, 3), -100).numpy(), 2)  # no real token: one ignored row
    assert len(positions) == 2 and (y == -100).all()


def test_under_autocast_the_head_weight_is_cast_once_and_never_copied_in_fp32():
    """The aligned copy of the head's weight is made in autocast's dtype, once per call: an fp32 copy
    (the decoder's output is fp32 under autocast) meant a full-size device copy and then a cast before
    each chunk's matmuls (autocast caches casts of parameters only). Counted with a dispatch mode over
    every op whose output is weight-sized (without gradients: the weight's gradient is weight-sized
    too); the loss is unchanged against the reference."""
    from torch.utils._python_dispatch import TorchDispatchMode

    g = torch.Generator().manual_seed(8)
    v, d = 300, 16
    hidden = torch.randn(2, 9, d, generator=g)
    weight = torch.randn(v, d, generator=g)
    labels = torch.randint(0, v, (2, 9), generator=g)
    big = v * d

    class WeightSized(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() >= big and func.__name__.split(".")[0] in (
                    "copy_", "_to_copy", "clone"):
                self.made.append((func.__name__.split(".")[0], out.dtype))
            return out

    with torch.autocast("cpu", dtype=torch.bfloat16), WeightSized() as mode:
        loss, _ = L.chunked_smoothed_ce(hidden, weight, labels, 0.1, chunk_rows=6)
    assert mode.made == [("copy_", torch.bfloat16)]  # one cast into the aligned bf16 buffer, nothing else
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, _ = L.full_logits_smoothed_ce(hidden @ weight.to(torch.bfloat16).t().float(), labels, 0.1)
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_fixed_shapes_ignore_non_finite_padded_rows():
    """torch.where, not a multiply by the mask: a padded row whose hidden state is not finite adds
    nothing to the loss or the gradients (NaN * 0 would still be NaN)."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 5, 6, generator=g)
    hidden[1, 3:] = float("nan")
    labels = torch.randint(0, 30, (2, 5), generator=g)
    labels[1, 3:] = -100
    hidden.requires_grad_()
    weight = torch.randn(30, 6, generator=g, requires_grad=True)
    loss, _ = L.chunked_smoothed_ce(hidden, weight, labels, 0.1, chunk_rows=4, fixed_shapes=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fp32-output matmuls are CUDA-only)")
@pytest.mark.parametrize("chunks", [1, 3])
def test_cuda_weight_gradient_accumulates_bf16_chunk_products_in_fp32(chunks):
    """On CUDA the head's weight gradient sum over chunks of g.t() @ h (bf16 g and h) is formed by
    matmuls that write fp32 (first chunk mm, then addmm into the same buffer): as exact as fp32
    accumulation of the exact bf16 products, where a bf16 product per chunk would be off by ~2**-9."""
    g_ = torch.Generator().manual_seed(2)
    rows, vocab, width = 96, 1000, 64
    g = torch.randn(rows, vocab, generator=g_).bfloat16().cuda()
    h = torch.randn(rows, width, generator=g_).cuda()  # fp32, as the decoder's output under autocast
    grad_w = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for part_g, part_h in zip(g.chunk(chunks), h.chunk(chunks), strict=True):
            grad_w = L._accumulate_weight_grad(grad_w, part_g, part_h, (vocab, width))
    assert grad_w.dtype == torch.float32 and grad_w.shape == (vocab, width)
    reference = g.double().t() @ h.bfloat16().double()
    torch.testing.assert_close(grad_w.double(), reference, rtol=1e-5, atol=1e-5)

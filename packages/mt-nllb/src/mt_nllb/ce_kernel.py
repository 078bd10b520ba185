"""The LM head's per-chunk loss and gradient as one Triton kernel (CUDA; speed.triton_ce).

loss.py forms each chunk's bf16 logits and needs, per row, the label-smoothed loss and
d(loss)/d(logits) = softmax - (1-eps)*onehot - eps/V. Compiled from torch ops (speed.compile_loss)
that is a row reduction and a pointwise pass over the flattened rows x 256k elements, which together
move ~1.6 TB/s on an H200 (scripts/ce_kernel_timing.py). Here one program per row reads its
logits twice, once for the running max, the exp-sum and the plain sum, then for the gradient, which
it writes over the logits in place: ~3.3 TB/s (4,608 rows: 4.45 -> 2.20 ms), no second chunk-sized
buffer, and the shipped step 63.65 -> 61.62 ms (BENCHMARKS.md, run 9).

Same value as loss._chunk_loss_and_grad: rows labelled IGNORE_INDEX count zero and get a zero
gradient (their logits are never read), columns past ``vocab`` (the head's alignment padding) get a
zero gradient.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ModuleNotFoundError:  # PyTorch's CPU builds come without Triton; speed.triton_ce is off there
    triton = tl = None

    def _jit(fn):
        return fn  # never launched: the module imports, the kernel needs Triton
else:
    _jit = triton.jit

BLOCK_COLUMNS = 4096
"""Columns per loop iteration, with 8 warps: with 2,048 x 4 the fastest of the settings that
scripts/ce_kernel_timing.py tries (1,024-16,384 columns, 4-16 warps) on an H200, at 4,608 and 8,192
rows of 256,256 columns (BENCHMARKS.md, run 9)."""
NUM_WARPS = 8


@_jit
def _smoothed_ce_rows(logits_ptr, labels_ptr, losses_ptr, row_stride, vocab, n_cols, epsilon,
                      ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    label = tl.load(labels_ptr + row)
    offsets = tl.arange(0, BLOCK)
    if label == ignore_index:
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            tl.store(row_ptr + cols, tl.zeros([BLOCK], tl.float32).to(logits_ptr.dtype.element_ty), mask=cols < n_cols)
        tl.store(losses_ptr + row, 0.0)
        return
    # Pass 1: running max m, sum of exp(x - m) (rescaled as m grows) and plain sum, over the vocabulary.
    m = float("-inf")
    exp_sum = 0.0
    plain_sum = 0.0
    for start in range(0, vocab, BLOCK):
        cols = start + offsets
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new_m = tl.maximum(m, tl.max(x, 0))
        exp_sum = exp_sum * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), 0)
        plain_sum += tl.sum(tl.where(cols < vocab, x, 0.0), 0)
        m = new_m
    lse = m + tl.log(exp_sum)
    target = tl.load(row_ptr + label).to(tl.float32)
    loss = (1.0 - epsilon) * (lse - target) + epsilon / vocab * (vocab * lse - plain_sum)
    tl.store(losses_ptr + row, loss)
    # Pass 2: the gradient, over every column (zero past the vocabulary), written in place.
    for start in range(0, n_cols, BLOCK):
        cols = start + offsets
        x = tl.load(row_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - epsilon / vocab - tl.where(cols == label, 1.0 - epsilon, 0.0)
        grad = tl.where(cols < vocab, grad, 0.0)
        tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < n_cols)


def chunk_loss_and_grad_(logits, y, epsilon: float, masked: bool, vocab: int, ignore_index: int = -100,
                         block: int = BLOCK_COLUMNS, num_warps: int = NUM_WARPS):
    """loss._chunk_loss_and_grad's (summed loss, gradient) with the gradient written over ``logits``
    (rows x columns, contiguous rows; columns >= vocab are alignment padding). ``y``: (rows, 1) labels.
    ``masked`` is implied: a row labelled ``ignore_index`` counts zero either way. ``block``: columns
    per iteration (a power of two; tests use small ones to run several) and ``num_warps`` per program:
    scripts/ce_kernel_timing.py times others."""
    del masked  # ignored rows are zero whether or not the caller expects any
    rows, n_cols = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("chunk_loss_and_grad_: the logits' rows must be contiguous")
    labels = y.reshape(-1).contiguous()
    losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
    if rows:
        _smoothed_ce_rows[(rows,)](logits, labels, losses, logits.stride(0), vocab, n_cols, float(epsilon),
                                   ignore_index, BLOCK=block, num_warps=num_warps)
    return losses.sum(), logits

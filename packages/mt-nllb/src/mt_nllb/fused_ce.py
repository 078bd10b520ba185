"""liger-kernel's fused linear + label-smoothed cross-entropy as the LM head's loss (speed.liger_ce).

Opt-in, CUDA only (Triton kernels), installed with `pip install 'mt-nllb[gpu]'`. The value is the
one loss.py computes (transformers' LabelSmoother): liger's kernel takes a row's loss as
(1 - eps) * (lse - x_y) + eps * (lse - sum of x over the vocabulary / V), which is
(1 - eps) * nll + eps * mean over the vocabulary of -log p. It masks the columns past V itself, so
NLLB's 256,206 needs no alignment. Like the chunked path it forms the gradients inside the forward,
chunk by chunk, accumulating the weight's in fp32 here.

Its forward reads the count of non-ignored targets back to the host (`.item()` in liger-kernel
0.8.5's ops/fused_linear_cross_entropy.py), on every call: a step using it cannot be captured as a
CUDA graph, so speed.liger_ce turns graphs off (GRAPH_BLOCKER, passed to core's resolve_speed).
"""

from __future__ import annotations

import importlib.util

import torch

from .loss import IGNORE_INDEX, head_rows

HAS_LIGER_KERNEL: bool = importlib.util.find_spec("liger_kernel") is not None
"""Detected once, without importing it (it pulls in Triton); tests override it."""

GRAPH_BLOCKER = "speed.liger_ce: liger-kernel's loss reads a count back to the host"


def check_usable(device) -> None:
    """One-line ConfigError where speed.liger_ce=true cannot run: liger-kernel missing, or no CUDA
    device. Called when the speed settings are resolved, before anything is read or written."""
    from trainstack.config import ConfigError

    if not HAS_LIGER_KERNEL:
        raise ConfigError("config key 'speed.liger_ce': liger-kernel is not installed: pip install 'mt-nllb[gpu]', "
                          "or set speed.liger_ce=false (the chunked loss)")
    if torch.device(device).type != "cuda":
        raise ConfigError(f"config key 'speed.liger_ce': liger-kernel's fused cross-entropy needs a CUDA device, "
                          f"and this run's device is {torch.device(device).type}: set speed.liger_ce=false "
                          "(the chunked loss)")


def chunk_mem_const(rows: int, width: int, vocab: int, chunk_rows: int) -> int:
    """liger's ``chunk_mem_const`` for chunks of at most ``chunk_rows`` rows, where one can be had.
    liger takes no chunk size: for a constant c it cuts ``rows`` into chunks of
    min(next_power_of_2(ceil(rows / ceil(vocab / (c * width)))), rows) rows, which at its default
    c = 1 is 16-row chunks at NLLB's width 1024 and 3,840 rows. This is the largest c whose chunks
    stay within ``chunk_rows`` (1 if none does)."""
    whole = -(-vocab // width)  # any c from here on makes one chunk of all the rows
    if rows <= chunk_rows:
        return max(1, whole)
    largest_pow2 = 1 << (chunk_rows.bit_length() - 1)  # chunks are powers of two
    need = -(-rows // largest_pow2)  # ceil(vocab / (c * width)) must reach this (>= 2 here)
    # ceil(vocab / (c * width)) >= need  <=>  c * width * (need - 1) < vocab
    return max(1, (vocab - 1) // (width * (need - 1)))


def liger_smoothed_ce(hidden, weight, labels, epsilon: float = 0.1, chunk_rows: int = 2048,
                      fixed_shapes: bool = False):
    """loss.chunked_smoothed_ce's contract with liger-kernel's kernel: hidden (B, T, D), weight (V, D),
    labels (B, T) with -100 for padding -> (mean loss over real tokens, number of real tokens as a
    tensor). Eager only the real rows enter (as in the chunked path); ``fixed_shapes`` (a compiled
    step) passes every row, the padded ones zeroed and ignored by liger's ignore_index."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    h, y, count = head_rows(hidden, labels, fixed_shapes)
    if h.shape[0] == 0:
        # liger divides by the row count when it sizes chunks; the empty product keeps the graph
        # (zero gradients), as the chunked path's loss of 0 does.
        return (h @ weight.t().to(h.dtype)).sum(), count
    loss = liger_fused_linear_cross_entropy(
        h, weight, y, ignore_index=IGNORE_INDEX, label_smoothing=float(epsilon),
        reduction="mean",  # over the non-ignored rows: our mean over real tokens
        accum_dtype=torch.float32,
        chunk_mem_const=chunk_mem_const(h.shape[0], weight.shape[1], weight.shape[0], int(chunk_rows)))
    return loss, count

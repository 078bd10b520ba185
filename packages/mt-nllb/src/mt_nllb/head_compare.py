"""The LM head's loss several ways on the same inputs: liger-kernel's fused linear CE (speed.liger_ce),
our chunked path (speed.chunked_ce) with its chunk math by torch ops and by the Triton kernel
(speed.triton_ce), and the unfused reference (full logits, loss.full_logits_smoothed_ce).

    mt-nllb bench --only fused-vs-chunked --head-batches 3       # one CUDA GPU, liger-kernel installed

Each path takes the same weight, hidden states and labels (batches shaped as the bench passes them:
the h100-80g profile's rows, the synthetic pairs' target lengths, padding labelled -100) and
returns its loss and the hidden and weight gradients; reported are the largest absolute and relative
differences between the paths, and each path's time and peak memory for one forward + backward.
liger and the chunked path run as training runs them (autocast in the run's precision, the real rows
only); the reference runs without autocast in ``reference_dtype`` (float32 on a GPU, float64 on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from . import loss as loss_mod
from .loss import IGNORE_INDEX, chunked_smoothed_ce, full_logits_smoothed_ce

HeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]
"""(hidden (B, T, D), weight (V, D), labels (B, T)) -> (mean loss over real tokens, real tokens)."""


def head_batches(target_lengths: list, width: int, vocab: int, seed: int, device) -> tuple[torch.Tensor, list]:
    """The LM head's weight (V, D) and one batch of (hidden (rows, T, D), labels (rows, T)) per array
    of ``target_lengths`` (a row's real tokens), each padded to its longest. Weight at NLLB's init
    scale (std 0.02), hidden states at unit scale (a layer norm's output), so the logits have a
    trained head's spread, not a saturated softmax."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, width, generator=g) * 0.02).to(device)
    batches = []
    for lengths in target_lengths:
        lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
        longest = int(lengths.max())
        labels = torch.randint(4, vocab, (len(lengths), longest), generator=g)
        labels[torch.arange(longest) >= lengths[:, None]] = IGNORE_INDEX
        hidden = torch.randn(len(lengths), longest, width, generator=g)
        batches.append((hidden.to(device), labels.to(device)))
    return weight, batches


def _chunked(epsilon: float, chunk_rows: int, triton_kernel: bool) -> HeadLoss:
    """The chunked path with its chunk math eager (torch ops) or by the Triton kernel, chosen at each
    call: the choice is global to loss.py, and two such paths take turns."""
    def run(h, w, y):
        loss_mod.configure(compile_loss=False, triton_kernel=triton_kernel)
        return chunked_smoothed_ce(h, w, y, epsilon, chunk_rows)
    return run


def head_paths(epsilon: float, chunk_rows: int, liger: bool, reference_dtype: torch.dtype,
               triton_kernel: bool = False) -> dict[str, HeadLoss]:
    """The paths compared, by name; "reference" last, the one the others are measured against.
    ``triton_kernel``: also the chunked path with speed.triton_ce's kernel ("chunked-triton")."""
    paths: dict[str, HeadLoss] = {}
    if liger:
        from .fused_ce import liger_smoothed_ce

        paths["liger"] = lambda h, w, y: liger_smoothed_ce(h, w, y, epsilon, chunk_rows)
    if triton_kernel:
        paths["chunked-triton"] = _chunked(epsilon, chunk_rows, True)
    paths["chunked"] = _chunked(epsilon, chunk_rows, False)

    def reference(h, w, y):
        with torch.autocast(h.device.type, enabled=False):
            h, w = h.to(reference_dtype), w.to(reference_dtype)
            return full_logits_smoothed_ce(h @ w.t(), y, epsilon)

    paths["reference"] = reference
    return paths


def run_path(fn: HeadLoss, hidden, weight, labels, autocast=None) -> dict:
    """One forward + backward of ``fn`` on fresh leaves: loss, gradients (float64 on the CPU for the
    comparison), seconds, and on CUDA the peak memory it allocated above its inputs."""
    cuda = hidden.device.type == "cuda"
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with autocast() if autocast is not None else torch.autocast(hidden.device.type, enabled=False):
        loss, count = fn(h, w, labels)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    return {"loss": float(loss.detach()), "count": int(count), "seconds": seconds, "peak_gib": peak,
            "grad_hidden": h.grad.detach().double().cpu(), "grad_weight": w.grad.detach().double().cpu()}


def differences(a: dict, b: dict) -> dict:
    """Largest differences of run ``a`` from run ``b``; relative ones are to ``b``'s largest magnitude."""
    out = {"loss_abs": abs(a["loss"] - b["loss"]), "loss_rel": abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-30)}
    for key in ("grad_hidden", "grad_weight"):
        diff = float((a[key] - b[key]).abs().max())
        out[f"{key}_max_abs"] = diff
        out[f"{key}_max_rel"] = diff / max(float(b[key].abs().max()), 1e-30)
    return out


def compare_heads(weight, batches, paths: dict[str, HeadLoss], autocast=None, repeats: int = 1) -> dict:
    """Every path on every batch: the largest difference of each pair of paths over the batches
    (JSON keys "A_vs_B"), and per path its mean time and largest peak memory over ``repeats`` runs a
    batch after one untimed run (Triton and cuBLAS pick their kernels in the first). A path that runs
    out of GPU memory (the full logits' reference at NLLB's vocabulary, on a small card) is reported
    as skipped, and the comparison goes on without it. ``autocast``: a context factory for every path
    but the reference (which turns it off itself)."""
    names = list(paths)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    worst: dict[str, dict] = {}
    timing: dict[str, dict] = {n: {"seconds": [], "peak_gib": []} for n in names}
    skipped: dict[str, str] = {}
    for hidden, labels in batches:
        runs = {}
        for name in names:
            if name in skipped:
                continue
            try:
                run_path(paths[name], hidden, weight, labels, autocast)  # untimed first run
                for _ in range(repeats):
                    runs[name] = run_path(paths[name], hidden, weight, labels, autocast)
                    timing[name]["seconds"].append(runs[name]["seconds"])
                    timing[name]["peak_gib"].append(runs[name]["peak_gib"])
            except torch.cuda.OutOfMemoryError as e:
                skipped[name] = f"out of memory: {str(e).splitlines()[0][:200]}"
                runs.pop(name, None)
                torch.cuda.empty_cache()
        for a, b in pairs:
            if a in runs and b in runs:
                d = differences(runs[a], runs[b])
                key = f"{a}_vs_{b}"
                worst[key] = {k: max(v, worst.get(key, {}).get(k, 0.0)) for k, v in d.items()}
    per_path = {}
    for name in names:
        if timing[name]["seconds"]:
            peaks = [p for p in timing[name]["peak_gib"] if p is not None]
            per_path[name] = {"mean_ms": 1000 * sum(timing[name]["seconds"]) / len(timing[name]["seconds"]),
                              "peak_gib": max(peaks) if peaks else None}
    return {"paths": names, "differences": worst, "per_path": per_path, "skipped": skipped,
            "rows": [int(labels.ne(IGNORE_INDEX).sum()) for _, labels in batches],
            "shapes": [list(labels.shape) for _, labels in batches]}

"""Throughput, MFU, FLOPs per token, and BLEU/chrF via sacrebleu (`trainstack-core[metrics]`).

MFU = achieved model FLOP/s / the GPU's dense peak. The peak is the bf16 tensor-core figure with
FP32 accumulate, no sparsity, because that is how PyTorch runs autocast matmuls; GPUs without bf16
use their fp16 tensor figure (what autocast uses there).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import torch

from trainstack.extras import require
from trainstack.hardware import GPUInfo
from trainstack.memory import gpu_peak_gib

PEAK_FLOPS_ENV = "TRAINSTACK_PEAK_FLOPS"  # e.g. "1.2e14" for a GPU missing from the table

# (regex on torch's device name, dense peak FLOP/s). First match wins, so specific names come first.
# Sources: NVIDIA datasheets (datacenter: the "with sparsity" figure halved) and the architecture
# whitepapers (GeForce: "FP16 Tensor TFLOPS with FP32 Accumulate", half the FP16-accumulate rate).
_PEAK_TABLE: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989e12),  # H100 SXM silicon
    (r"\bH200\b", 989e12),  # H200 datasheet: BF16 1979 TFLOPS sparse
    (r"\bH100\b.*\bPCIe\b", 756e12),  # H100 PCIe datasheet: 1513 sparse
    (r"\bH100\b.*\bNVL\b", 835e12),  # H100 NVL datasheet: 1671 sparse
    (r"\bH100\b", 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3") datasheet: 1979 sparse
    (r"\bA100\b", 312e12),  # A100 datasheet: BF16 312 dense (SXM and PCIe)
    (r"\bL40S\b", 362e12),  # L40S datasheet: 733 sparse
    (r"\bL40\b", 181e12),  # L40 datasheet: 362 sparse
    (r"\bL4\b", 121e12),  # L4 datasheet: 242 sparse
    (r"\bA10\b", 125e12),  # A10 datasheet: BF16 125 dense (A10G is a different part: not listed)
    (r"RTX 4090\b", 165.2e12),  # Ada whitepaper, FP32 accumulate
    (r"RTX 4080 SUPER\b", 104.4e12),  # 80 SMs x 2550 MHz x 512 FLOP/clk (Ada GeForce, FP32 accumulate)
    (r"RTX 4080\b", 97.5e12),  # Ada whitepaper, FP32 accumulate
    (r"RTX 3090\b", 71e12),  # Ampere GA102 whitepaper, FP32 accumulate
    (r"RTX 3080 Ti\b", 68.2e12),  # 80 SMs x 1665 MHz x 512 FLOP/clk
    (r"RTX 3080\b", 59.5e12),  # Ampere GA102 whitepaper, FP32 accumulate
    # Turing has no bf16: fp16 tensor peak, FP32 accumulate (the FP16-accumulate figure, 89.2 for the
    # 2080 Super, is not what cuBLAS runs for autocast and would halve the MFU we report).
    (r"RTX 2080 SUPER\b", 44.6e12),  # 48 SMs x 1815 MHz x 512 FLOP/clk
    (r"RTX 2080 Ti\b", 56.9e12),  # Turing whitepaper, FP32 accumulate
    (r"\bV100\b.*\bPCIE\b", 112e12),  # V100 datasheet, fp16 tensor
    (r"\bV100\b", 125e12),  # V100 SXM2 datasheet, fp16 tensor
    (r"\bT4\b", 65e12),  # T4 datasheet, fp16 tensor
)


def peak_bf16_flops(gpu: GPUInfo | None) -> float | None:
    """Dense bf16 peak FLOP/s of ``gpu`` (fp16 for pre-Ampere), or None if unknown / no GPU.

    The env var TRAINSTACK_PEAK_FLOPS overrides the table (for GPUs it lacks or clocks that differ).
    """
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        return float(override)
    if gpu is None:
        return None
    for pattern, flops in _PEAK_TABLE:
        if re.search(pattern, gpu.name, flags=re.IGNORECASE):
            return flops
    return None


def transformer_flops_per_token(n_params, n_layers, d_model, seq_len, causal=False) -> float:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus attention scores
    and values, 12 * n_layers * d_model * seq_len (PaLM, appendix B). Causal attention kernels skip
    the masked half, so ``causal=True`` counts half of the attention term."""
    attention = 12.0 * n_layers * d_model * seq_len
    if causal:
        attention /= 2
    return 6.0 * n_params + attention


def _to_int(x) -> int:
    # A tensor here costs one host sync, which is fine at log cadence (the caller's contract).
    return int(x.item()) if isinstance(x, torch.Tensor) else int(x)


class ThroughputMeter:
    """Rates between consecutive ``update`` calls, plus run totals.

    Call ``update(real_tokens, samples)`` at log cadence with the counts accumulated since the last
    call; real tokens exclude padding. Call ``restart_clock()`` after eval or checkpointing so that
    time is not charged to training.
    """

    def __init__(self, flops_per_token: float | None = None, gpu: GPUInfo | None = None):
        self.flops_per_token = flops_per_token
        self.gpu = gpu
        self.peak_flops = peak_bf16_flops(gpu)
        self.total_tokens = 0
        self.total_samples = 0
        self.total_seconds = 0.0
        self._last = {"tokens": 0, "samples": 0, "seconds": 0.0}
        self._t0 = time.perf_counter()

    def restart_clock(self) -> None:
        self._t0 = time.perf_counter()

    def update(self, real_tokens, samples) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # queued GPU work belongs to this interval
        now = time.perf_counter()
        seconds = now - self._t0
        self._t0 = now
        tokens, samples = _to_int(real_tokens), _to_int(samples)
        self._last = {"tokens": tokens, "samples": samples, "seconds": seconds}
        self.total_tokens += tokens
        self.total_samples += samples
        self.total_seconds += seconds

    def _mfu(self, tokens_per_s: float) -> float | None:
        if not self.flops_per_token or not self.peak_flops:
            return None
        return tokens_per_s * self.flops_per_token / self.peak_flops

    def summary(self) -> dict:
        """Rates over the last interval; ``avg_*`` over the whole run."""
        s = self._last["seconds"]
        tps = self._last["tokens"] / s if s > 0 else 0.0
        sps = self._last["samples"] / s if s > 0 else 0.0
        avg_tps = self.total_tokens / self.total_seconds if self.total_seconds > 0 else 0.0
        return {
            "tokens_per_s": tps,
            "samples_per_s": sps,
            "mfu": self._mfu(tps),
            "peak_memory_gib": gpu_peak_gib(),
            "avg_tokens_per_s": avg_tps,
            "avg_mfu": self._mfu(avg_tps),
            "total_tokens": self.total_tokens,
        }


@dataclass
class BleuResult:
    score: float
    signature: str
    detail: str = ""  # sacrebleu's one-line summary (n-gram precisions, BP, lengths)


@dataclass
class ChrfResult:
    score: float
    signature: str
    detail: str = ""


def _reference_streams(hypotheses: list[str], references) -> list[list[str]]:
    """sacrebleu wants one list per reference *stream*; we take references per hypothesis:
    ``["ref", ...]`` (one each) or ``[["ref a", "ref b"], ...]`` (several each, same count)."""
    hypotheses = list(hypotheses)
    references = list(references)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references or isinstance(references[0], str):
        return [references]
    counts = {len(r) for r in references}
    if len(counts) != 1:
        raise ValueError(f"every hypothesis needs the same number of references, got counts {sorted(counts)}")
    return [list(stream) for stream in zip(*references, strict=True)]


def bleu(hypotheses: list[str], references, tokenize: str = "13a") -> BleuResult:
    """Corpus BLEU; ``tokenize="zh"`` for Chinese, "ja-mecab" etc. as sacrebleu supports."""
    metric = require("sacrebleu.metrics", "metrics", "BLEU").BLEU(tokenize=tokenize)
    res = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return BleuResult(score=float(res.score), signature=str(metric.get_signature()), detail=str(res))


def chrf(hypotheses, references, word_order: int = 0) -> ChrfResult:
    """Corpus chrF; ``word_order=2`` gives chrF++."""
    metric = require("sacrebleu.metrics", "metrics", "chrF").CHRF(word_order=word_order)
    res = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return ChrfResult(score=float(res.score), signature=str(metric.get_signature()), detail=str(res))

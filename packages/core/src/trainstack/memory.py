"""Memory reports (process RSS, GPU allocated/reserved/peak) and an opt-in cleanup policy.

Calling ``gc.collect()`` and ``torch.cuda.empty_cache()`` every step costs time and usually
buys nothing: the caching allocator reuses freed blocks anyway. It helps only when something
fragments memory (variable-length batches near the memory limit, eval passes with other shapes),
so the policy is off unless asked for.
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass

import torch

GIB = 1024**3


@dataclass
class MemoryReport:
    rss_gib: float
    gpu_allocated_gib: float
    gpu_reserved_gib: float
    gpu_peak_gib: float

    def as_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def rss_gib() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / GIB
    except ImportError:  # Linux fallback: resident pages from /proc
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def _cuda_in_use() -> bool:
    # Querying memory stats must not initialise CUDA in a process that never used it.
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def memory_report(device=None) -> MemoryReport:
    """GPU figures are 0.0 when CUDA is not in use; ``device`` defaults to the current device."""
    if _cuda_in_use():
        alloc = torch.cuda.memory_allocated(device) / GIB
        reserved = torch.cuda.memory_reserved(device) / GIB
        peak = torch.cuda.max_memory_allocated(device) / GIB
    else:
        alloc = reserved = peak = 0.0
    return MemoryReport(rss_gib=rss_gib(), gpu_allocated_gib=alloc, gpu_reserved_gib=reserved, gpu_peak_gib=peak)


def gpu_peak_gib(device=None) -> float | None:
    """Peak allocated GPU memory since the last reset, or None without CUDA."""
    return torch.cuda.max_memory_allocated(device) / GIB if _cuda_in_use() else None


def gpu_peak_reserved_gib(device=None) -> float | None:
    """Peak memory the caching allocator held since the last reset (what a card must have), or None."""
    return torch.cuda.max_memory_reserved(device) / GIB if _cuda_in_use() else None


def cap_cuda_memory(gib: float | None, device=0) -> None:
    """Let this process's caching allocator reserve at most ``gib`` GiB of ``device``, as on a card that
    size (the CUDA context is not counted: stay ~0.5 GiB below the card); None or 0 lifts the cap."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GIB / total) if gib else 1.0, device)


def reset_peak_memory(device=None) -> None:
    if _cuda_in_use():
        torch.cuda.reset_peak_memory_stats(device)


class CleanupPolicy:
    """``maybe_cleanup(step)`` runs gc + empty_cache every ``every_steps`` steps; 0 means never."""

    def __init__(self, every_steps: int = 0):
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self.every_steps = every_steps

    def maybe_cleanup(self, step: int) -> bool:
        if self.every_steps == 0 or step <= 0 or step % self.every_steps != 0:
            return False
        gc.collect()
        if _cuda_in_use():
            torch.cuda.empty_cache()
        return True

"""Where a training step's time goes: a few steps under torch.profiler, kernels grouped by what they do.

    from trainstack.profiling import profile_steps
    for _ in range(warmup):
        step()                                    # compile, autotune and allocate first
    table = profile_steps(step, steps=3)
    print(table.format())                         # ms per step by category, then the top kernels
    json.dump(table.as_dict(), open("kernels.json", "w"))

On a GPU the rows are CUDA kernels (device time); on a CPU they are the operators' own (self) CPU
time, so the table shows the harness works, not how a GPU would spend its time. Categories come
from kernel names (``kernel_category``): cuBLAS/CUTLASS GEMMs, flash/FlexAttention/cuDNN attention
forward and backward, layer norms, Inductor's fused pointwise and reduction kernels, the
optimizer's multi-tensor kernels, NCCL, copies. A fused Inductor kernel counts once, under the
first rule its name matches (a layer norm fused with a residual add is a norm).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

CATEGORIES = ("matmul", "attention fwd", "attention bwd", "norms", "elementwise", "optimizer", "communication",
              "memory", "other")

# Attention kernels by name, then forward or backward by a second fragment: flash-attn and PyTorch's
# flash (flash_fwd/flash_bwd), FlexAttention (triton_tem_fused_flex_attention[_backward]), the
# memory-efficient kernels (fmha_cutlassF/B), cuDNN's (..._sdpa_..._fprop/bprop), and on a CPU the
# aten operators' names.
_ATTENTION = ("flash_fwd", "flash_bwd", "flashattn", "flex_attention", "fmha", "sdpa", "scaled_dot_product",
              "efficient_attention", "flash_attention", "varlen_attn")
_BACKWARD = ("bwd", "backward", "bprop", "cutlassb")
# (category, lower-case name fragments), first match wins: the optimizer's and the norms' kernels before
# the generic pointwise and reduction kernels they are fused into.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("communication", ("nccl", "allreduce", "all_reduce", "allgather", "reducescatter", "c10d::")),
    ("memory", ("memcpy", "memset")),
    ("optimizer", ("multi_tensor_apply", "fused_adam", "fusedadam", "adam", "_foreach_", "optimizer.")),
    ("norms", ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "gammabeta")),
    ("matmul", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitkreduce", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::baddbmm", "triton_tem_fused_mm", "triton_tem_fused_addmm")),
    ("elementwise", ("elementwise", "vectorized", "triton_poi", "triton_per", "triton_red", "reduce_kernel", "gelu",
                     "softmax", "nll_loss", "cross_entropy", "index_", "scatter", "gather", "catarray",
                     # the CPU's names for the same work (a GPU runs them as the kernels above)
                     "aten::add", "aten::mul", "aten::sub", "aten::div", "aten::neg", "aten::copy_", "aten::fill_",
                     "aten::sum", "aten::mean", "aten::where", "aten::masked_fill", "aten::cat", "aten::cos",
                     "aten::sin", "aten::sqrt", "aten::exp")),
)


def kernel_category(name: str) -> str:
    """The category of a CUDA kernel or operator name (one of ``CATEGORIES``)."""
    low = name.lower()
    if any(f in low for f in _ATTENTION):
        return "attention bwd" if any(f in low for f in _BACKWARD) else "attention fwd"
    for category, fragments in _RULES:
        if any(f in low for f in fragments):
            return category
    return "other"


@dataclass
class KernelRow:
    name: str
    category: str
    calls: int
    seconds: float
    """Summed over the profiled steps."""


@dataclass
class KernelProfile:
    device: str
    """"cuda": rows are kernels, device time; "cpu": rows are operators, their own CPU time."""
    steps: int
    wall_seconds: float
    """Host time of the profiled steps, profiler overhead included."""
    rows: list[KernelRow]
    """Most time first."""
    host_calls: dict[str, float] = field(default_factory=dict)
    """Host seconds (summed over the steps) in CUDA runtime calls and the profiler's driver events
    ("Command Buffer Full": a launch waited for room in the GPU's queue), most first. Where the host
    waits: a synchronize or a copy from pageable memory means the host holds the GPU back; a full
    command buffer means the GPU sets the pace."""

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def by_category(self) -> dict[str, float]:
        """Seconds per category over the profiled steps, every category present, in ``CATEGORIES`` order."""
        out = dict.fromkeys(CATEGORIES, 0.0)
        for r in self.rows:
            out[r.category] += r.seconds
        return out

    def format(self, top: int = 15) -> str:
        total = self.total_seconds or float("nan")
        what = "CUDA kernel time" if self.device == "cuda" else "CPU operator self time (no GPU: not a GPU profile)"
        busy = self.total_seconds / self.wall_seconds if self.wall_seconds else float("nan")
        lines = [f"{what} over {self.steps} steps: {1000 * self.total_seconds / self.steps:.2f} ms/step; "
                 f"wall {1000 * self.wall_seconds / self.steps:.2f} ms/step (busy {busy:.0%} of wall)",
                 f"{'category':<14} {'ms/step':>9} {'share':>6}"]
        for category, seconds in sorted(self.by_category().items(), key=lambda kv: -kv[1]):
            lines.append(f"{category:<14} {1000 * seconds / self.steps:>9.2f} {seconds / total:>6.1%}")
        if self.host_calls:
            lines.append("host, in CUDA calls (ms/step): " + ", ".join(
                f"{name} {1000 * seconds / self.steps:.2f}" for name, seconds in list(self.host_calls.items())[:5]))
        lines.append(f"top {min(top, len(self.rows))} of {len(self.rows)}:")
        lines.append(f"{'ms/step':>9} {'share':>6} {'calls':>6}  {'category':<14} name")
        for r in self.rows[:top]:
            name = r.name if len(r.name) <= 90 else r.name[:87] + "..."
            lines.append(f"{1000 * r.seconds / self.steps:>9.2f} {r.seconds / total:>6.1%} {r.calls:>6}  "
                         f"{r.category:<14} {name}")
        return "\n".join(lines)

    def as_dict(self, top: int = 50) -> dict:
        per_step = lambda s: round(1000 * s / self.steps, 4)  # noqa: E731
        return {"device": self.device, "steps": self.steps, "wall_ms_per_step": per_step(self.wall_seconds),
                "busy_ms_per_step": per_step(self.total_seconds),
                "ms_per_step_by_category": {k: per_step(v) for k, v in self.by_category().items()},
                "top": [{"name": r.name, "category": r.category, "calls": r.calls, "ms_per_step": per_step(r.seconds)}
                        for r in self.rows[:top]],
                "host_ms_per_step_in_cuda_calls": {k: per_step(v) for k, v in self.host_calls.items()}}


def profile_steps(step_fn: Callable[[], object], *, steps: int = 3, trace_path=None) -> KernelProfile:
    """Run ``step_fn`` ``steps`` times under torch.profiler and group the time. Warm up first (the
    first steps compile and allocate). ``trace_path``: also write a Chrome trace (``.json.gz`` compresses)."""
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step_fn()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    return kernel_profile(prof, steps=steps, wall_seconds=wall, cuda=cuda)


def kernel_profile(prof, *, steps: int, wall_seconds: float, cuda: bool) -> KernelProfile:
    """The grouped table of a finished ``torch.profiler.profile`` over ``steps`` steps (for callers
    that run the profiler themselves, as a Trainer callback does)."""
    from torch.autograd import DeviceType

    rows, host_calls = [], {}
    for evt in prof.key_averages():
        if evt.device_type == DeviceType.CPU and _is_host_cuda_call(evt.key) and evt.self_cpu_time_total > 0:
            host_calls[evt.key] = evt.self_cpu_time_total / 1e6
        if cuda:
            # a user annotation (the optimizer's "Optimizer.step#AdamW.step" range) also shows on the GPU's
            # timeline, spanning kernels already counted: not a kernel of its own (torch's own tables skip it too)
            if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
                continue
            us = getattr(evt, "self_device_time_total", None)
            us = evt.self_cuda_time_total if us is None else us
        else:
            if evt.device_type != DeviceType.CPU or evt.key.startswith("ProfilerStep"):
                continue
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append(KernelRow(evt.key, kernel_category(evt.key), int(evt.count), us / 1e6))
    rows.sort(key=lambda r: -r.seconds)
    host_calls = dict(sorted(host_calls.items(), key=lambda kv: -kv[1]))
    return KernelProfile("cuda" if cuda else "cpu", steps, wall_seconds, rows, host_calls)


def _is_host_cuda_call(name: str) -> bool:
    """A CUDA runtime call (cudaGraphLaunch, cudaStreamSynchronize, ...) or the profiler's event for a
    launch that waited for room in the GPU's queue, as torch.profiler names them on the host."""
    return name == "Command Buffer Full" or (name.startswith("cu") and not name.startswith("cudnn"))

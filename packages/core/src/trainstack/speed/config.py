"""The ``speed`` config section and its resolution: what the fast path does on this run, and why.

    speed = resolve_speed(cfg.speed, device, precision, world_size=1)
    print(speed.reason)   # "speed: compile on, CUDA graphs on, buckets 16,32,64 (CUDA, one process)"

``auto`` turns each part on with CUDA and off on CPU, where compilation costs more than it saves on
small models; CPU tests force ``compile: true`` on a tiny model. CUDA graphs need fixed shapes, one
process, and no GradScaler (fp16 loss scaling reads the gradients' finiteness back on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .buckets import LengthBuckets

Switch = Literal["auto", True, False]


@dataclass
class SpeedConfig:
    compile: Switch = "auto"
    """torch.compile the model's forward and loss together, one graph per input shape. auto: on with CUDA."""
    cuda_graphs: Switch = "auto"
    """Capture each fixed-shape micro-step (forward, loss, backward) and the optimizer step (clip,
    update, zero) as CUDA graphs and replay them: one launch instead of thousands. auto: on with CUDA,
    one process and no fp16 loss scaling; true elsewhere is an error."""
    length_buckets: str = "pow2"
    """Padded lengths batches are mapped onto: pow2 (16, 32, 64, ... up to the maximum length),
    multiple:N, a comma list (48,96,128), or off (each batch keeps its own length)."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode. CUDA graphs come from cuda_graphs (our capture, which also covers the
    optimizer step), not from the mode."""
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """torch.compile backend: inductor generates fused kernels; aot_eager and eager trace the same
    graphs without generating code (for finding a compile problem, and for fast CPU tests)."""
    compile_dynamic: bool = False
    """Compile once with symbolic batch and length sizes instead of once per input shape: one
    compilation (a large model's takes a minute or more) serves every length bucket, and CUDA graphs
    still capture each shape. Kernels lose their shape specialisation, which costs little next to
    matmuls; a model whose code branches on a size recompiles where it does."""
    warmup_runs: int = 1
    """Eager (or compiled, uncaptured) runs of each new shape before it is captured: they compile,
    allocate the gradients and the optimizer state, and train as normal steps."""
    whole_step_graphs: bool = True
    """With CUDA graphs, one process and one micro-batch per optimizer step (grad_accum_steps 1):
    capture forward, backward and the optimizer update of each shape as one graph. The backward then
    writes each gradient where a separate optimizer graph would need it added into a static buffer
    (one pass over every parameter, plus zeroing them, a step); false keeps the two graphs."""

    def __post_init__(self):
        if self.warmup_runs < 1:
            raise ValueError(f"speed.warmup_runs must be >= 1, got {self.warmup_runs}")
        LengthBuckets.parse(self.length_buckets, 1 << 20)  # fail at start-up on a bad spec


@dataclass(frozen=True)
class Speed:
    compile: bool
    cuda_graphs: bool
    compile_mode: str
    compile_backend: str
    warmup_runs: int
    length_buckets: str
    reason: str
    """One line, printed at start-up."""
    compile_dynamic: bool = False
    whole_step_graphs: bool = True
    """One graph per shape for forward, backward and update where the step has one micro-batch."""

    def compile_options(self) -> dict:
        """torch.compile's keyword arguments for this run (Inductor alone takes a mode)."""
        return {"dynamic": self.compile_dynamic, "backend": self.compile_backend,
                "mode": self.compile_mode if self.compile_backend == "inductor" else None}

    def buckets(self, max_len: int) -> LengthBuckets | None:
        return LengthBuckets.parse(self.length_buckets, max_len)

    @property
    def fast(self) -> bool:
        return self.compile or self.cuda_graphs


class SpeedError(ValueError):
    """A fast-path setting that cannot work here (CUDA graphs asked for on CPU, say)."""


def resolve_speed(cfg: SpeedConfig | None, device, *, use_grad_scaler: bool = False, world_size: int = 1,
                  max_len: int | None = None, graph_blockers: Sequence[str] = ()) -> Speed:
    """``graph_blockers``: what in the task's own step cannot be captured (a kernel that reads a value
    back to the host, say), one short phrase each. With cuda_graphs auto they turn graphs off and the
    reason line names them; with cuda_graphs true they are an error, as the built-in blockers are."""
    cfg = cfg or SpeedConfig()
    device = torch.device(device)
    cuda = device.type == "cuda"
    compile_on = cuda if cfg.compile == "auto" else bool(cfg.compile)

    blockers = []
    if not cuda:
        blockers.append("no CUDA device")
    if use_grad_scaler:
        blockers.append("fp16 loss scaling")
    blockers.extend(graph_blockers)
    if cfg.cuda_graphs is True and blockers:
        raise SpeedError(f"speed.cuda_graphs=true cannot work here ({'; '.join(blockers)}): "
                         "use speed.cuda_graphs=auto or false")
    # Several processes: graphs only when asked (speed.cuda_graphs=true). The replayed backward runs no
    # DDP hooks, so the gradients are all-reduced after it, without DDP's overlap with the backward:
    # not measured on GPUs yet, so "auto" keeps DDP's own step (compiled) there.
    several = f"{world_size} processes (gradients all-reduced after the captured backward, asked for)"
    if world_size > 1 and cfg.cuda_graphs == "auto":
        blockers.append(f"{world_size} processes (DDP's step; speed.cuda_graphs=true to capture)")
    graphs_on = not blockers if cfg.cuda_graphs == "auto" else bool(cfg.cuda_graphs)

    compile_part = ("on, dynamic shapes" if cfg.compile_dynamic else "on") if compile_on else "off"
    parts = [f"compile {compile_part}",
             f"CUDA graphs {'on' if graphs_on else 'off'}"]
    if max_len is not None and (compile_on or graphs_on):  # eager batches keep their own lengths
        b = LengthBuckets.parse(cfg.length_buckets, max_len)
        parts.append(f"length buckets {b.describe() if b else 'off'}")
    why = "CUDA" if cuda else "CPU"
    if not graphs_on and blockers and cfg.cuda_graphs == "auto" and cuda:
        why += f"; no graphs: {'; '.join(blockers)}"
    if graphs_on and world_size > 1:
        why += f"; {several}"
    return Speed(compile=compile_on, cuda_graphs=graphs_on, compile_mode=cfg.compile_mode,
                 compile_backend=cfg.compile_backend, warmup_runs=cfg.warmup_runs, length_buckets=cfg.length_buckets,
                 reason=f"speed: {', '.join(parts)} ({why})", compile_dynamic=compile_on and cfg.compile_dynamic,
                 whole_step_graphs=graphs_on and cfg.whole_step_graphs)

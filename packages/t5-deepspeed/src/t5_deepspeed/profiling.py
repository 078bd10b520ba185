"""Where a training step's time goes: `t5-deepspeed bench --profile_steps N`.

N optimizer steps after the warm-up run under torch.profiler (GPU kernels and CPU ops) and cProfile
(the Python functions of the Trainer and DeepSpeed), on rank 0. Written to OUTPUT_DIR/profile/:
    summary.json   wall ms per step, GPU kernel ms per step (busy time), the share the GPU was busy,
                   kernel ms per step by category (core's trainstack.profiling)
    kernels.txt    kernel time by category, then the top kernels (CPU operators without a GPU)
    host.txt       Python functions by cumulative time, then by their own time (cProfile)
A step whose GPU is busy for a small share of its wall time is bound by the host: the host table
says which code holds it.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import time
from pathlib import Path

from transformers import TrainerCallback


class StepProfileCallback(TrainerCallback):
    def __init__(self, start_after_step: int, steps: int, out_dir):
        self.start_after_step, self.steps, self.out_dir = start_after_step, steps, Path(out_dir)
        self.profiler = self.host = None
        self.rank0 = os.environ.get("RANK", "0") == "0"

    def _sync(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.rank0 or self.steps <= 0:
            return
        if state.global_step == self.start_after_step:
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._sync()
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.host = cProfile.Profile()
            self.t0 = time.perf_counter()
            self.host.enable()
        elif self.profiler is not None and state.global_step == self.start_after_step + self.steps:
            self.host.disable()
            self._sync()
            wall_s = time.perf_counter() - self.t0
            self.profiler.__exit__(None, None, None)
            self._write(wall_s)
            self.profiler = None

    def _write(self, wall_s: float) -> None:
        import torch
        from trainstack.profiling import kernel_profile

        self.out_dir.mkdir(parents=True, exist_ok=True)
        on_gpu = torch.cuda.is_available()
        table = kernel_profile(self.profiler, steps=self.steps, wall_seconds=wall_s, cuda=on_gpu)
        (self.out_dir / "kernels.txt").write_text(table.format(top=40) + "\n")
        text = io.StringIO()
        stats = pstats.Stats(self.host, stream=text)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)  # where the host itself spends the time
        (self.out_dir / "host.txt").write_text(text.getvalue())
        grouped = table.as_dict()
        summary = {"steps": self.steps, "wall_ms_per_step": round(grouped["wall_ms_per_step"], 2)}
        if on_gpu:
            summary.update(gpu_kernel_ms_per_step=round(grouped["busy_ms_per_step"], 2),
                           gpu_busy_share=round(grouped["busy_ms_per_step"] / grouped["wall_ms_per_step"], 3),
                           ms_per_step_by_category=grouped["ms_per_step_by_category"])
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))

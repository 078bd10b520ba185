"""Trainer add-ons: JSONL log, real-token counting, the optimizer line, and the timing used by
`t5-deepspeed bench`."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

# The Trainer's names for what core's fit logs under its own (trainstack report reads core's names).
CORE_NAMES = {"learning_rate": "lr"}


class JsonlLogCallback(TrainerCallback):
    """Every Trainer log record as one JSON line in OUTPUT_DIR/log.jsonl (rank 0 only), with core's
    field names where the Trainer has its own (learning_rate -> lr), and on training records the memory
    fields (rss_gib, gpu_*_gib) and, given the token counter, real (non-pad) tokens_per_s of this rank
    since the previous record, as core's fit writes them. The loader collates a batch or two ahead of
    the step, so a window's count is off by at most that much."""

    def __init__(self, path, counter: TokenCountingCollator | None = None):
        self.path = Path(path)
        self.counter = counter
        self.since = None  # (time, real tokens) at the previous training record

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        for k, v in logs.items():
            record[CORE_NAMES.get(k, k)] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
        if "loss" in logs:
            from trainstack.memory import memory_report

            record.update(memory_report().as_dict())
            if self.counter is not None:
                now, tokens = time.perf_counter(), self.counter.real_tokens
                if self.since is not None and now > self.since[0]:
                    record["tokens_per_s"] = round((tokens - self.since[1]) / (now - self.since[0]), 1)
                self.since = (now, tokens)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class OptimizerReportCallback(TrainerCallback):
    """Logs once, when training starts, which optimizer implementation runs ("optimizer: DeepSpeed's
    DeepSpeedZeroOptimizer over torch.optim.AdamW fused (...)", core's describe_optimizer). Attach the
    trainer after constructing it: transformers 5 hands callbacks only an optimizer given at
    construction (None when the Trainer or DeepSpeed builds it, which happens inside train())."""

    def __init__(self):
        self.trainer = None
        self.description: str | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        from trainstack.optim import describe_optimizer

        optimizer = getattr(self.trainer, "optimizer", None) or optimizer
        if optimizer is None:
            return
        self.description = describe_optimizer(optimizer)
        if state.is_world_process_zero:
            logging.getLogger("t5_deepspeed").info("optimizer: %s", self.description)


class TokenCountingCollator:
    """Wraps a collator and counts real (non-pad) source and target tokens of each training batch.

    Counted on the CPU tensors the collator just built, before they move to the GPU: no host sync.
    """

    def __init__(self, collator):
        self.collator = collator
        self.real_tokens = 0
        self.source_tokens = 0
        self.padded_tokens = 0
        self.samples = 0

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch["attention_mask"]
        labels = batch["labels"]
        source = int(mask.sum())
        self.source_tokens += source
        self.real_tokens += source + int((labels != -100).sum())
        self.padded_tokens += mask.numel() + labels.numel()
        self.samples += mask.shape[0]
        return batch


class BenchCallback(TrainerCallback):
    """Times optimizer steps after `warmup_steps` and writes a core BenchResult as JSON."""

    def __init__(self, counter: TokenCountingCollator, warmup_steps: int, out_json, precision: str, n_params: int,
                 optimizer_report: OptimizerReportCallback | None = None, stop_after_step: int | None = None,
                 flops=None):
        """``stop_after_step``: the last timed step (default: the run's last); ``flops``: a
        flops.ModelFlops for the MFU figure."""
        self.counter, self.warmup_steps, self.out_json = counter, warmup_steps, Path(out_json)
        self.precision, self.n_params = precision, n_params
        self.optimizer_report = optimizer_report
        self.stop_after_step, self.flops = stop_after_step, flops
        self.t0 = None
        self.stopped = False
        self.start_tokens = self.start_samples = 0
        self.steps = 0
        self.losses = []

    def _sync(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            import torch

            self._sync()
            self.start_event = None
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                # CUDA events time the GPU work itself, as core's time_steps does
                self.start_event = torch.cuda.Event(enable_timing=True)
                self.start_event.record()
            self.t0 = time.perf_counter()
            # the loader runs ahead of the step: tokens of batches already collated count as
            # "before"; the same prefetch offset applies at the end, so the difference is exact
            self.start_tokens, self.start_samples = self.counter.real_tokens, self.counter.samples
            self.start_source_tokens = self.counter.source_tokens
            self.start_step = state.global_step
        elif state.global_step == self.stop_after_step:
            self._stop(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):
        self._stop(state)

    def _stop(self, state):
        import torch

        self._sync()
        if self.t0 is None or self.stopped:
            return
        self.stopped = True
        seconds = time.perf_counter() - self.t0
        self.timer = "wall"
        if self.start_event is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            seconds = self.start_event.elapsed_time(end) / 1000
            self.timer = "cuda_events"
        self.steps = state.global_step - self.start_step
        self.real_tokens = self.counter.real_tokens - self.start_tokens
        self.source_tokens = self.counter.source_tokens - self.start_source_tokens
        self.samples = self.counter.samples - self.start_samples
        self.seconds = seconds
        self.peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        self.peak_reserved = torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None

    def mfu(self) -> float | None:
        """This rank's model FLOPs of real tokens per second over its GPU's dense bf16 peak (None on CPU)."""
        import torch
        from trainstack.bench import _current_gpu
        from trainstack.metrics import peak_bf16_flops

        if self.flops is None or not torch.cuda.is_available():
            return None
        peak = peak_bf16_flops(_current_gpu())
        if not peak:
            return None
        target_tokens = self.real_tokens - self.source_tokens
        return self.flops.train_flops(self.source_tokens, target_tokens) / self.seconds / peak

    def finish(self):
        import os

        if self.t0 is None or not self.steps or os.environ.get("RANK", "0") != "0":
            return
        # rank 0 counts its own batches; ranks get equal batch counts, so the total is ~ world_size x
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        record = {
            "steps": self.steps, "seconds": self.seconds, "real_tokens": self.real_tokens, "samples": self.samples,
            "tokens_per_s": world_size * self.real_tokens / self.seconds,
            "samples_per_s": world_size * self.samples / self.seconds, "world_size": world_size,
            "peak_memory_gib": self.peak, "peak_reserved_gib": self.peak_reserved, "precision": self.precision,
            "n_params": self.n_params, "losses": self.losses, "timer": self.timer,
            "optimizer": self.optimizer_report.description if self.optimizer_report else None,
            "mfu": self.mfu(),
        }
        self.out_json.parent.mkdir(parents=True, exist_ok=True)
        self.out_json.write_text(json.dumps(record, indent=1, default=str))

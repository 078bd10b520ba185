"""The harness behind each package's ``bench`` command: our recipe vs a baseline, same process, same GPU.

    ours = time_steps(step_ours, warmup_steps=5, timed_steps=20, real_tokens_per_step=tokens,
                      samples_per_step=bs, flops_per_token=fpt, name="ours")
    base = time_steps(step_base, ..., name="baseline")
    print(device_banner()); print(compare([ours, base], baseline="baseline"))

A package's "ours" arm times what its ``train`` ships: the same model, data, optimizer, scheduler and
loss builders, and ``FitStep``, one optimizer step exactly as ``fit`` takes it:

    step = FitStep(model=model, optimizer=opt, scheduler=sched, train_batches=batches, loss_fn=loss_fn,
                   config=loop_config, precision=precision)
    res = time_steps(step, warmup_steps=5, timed_steps=20, real_tokens_per_step=lambda i: step.real_tokens_of(5 + i),
                     samples_per_step=lambda i: step.samples[5 + i], name="ours")

Warm-up steps absorb compilation, cuDNN autotuning and allocator growth. On a GPU the timed region
is bracketed by CUDA events (device time, no per-step sync); on CPU a host timer is used and the
output says the figures are CPU figures.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from trainstack.hardware import GIB, GPUInfo
from trainstack.loop import LoopConfig, _batch_size, _fast_step, _null, _seed_everything
from trainstack.memory import gpu_peak_gib, reset_peak_memory, rss_gib
from trainstack.metrics import peak_bf16_flops


@dataclass
class BenchResult:
    name: str
    steps: int
    seconds: float
    real_tokens: int
    samples: int
    tokens_per_s: float
    samples_per_s: float
    mfu: float | None
    peak_memory_gib: float | None
    extra: dict = field(default_factory=dict)


def _current_gpu() -> GPUInfo | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return GPUInfo(props.name, (props.major, props.minor), props.total_memory / GIB)


def _count(per_step, i: int) -> int:
    return int(per_step(i)) if callable(per_step) else int(per_step)


def time_steps(step_fn: Callable[[], object], *, warmup_steps: int, timed_steps: int, real_tokens_per_step,
               samples_per_step, flops_per_token=None, name="ours") -> BenchResult:
    """``real_tokens_per_step`` / ``samples_per_step``: a number, or a function of the timed step index
    (for variable-length batches). Tokens are real (non-pad) tokens."""
    if timed_steps < 1:
        raise ValueError(f"timed_steps must be >= 1, got {timed_steps}")
    for _ in range(warmup_steps):
        step_fn()
    # Only a GPU that the steps actually used gets device timing; otherwise host timing.
    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if on_gpu:
        torch.cuda.synchronize()
        reset_peak_memory()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        for _ in range(timed_steps):
            step_fn()
        host_seconds = time.perf_counter() - t0
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        for _ in range(timed_steps):
            step_fn()
        seconds = host_seconds = time.perf_counter() - t0
    tokens = sum(_count(real_tokens_per_step, i) for i in range(timed_steps))
    samples = sum(_count(samples_per_step, i) for i in range(timed_steps))
    tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    gpu = _current_gpu() if on_gpu else None
    peak = peak_bf16_flops(gpu) if gpu is not None else None
    mfu = tokens_per_s * flops_per_token / peak if (flops_per_token and peak) else None
    return BenchResult(
        name=name, steps=timed_steps, seconds=seconds, real_tokens=tokens, samples=samples,
        tokens_per_s=tokens_per_s, samples_per_s=samples / seconds if seconds > 0 else 0.0, mfu=mfu,
        peak_memory_gib=gpu_peak_gib() if on_gpu else None,
        extra={"device": gpu.name if gpu else "cpu", "timer": "cuda_events" if on_gpu else "host",
               "warmup_steps": warmup_steps, "ms_per_step": 1000.0 * seconds / timed_steps,
               # The host's time to issue the steps: well below ms_per_step, the device sets the
               # pace. Close to it, the host is slow or waits on the device, or (CUDA graphs) a large
               # graph's launch returns only as the device drains its full launch queue, which is
               # the device setting the pace again: a profile's host events tell which.
               "host_ms_per_step": 1000.0 * host_seconds / timed_steps, "rss_gib": round(rss_gib(), 3)},
    )


def device_banner() -> str:
    torch_part = f"torch {torch.__version__}"
    if torch.cuda.is_available():
        gpu = _current_gpu()
        cuda = f"CUDA {torch.version.cuda}"
        return (f"GPU: {gpu.name} (sm_{gpu.capability[0]}{gpu.capability[1]}, {gpu.memory_gib:.0f} GiB) "
                f"x{torch.cuda.device_count()} | {torch_part} | {cuda} | python {platform.python_version()}")
    return (f"CPU figures (no GPU): {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
            f"| {torch_part} | python {platform.python_version()}")


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ratio(a, b) -> float | None:
    return None if a is None or not b else a / b


def _measured_on_gpu(result: BenchResult) -> bool:
    """A result is a GPU figure when time_steps timed it with CUDA events, or when a package that timed
    it its own way (e.g. a Trainer callback) recorded a GPU name in ``extra["device"]``. A result with
    neither key falls back to whether this process sees a GPU."""
    extra = result.extra or {}
    if "timer" in extra or "device" in extra:
        return extra.get("timer") == "cuda_events" or extra.get("device", "cpu") != "cpu"
    return torch.cuda.is_available()


def compare(results: list[BenchResult], baseline: str) -> str:
    """A table plus, as the last line, one JSON object with each result and its ratios to the baseline
    (speedup = tokens/s ratio; memory_ratio = peak memory ratio, below 1 is better)."""
    by_name = {r.name: r for r in results}
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} not among results: {', '.join(by_name)}")
    base = by_name[baseline]
    cpu = not any(_measured_on_gpu(r) for r in results)
    header = ["name", "steps", "ms/step", "tokens/s", "samples/s", "MFU", "peak GiB", "speedup", "memory"]
    rows, records = [], []
    for r in results:
        speedup = _ratio(r.tokens_per_s, base.tokens_per_s) if base.tokens_per_s else _ratio(r.samples_per_s, base.samples_per_s)
        mem_ratio = _ratio(r.peak_memory_gib, base.peak_memory_gib)
        rows.append([r.name, str(r.steps), f"{1000 * r.seconds / r.steps:.2f}", f"{r.tokens_per_s:,.0f}",
                     f"{r.samples_per_s:,.1f}", _fmt(r.mfu, ".1%"), _fmt(r.peak_memory_gib, ".2f"),
                     _fmt(speedup, ".2f") + "x" if speedup is not None else "-",
                     _fmt(mem_ratio, ".2f") + "x" if mem_ratio is not None else "-"])
        record = asdict(r)
        record.update(speedup=speedup, memory_ratio=mem_ratio)
        records.append(record)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = []
    if cpu:
        lines.append("CPU figures (no GPU): they show the harness works, not how fast a GPU would be.")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(json.dumps({"baseline": baseline, "cpu_figures": cpu, "device": device_banner(), "results": records}))
    return "\n".join(lines)


class FitStep:
    """One optimizer step of ``trainstack.loop.fit``, callable, for timing a package's training step.

    The same sequence as fit: seed a fresh run with ``config.seed``, ``accelerator.prepare(model,
    optimizer)``, the fast path when ``speed`` asks for it (fit's own ``_fast_step``: a TrainStep with one
    process, else a compiled model), then per call ``config.grad_accum_steps`` micro-batches from
    ``train_batches`` (epochs roll over through ``set_epoch``), each ``loss_fn`` under accelerate's
    autocast with ``loss / grad_accum_steps`` backward and no gradient sync before the last one, then
    clipping to ``config.max_grad_norm``, optimizer step, scheduler step (unless the scaler skipped
    it), zero_grad. Tests in core check that N calls leave the weights fit leaves after N steps,
    eager and compiled.

    ``real_tokens`` / ``samples`` hold each step's counts, ``losses`` each step's mean micro-batch loss;
    tokens and losses stay on the device (no host sync inside a step) until read after timing
    (``real_tokens_of(i)``, ``float(losses[i])``). ``count_batch(batch) ->
    (real_tokens, samples)``, optional, counts a batch on the host instead (before it moves), for a bench
    whose token definition differs from the loss's. ``stats``: time to the first optimizer step (from
    ``clock_start``, a ``time.perf_counter()`` reading taken before the model was built, say; default:
    construction) and the compile cache's use, as fit logs them, plus the fast path's compilations and
    recompiles; {} before the first call.
    """

    def __init__(self, *, model, optimizer, scheduler, train_batches, loss_fn, config: LoopConfig, precision=None,
                 accelerator=None, count_batch=None, speed=None, clock_start: float | None = None):
        from trainstack.speed.cache import compile_cache_use

        self._clock_start = time.perf_counter() if clock_start is None else clock_start
        self._cache_before = compile_cache_use()
        self.startup: dict = {}
        if accelerator is None:  # as fit makes it
            from accelerate import Accelerator

            accelerator = Accelerator(mixed_precision=precision.accelerate_mixed_precision if precision else "no",
                                      cpu=not torch.cuda.is_available())
        _seed_everything(config.seed)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.train_step = _fast_step(speed, accelerator, self.model, loss_fn, self.optimizer, scheduler,
                                     getattr(accelerator, "scaler", None), config, self._clock_start)
        if speed is not None and speed.compile and self.train_step is None:
            from trainstack.speed import compile_for

            self.model = compile_for(speed, self.model)
        self.accelerator, self.scheduler, self.loss_fn, self.config = accelerator, scheduler, loss_fn, config
        self.batches, self.count_batch = train_batches, count_batch
        self.epoch, self._it = 0, None
        self.real_tokens: list = []
        self.samples: list[int] = []
        self.losses: list = []
        self.batch_seconds: list[float] = []
        """Host seconds per call spent getting (collating) and counting its batches."""
        self.model.train()

    def _next_batch(self):
        for _ in range(2):
            if self._it is None:
                self.batches.set_epoch(self.epoch)
                self._it = iter(self.batches)
            batch = next(self._it, None)
            if batch is not None:
                return batch
            self.epoch, self._it = self.epoch + 1, None
        raise ValueError("the training batches yield nothing in an epoch: no step to time")

    def _micro(self, batch, last: bool):
        if self.train_step is not None:
            return self.train_step.micro(batch)
        acc = self.accelerator
        ctx = acc.no_sync(self.model) if not last else _null()
        with ctx, acc.autocast():
            loss, real = self.loss_fn(self.model, batch)
            acc.backward(loss / self.config.grad_accum_steps)
        return loss, real

    def _optimizer_step(self) -> None:
        if self.train_step is not None:
            self.train_step.optimizer_step(self.config.grad_accum_steps)  # clip, update, schedule, zero
            return
        acc = self.accelerator
        if self.config.max_grad_norm is not None:
            acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None and not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        accum = self.config.grad_accum_steps
        tokens, samples, loss_sum = 0, 0, 0.0
        batch_seconds = 0.0
        for k in range(accum):
            t0 = time.perf_counter()
            batch = self._next_batch()
            if self.count_batch is not None:
                n_tokens, n_samples = self.count_batch(batch)
            batch_seconds += time.perf_counter() - t0
            loss, real = self._micro(batch, last=k == accum - 1)
            loss_sum = loss_sum + loss.detach()
            if self.count_batch is None:
                n_tokens = real if isinstance(real, int) else real.detach()
                n_samples = _batch_size(batch)
            tokens, samples = tokens + n_tokens, samples + n_samples
        self._optimizer_step()
        if not self.startup:
            from trainstack.speed.cache import first_step_report

            fast = self.train_step.stats.first_step_seconds if self.train_step is not None else None
            self.startup = first_step_report(self._clock_start, cuda=self.accelerator.device.type == "cuda",
                                             seconds=fast, cache_since=self._cache_before)
        self.real_tokens.append(tokens)
        self.samples.append(samples)
        self.losses.append(loss_sum / accum)
        self.batch_seconds.append(batch_seconds)

    def real_tokens_of(self, step: int) -> int:
        """The real tokens of call ``step`` (0-based), read on the host."""
        return int(self.real_tokens[step])

    @property
    def stats(self) -> dict:
        fast = self.train_step.stats.as_dict() if self.train_step is not None else {}
        return {**fast, **self.startup}

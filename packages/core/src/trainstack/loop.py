"""``fit``: one training loop on accelerate, resumable exactly, interruptible by SIGINT/SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .checkpoint import (
    CheckpointError,
    CheckpointManager,
    bare_model,
    capture_rng_state,
    check_fingerprint,
    checkpoint_dirs,
    model_fingerprint,
    restore_rng_state,
)
from .deepspeed_engine import check_engine_state, load_engine_state, save_engine_state, uses_deepspeed
from .memory import CleanupPolicy, memory_report
from .metrics import ThroughputMeter
from .precision import Precision
from .runlog import RunLog, check_report_to, import_wandb


@dataclass
class LoopConfig:
    max_steps: int | None = None
    """Optimizer steps; None -> epochs * steps per epoch. When set, epochs repeat until reached."""
    epochs: int = 1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    log_every_steps: int = 10
    eval_every_steps: int = 0
    """0 = at epoch ends only (evaluation also runs at every epoch end when this is > 0)."""
    save_every_steps: int = 0
    """0 = at the end only."""
    eval_at_save: bool = False
    """Also evaluate at a save that falls between evaluations, so every checkpoint carries the metric
    that best-checkpoint pruning ranks by (save_every_steps need not be a multiple of eval_every_steps)."""
    keep_last: int = 2
    keep_best: int = 1
    best_metric: str | None = None
    best_mode: str = "min"
    cleanup_every_steps: int = 0
    seed: int = 0
    """Seeds torch/numpy/python at the start of a fresh run (a resumed run restores saved RNG states)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where the log's numbers go besides run_dir/log.jsonl (always written): "tensorboard" (run_dir/tb,
    a warning when tensorboard is not installed), "wandb" (pip install 'trainstack-core[wandb]'), or
    ["none"]. See trainstack.runlog."""
    tensorboard: bool = True
    """Kept for existing callers: False removes "tensorboard" from ``report_to``."""
    stop_check_every_steps: int = 1
    """With several processes, how often (optimizer steps) the ranks agree on a Ctrl-C/SIGTERM seen by
    any of them. Each check is a one-element all-reduce read on the host (a sync); a rank that stopped
    alone would wait in the save barrier while the others wait in a gradient all-reduce."""

    def __post_init__(self):
        self.report_to = check_report_to(self.report_to) or ["none"]
        if not self.tensorboard and "tensorboard" in self.report_to:
            self.report_to = [n for n in self.report_to if n != "tensorboard"] or ["none"]
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None to run `epochs` epochs), got {self.max_steps}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("eval_every_steps", "save_every_steps", "keep_last", "keep_best", "cleanup_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.log_every_steps < 1:
            raise ValueError(f"log_every_steps must be >= 1, got {self.log_every_steps}")
        if self.stop_check_every_steps < 1:
            raise ValueError(f"stop_check_every_steps must be >= 1, got {self.stop_check_every_steps}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")


class RunDirError(CheckpointError):
    """A run directory that cannot be used as asked (it holds another run's checkpoints, or is a file)."""


class NoUsableData(ValueError):
    """An epoch yielded no batch at all: nothing to train on."""


# Every task CLI takes --resume (trainstack.task_cli); a package passes its exact command as resume_hint.
DEFAULT_RESUME_HINT = "the same command plus --resume"


def check_run_dir(run_dir, *, resume: bool, overwrite: bool = False, resume_hint: str | None = None,
                  overwrite_hint: str = "overwrite=true") -> None:
    """Refuse, before anything is written, a fresh start in a directory that holds checkpoints.

    Read-only; ``fit`` calls it, and a package can call it first thing so that nothing (config.yaml,
    caches) is written into another run's directory. ``resume`` skips the check; ``overwrite`` allows the
    fresh start (``fit`` then removes only what it wrote: see ``clear_run_outputs``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is not a directory; pick another run directory")
    if resume or overwrite:
        return
    found = checkpoint_dirs(run_dir / "checkpoints")
    if found:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        how = f"resume it ({resume_hint or DEFAULT_RESUME_HINT})"
        raise RunDirError(f"{run_dir}: already holds checkpoints of a run ({names}); {how}, pass {overwrite_hint} "
                          f"to start over (removes its checkpoints and logs), or choose another run directory")


def clear_run_outputs(run_dir) -> list[str]:
    """Remove what ``fit`` writes in ``run_dir`` (checkpoint directories, log.jsonl, TensorBoard event
    files); unknown files stay. Returns the paths removed, relative to ``run_dir``."""
    run_dir = Path(run_dir)
    removed = []
    if (run_dir / "checkpoints").is_dir():
        removed += [f"checkpoints/{n}" for n in CheckpointManager(run_dir / "checkpoints").remove_all()]
    if (run_dir / "log.jsonl").is_file():
        (run_dir / "log.jsonl").unlink()
        removed.append("log.jsonl")
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")) if (run_dir / "tb").is_dir() else []:
        f.unlink()
        removed.append(f"tb/{f.name}")
    return removed


def truncate_log(path, last_step: int) -> int:
    """Keep the records of ``path`` (JSONL) whose step is <= ``last_step`` (records without a step stay;
    unreadable lines go); atomic. Returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(record, dict) or (isinstance(step, (int, float)) and step > last_step):
            dropped += bool(line.strip())
            continue
        kept.append(line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class Batches(Protocol):
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class FitResult:
    steps: int
    epochs_completed: float
    last_loss: float
    best_metric: float | None
    checkpoint: Path | None
    interrupted: bool
    history: list[dict] = field(default_factory=list)


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    return len(batch)


class StopFlag:
    """SIGINT/SIGTERM set a flag; ``fit`` saves and returns at the next micro-batch (one process) or
    after the optimizer step the ranks agree on (several).

    Public for loops that cannot use ``fit`` (a DeepSpeed engine loop): ``with StopFlag() as stop:``
    then check ``stop.signum`` after each optimizer step. A second Ctrl-C raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(*, model, optimizer, scheduler, train_batches: Batches, loss_fn, config: LoopConfig, run_dir,
        precision: Precision, accelerator=None, evaluate=None, flops_per_token=None,
        resume: bool | str | Path = False, save_model_fn=None, progress: bool = True, speed=None,
        overwrite: bool = False, resume_fingerprint: dict | None = None, ignore_resume_mismatch: bool = False,
        resume_hint: str | None = None, clock_start: float | None = None) -> FitResult:
    """Train ``model`` for ``config.max_steps`` optimizer steps (or ``config.epochs``).

    ``speed`` (a resolved ``trainstack.speed.Speed``) switches on core's fast path: with one process
    the micro-steps and optimizer steps run through ``TrainStep`` (compiled, CUDA graphs); with
    several processes the model is compiled and the step stays accelerate's.

    ``accelerator`` from ``trainstack.deepspeed_engine.deepspeed_accelerator`` trains through a DeepSpeed
    engine (ZeRO, offload): the engine steps at each window's last micro-batch, and checkpoints hold
    its state in ``deepspeed/`` instead of ``optimizer.pt`` (see that module).

    ``loss_fn(model, batch) -> (loss, real_tokens)``; ``evaluate(model) -> dict``. The scheduler is
    stepped once per optimizer step (not handed to accelerate, which would step it once per process).
    Loss, token and sample counts stay on the device until the log cadence.

    A fresh start over another run's checkpoints is refused unless ``overwrite`` (which removes only
    fit's own outputs). On resume, ``resume_fingerprint`` (plain JSON: data, vocabulary, lengths...) is
    compared with the checkpoint's, field by field (``ignore_resume_mismatch`` to accept differences),
    and log.jsonl is cut back to the checkpoint's step. ``resume_hint`` tells a stopped run's user how
    to continue (the CLI's own spelling). See docs/core-api.md for the stop and crash guarantees.

    Time to the first optimizer step (``first_step_seconds``, printed once and in every log record
    with the compile cache's use: cold, warm) counts from ``clock_start``, a ``time.perf_counter()``
    reading (``trainstack.speed.process_start_clock()`` for the wait a user sees); default: fit's call.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .speed.cache import compile_cache_use, describe_first_step, first_step_report

    clock_start = time.perf_counter() if clock_start is None else clock_start
    cache_before = compile_cache_use()  # a process that ran fit before counts only this run's lookups
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=bool(resume), overwrite=overwrite, resume_hint=resume_hint)
    if "wandb" in config.report_to:
        import_wandb()  # a missing optional package fails here, before anything is written
    # JSON round trip: tuples become lists, as they read back from the checkpoint
    fingerprint = json.loads(json.dumps({"model": model_fingerprint(model), **(resume_fingerprint or {})}))
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=precision.accelerate_mixed_precision,
                                  cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    say = print if main else (lambda *a, **k: None)
    deepspeed = uses_deepspeed(accelerator)
    if deepspeed and speed is not None and speed.compile:
        raise ValueError("the fast path (speed.compile) does not run under DeepSpeed: switch one of them off")
    accelerator.wait_for_everyone()  # every rank checked the directory before the main one clears it
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume and checkpoint_dirs(run_dir / "checkpoints"):
            removed = clear_run_outputs(run_dir)
            if removed:
                say(f"overwrite: removed {len(removed)} entries of the earlier run in {run_dir}: "
                    f"{', '.join(removed[:5])}{', ...' if len(removed) > 5 else ''}")
    accelerator.wait_for_everyone()
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_last, keep_best=config.keep_best,
                              metric=config.best_metric, mode=config.best_mode)

    step, epoch, best = 0, 0, None
    resume_path = None
    if resume:
        resume_path = ckpts.latest() if resume is True else Path(resume)
        if resume_path is None:
            found = checkpoint_dirs(ckpts.root)
            if found:
                raise CheckpointError(f"{ckpts.root}: nothing complete to resume ({found[-1].name} has no valid "
                                      f"manifest.json: a save that crashed, or an older trainstack-core)")
            say(f"resume: no checkpoint in {ckpts.root}; starting from step 0")
    if resume_path is None:
        _seed_everything(config.seed)
    else:
        # Before anything is loaded; the model's own names and shapes are checked by the load itself.
        def check_resume():
            check_fingerprint(resume_path, fingerprint, ignore_mismatch=ignore_resume_mismatch, say=say)
            check_engine_state(resume_path, deepspeed=deepspeed)

        _check_resume_on_every_rank(accelerator, check_resume)
    model, optimizer = accelerator.prepare(model, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    train_step = _fast_step(speed, accelerator, model, loss_fn, optimizer, scheduler, scaler, config, clock_start)
    if speed is not None and speed.compile and train_step is None:
        from .speed import compile_for

        model = compile_for(speed, model)
    if speed is not None and main:
        print(speed.reason)
    last_ckpt: Path | None = None
    if resume_path is not None:
        extra = ckpts.load(resume_path, model=bare_model(model),
                           optimizer=None if deepspeed else optimizer, scheduler=scheduler, scaler=scaler)
        if deepspeed:
            load_engine_state(model, resume_path)
        step, epoch, best = extra["step"], extra["epoch"], extra.get("best_metric")
        train_batches.load_state_dict(_this_ranks_data_state(extra, accelerator))
        if resume_path.parent.resolve() == ckpts.root.resolve():
            last_ckpt = resume_path  # nothing new to save unless a step or an evaluation happens
        say(f"resumed from {resume_path} at step {step}, epoch {epoch}")
    if main:
        # The log holds each step once: records after the checkpoint belong to the lost stretch.
        truncate_log(run_dir / "log.jsonl", step)

    try:
        steps_per_epoch = math.ceil(len(train_batches) / config.grad_accum_steps)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    # Only max_steps ends a run early; an epochs-bound run ends when its last epoch's batches run out,
    # so a len() that is an estimate (a stream) sizes the progress bar, never the run.
    max_steps = config.max_steps
    bar_total = max_steps or (config.epochs * steps_per_epoch if steps_per_epoch else None)

    device = accelerator.device
    gpu = None
    if device.type == "cuda":
        from .hardware import detect_hardware

        gpu = detect_hardware().gpu
    meter = ThroughputMeter(flops_per_token=flops_per_token, gpu=gpu)
    cleanup = CleanupPolicy(config.cleanup_every_steps)
    run_log = RunLog(run_dir, config.report_to, run_config=asdict(config)) if main else None
    bar = tqdm(total=bar_total, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    history: list[dict] = []
    last_loss = float("nan")
    interrupted = False
    # One process with accumulation: a stop seen mid-window drops the window and saves the state of its
    # start (data position, RNG, log sums), so a long window cannot delay a stop and resume stays exact.
    stop_mid_window = accelerator.num_processes == 1 and config.grad_accum_steps > 1
    window_start = None
    data_state_at_stop = None
    logged_step = -1

    def zeros():
        return torch.zeros((), device=device, dtype=torch.float32)

    def autocast():
        if not deepspeed:
            return accelerator.autocast()
        # DeepSpeed casts the module for fp16/bf16 and turns accelerate's autocast off; bf16 keeps torch's
        # autocast, as without DeepSpeed, so norms, softmax and the loss still reduce in fp32
        return precision.autocast(device.type) if precision.name == "bf16" else _null()

    loss_sum, tokens_sum, samples_sum, micro_count = zeros(), zeros(), zeros(), 0
    grad_norm = None
    startup: dict = {}  # time to the first optimizer step and the compile cache's use, once it is taken

    def write(record: dict) -> None:
        history.append(record)
        if run_log is not None:
            run_log.write(record)

    def save(metrics: dict | None = None) -> Path | None:
        nonlocal last_ckpt
        accelerator.wait_for_everyone()
        # Every rank's position: a stream split by rank is at a different row on each.
        data_state = data_state_at_stop if data_state_at_stop is not None else train_batches.state_dict()
        data_states = _gather_objects(accelerator, data_state)

        def save_engine(directory):
            save_engine_state(model, directory, accelerator)

        if main:
            ckpts.save(step, model=bare_model(model), optimizer=None if deepspeed else optimizer,
                       scheduler=scheduler, scaler=scaler, metrics=metrics,
                       extra={"step": step, "epoch": epoch, "best_metric": best,
                              "data": data_states[0], "data_per_rank": data_states},
                       save_model_fn=save_model_fn, fingerprint=fingerprint,
                       shared_save_fn=save_engine if deepspeed else None)
        elif deepspeed:
            save_engine(ckpts.staging_dir(step))
        # Every rank records it: the final-save decision below must be the same on all of them.
        last_ckpt = ckpts.root / f"step-{step}"
        accelerator.wait_for_everyone()
        meter.restart_clock()
        return last_ckpt

    def run_eval() -> dict:
        nonlocal best
        model.eval()
        with torch.no_grad():
            raw = evaluate(model)
        model.train()
        metrics = {(k if k.startswith("eval_") else f"eval_{k}"): float(v) for k, v in raw.items()}
        name = config.best_metric
        if name is not None and name in metrics:
            v = metrics[name]
            if best is None or (v < best if config.best_mode == "min" else v > best):
                best = v
        write({"step": step, "epoch": epoch, **metrics})
        meter.restart_clock()
        return metrics

    def optimizer_step(window: int) -> None:
        take_optimizer_step(window)
        if not startup:
            note_first_step()

    def note_first_step() -> None:
        stats = train_step.stats if train_step is not None else None
        startup.update(first_step_report(clock_start, cuda=device.type == "cuda", loop_start=loop_start,
                                         seconds=stats.first_step_seconds if stats else None, cache_since=cache_before))
        say(describe_first_step(startup, *(["compilation and CUDA-graph capture included"] if stats else [])))

    def take_optimizer_step(window: int) -> None:
        nonlocal step, grad_norm
        if train_step is not None:
            grad_norm = train_step.optimizer_step(window)  # rescale, clip, update, schedule, zero
            step += 1
            bar.update(1)
            return
        if deepspeed:  # the engine stepped in backward; the scheduler is ours
            grad_norm = accelerator.deepspeed_engine_wrapped.get_global_grad_norm()
            if scheduler is not None and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            step += 1
            bar.update(1)
            return
        if window < config.grad_accum_steps:
            # An epoch's last window is short: its micro-losses were divided by grad_accum_steps, so
            # rescale to the mean over the micro-batches it really had.
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, config.grad_accum_steps / window)
        if config.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        if scheduler is not None and not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

    def log(epoch_pos: float) -> None:
        nonlocal loss_sum, tokens_sum, samples_sum, micro_count, last_loss, logged_step
        logged_step = step
        # the one host sync per log interval
        loss_mean = accelerator.reduce(loss_sum, "sum") / max(1, micro_count) / accelerator.num_processes
        tokens = accelerator.reduce(tokens_sum, "sum")
        samples = accelerator.reduce(samples_sum, "sum")
        last_loss = float(loss_mean)
        meter.update(int(tokens), int(samples))
        rates = meter.summary()
        record = {"step": step, "epoch": round(epoch_pos, 4), "loss": last_loss,
                  # a tensor on the device where the optimizer step is a replayed CUDA graph
                  "lr": float(optimizer.param_groups[0]["lr"]),
                  "grad_norm": None if grad_norm is None else float(grad_norm),
                  "tokens_per_s": rates["tokens_per_s"], "samples_per_s": rates["samples_per_s"],
                  "mfu": rates["mfu"], **memory_report().as_dict()}
        if train_step is not None:  # compilations, recompiles (warned when they happen)
            record.update(train_step.stats.as_dict())
        record.update(startup)
        write(record)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        loss_sum, tokens_sum, samples_sum, micro_count = zeros(), zeros(), zeros(), 0

    def mark_window_start() -> None:
        nonlocal window_start
        if stop_mid_window:
            window_start = (train_batches.state_dict(), capture_rng_state(), loss_sum.clone(), tokens_sum.clone(),
                            samples_sum.clone(), micro_count)

    def drop_window() -> None:
        """Forget the micro-batches of the open window: gradients, RNG draws, log sums, data position."""
        nonlocal data_state_at_stop, loss_sum, tokens_sum, samples_sum, micro_count
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if train_step is not None and grads:
            torch._foreach_zero_(grads)  # in place: captured CUDA graphs accumulate into these tensors
        else:
            optimizer.zero_grad(set_to_none=True)
        data_state_at_stop, rng, loss_sum, tokens_sum, samples_sum, micro_count = window_start
        restore_rng_state(rng)

    def stop_agreed() -> bool:
        if accelerator.num_processes == 1:
            return stop.signum is not None
        flag = torch.tensor(0.0 if stop.signum is None else 1.0, device=device)
        if float(accelerator.reduce(flag, "sum")) > 0:
            stop.signum = stop.signum or signal.SIGTERM
            return True
        return False

    def should_stop() -> bool:
        if max_steps is not None and step >= max_steps:
            return True
        if accelerator.num_processes == 1:
            return stop.signum is not None
        if step % config.stop_check_every_steps:
            return False
        flag = torch.tensor(0.0 if stop.signum is None else 1.0, device=device)
        if float(accelerator.reduce(flag, "sum")) > 0:
            stop.signum = stop.signum or signal.SIGTERM  # another rank was signalled: stop together
            return True
        return False

    model.train()
    done = max_steps is not None and step >= max_steps
    loop_start = time.perf_counter()  # the start-up before it and the first step's compilation are told apart
    with StopFlag() as stop:
        try:
            first_epoch = True
            while not done:
                if config.max_steps is None and epoch >= config.epochs:
                    break
                if stop_agreed():  # checked once per epoch too: an epoch may hold no optimizer step
                    break
                train_batches.set_epoch(epoch)
                pending = 0  # micro-steps since the last optimizer step
                n_in_epoch = 0
                mark_window_start()
                batches = iter(train_batches)
                upcoming = next(batches, _END)
                while upcoming is not _END:
                    if pending and stop_mid_window and stop.signum is not None:
                        drop_window()
                        done = True
                        break
                    batch, upcoming = upcoming, _NOT_FETCHED
                    n_in_epoch += 1
                    pending += 1
                    final_micro = pending == config.grad_accum_steps
                    if not final_micro:
                        # Look one batch ahead only inside a window, so that the epoch's last batch closes
                        # (and syncs) its window, while the data position at a save (always right after
                        # a window) is exactly the batches trained on.
                        upcoming = next(batches, _END)
                        final_micro = upcoming is _END
                    if train_step is not None:
                        loss, real_tokens = train_step.micro(batch)
                    else:
                        # DDP syncs gradients in the backward of a forward run outside no_sync; DeepSpeed
                        # knows the window's end from backward's argument
                        ctx = accelerator.no_sync(model) if not (final_micro or deepspeed) else _null()
                        with ctx, autocast():
                            loss, real_tokens = loss_fn(model, batch)
                            if deepspeed:  # at the window's last micro-batch the engine steps inside
                                accelerator.deepspeed_engine_wrapped.backward(
                                    loss / config.grad_accum_steps, sync_gradients=final_micro, scale_wrt_gas=False)
                            else:
                                accelerator.backward(loss / config.grad_accum_steps)
                    loss_sum += loss.detach().float()
                    tokens_sum += real_tokens if isinstance(real_tokens, int) else real_tokens.detach().float()
                    samples_sum += _batch_size(batch)
                    micro_count += 1
                    if not final_micro:
                        continue
                    optimizer_step(pending)
                    pending = 0
                    done = should_stop()
                    pos = epoch + (min(1.0, n_in_epoch / len(train_batches)) if steps_per_epoch else 0.0)
                    if upcoming is _END:
                        pos = epoch + 1.0
                    if step % config.log_every_steps == 0 or done:
                        log(pos)
                    if config.eval_every_steps and evaluate is not None and step % config.eval_every_steps == 0:
                        m = run_eval()
                        if config.save_every_steps and step % config.save_every_steps == 0:
                            save(m)
                    elif config.save_every_steps and step % config.save_every_steps == 0 and not done:
                        save(run_eval() if config.eval_at_save and evaluate is not None else None)
                    cleanup.maybe_cleanup(step)
                    if done:
                        break
                    if upcoming is _NOT_FETCHED:
                        mark_window_start()  # after this step's log/eval/save: the state a save would hold
                        upcoming = next(batches, _END)
                if done:
                    break
                if n_in_epoch == 0 and not (first_epoch and resume_path is not None):
                    # (the epoch a run resumes in may have no batch left; any other must have some)
                    raise NoUsableData(f"epoch {epoch} yielded no batch: no usable training data (check the data "
                                       f"files and the filters that drop rows)")
                first_epoch = False
                epoch += 1
                if evaluate is not None and not history_has_eval_at(history, step):
                    run_eval()
            interrupted = stop.signum is not None
            final_metrics = None
            if evaluate is not None and not interrupted and not history_has_eval_at(history, step):
                final_metrics = run_eval()
            if interrupted and logged_step != step and micro_count:
                log(epoch + 0.0)  # the steps since the last log record (a dropped window is not in it)
            if last_ckpt is None or last_ckpt.name != f"step-{step}" or final_metrics is not None:
                save(final_metrics)
            if interrupted:
                say(f"stopped by signal {stop.signum} at step {step}; checkpoint {last_ckpt}; "
                    f"continue with {resume_hint or DEFAULT_RESUME_HINT}")
        finally:
            bar.close()
            if run_log is not None:
                run_log.close()
    epochs_completed = epoch + 0.0
    return FitResult(steps=step, epochs_completed=epochs_completed, last_loss=last_loss, best_metric=best,
                     checkpoint=last_ckpt, interrupted=interrupted, history=history)


_END = object()
_NOT_FETCHED = object()


def _fast_step(speed, accelerator, model, loss_fn, optimizer, scheduler, scaler, config, clock_start=None):
    """A TrainStep when the fast path is on and one plain process trains, or DDP processes asked for
    CUDA graphs (speed.cuda_graphs=true: the bare module is captured and its gradients all-reduced
    between the captured backward and the captured optimizer step). Otherwise DDP, FSDP and DeepSpeed
    keep accelerate's step: their gradient hooks and sharding live outside our graphs."""
    from accelerate.utils import DistributedType

    if speed is None or not speed.fast:
        return None
    grad_sync = None
    if accelerator.num_processes > 1 or accelerator.distributed_type != DistributedType.NO:
        ddp = accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if not (ddp and speed.cuda_graphs):
            return None
        from functools import partial

        from .speed.step import all_reduce_gradients

        # DDP's wrapper is left aside: its hooks do nothing without its forward, and its construction
        # already gave every process rank 0's weights.
        model = accelerator.unwrap_model(model)
        grad_sync = partial(all_reduce_gradients, model)
    from .speed import TrainStep

    # The bare optimizer: TrainStep does the loss scaling itself, which accelerate's wrapper would repeat.
    return TrainStep(model, loss_fn, getattr(optimizer, "optimizer", optimizer), speed, scheduler=scheduler,
                     grad_accum_steps=config.grad_accum_steps, max_grad_norm=config.max_grad_norm,
                     autocast=accelerator.autocast, scaler=scaler, clock_start=clock_start, grad_sync=grad_sync)


def _gather_objects(accelerator, obj) -> list:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _check_resume_on_every_rank(accelerator, check) -> None:
    """Run ``check`` on every rank and raise its CheckpointError on all of them when it fails on any.

    Each node checks its own files: data copied onto a node's local disk without its modification times
    fingerprints differently there. A rank that failed alone would leave the others waiting in their
    first collective until the timeout, so the ranks agree before any of them raises."""
    if accelerator.num_processes == 1:
        check()
        return
    try:
        check()
        problem = None
    except CheckpointError as e:
        problem = (type(e), str(e))
    problems = _gather_objects(accelerator, problem)
    for rank, found in enumerate(problems):
        if found is not None:
            kind, message = found
            raise kind(f"rank {rank} of {len(problems)}: {message}")


def _this_ranks_data_state(extra: dict, accelerator) -> dict:
    per_rank = extra.get("data_per_rank")
    if per_rank is None:
        return extra["data"]
    if len(per_rank) != accelerator.num_processes:
        if all(state == per_rank[0] for state in per_rank):
            return per_rank[0]  # a position shared by all ranks (a global sampler) fits any world size
        raise ValueError(f"the checkpoint holds data positions for {len(per_rank)} processes but this run has "
                         f"{accelerator.num_processes}: resume with the same number of processes")
    return per_rank[accelerator.process_index]


def history_has_eval_at(history: list[dict], step: int) -> bool:
    return any(r["step"] == step and any(k.startswith("eval_") for k in r) for r in history)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""``TrainStep``: one training step as two calls, the same math eager, compiled, or replayed from CUDA graphs.

    step = TrainStep(model, loss_fn, optimizer, speed, scheduler=sched, grad_accum_steps=8,
                     max_grad_norm=1.0, autocast=lambda: precision.autocast("cuda"))
    for batch in window:
        loss = step.micro(batch)        # forward, loss, backward(loss / grad_accum_steps)
    step.optimizer_step()               # clip, update, schedule, zero the gradients

``loss_fn(model, batch)`` returns the loss or a tuple whose first item is the loss (the rest, e.g.
a real-token count, must be tensors when graphs are on); ``batch`` is a dict of tensors already on
the device. ``micro`` returns the same structure, detached, as new tensors the caller may keep.

With ``speed.compile`` the loss function (and the model inside it) is compiled once per input
shape (``dynamic=False``: padded length buckets keep the shapes few), or once for all shapes with
``speed.compile_dynamic``. With ``speed.cuda_graphs``
each new shape first runs ``speed.warmup_runs`` times as a normal step (compiling, allocating the
gradients and optimizer state), then its forward+backward is captured as one CUDA graph and every
later batch of that shape is copied into the graph's input buffers and replayed. The optimizer
step (clip, update, zero) is captured likewise after its first run, with the learning rate held in
a device tensor that the scheduler fills, so schedules keep working. With one micro-batch per
optimizer step in one process (``speed.whole_step_graphs``) forward, backward and update are one
graph per shape instead: ``micro`` replays all of it and ``optimizer_step`` only moves the schedule.
Nothing in a step reads a value back to the host; the one sync is at the end of the first optimizer
step, to time it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch

from .cache import compiled_graphs, enable_compile_cache
from .config import Speed

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    replay: object
    inputs: dict[str, torch.Tensor]
    outputs: tuple
    grad_norm: torch.Tensor | None = None
    """Whole-step graphs: the gradient norm the captured update computed (None without clipping)."""


@dataclass
class StepStats:
    first_step_seconds: float | None = None
    """From the TrainStep's clock start (construction, or ``clock_start``) to the end of the first
    optimizer step, compilation and capture included."""
    compiled_graphs: int = 0
    recompiles: int = 0
    """Compilations for an input shape that had already been compiled: each one is a bug to fix."""
    captured_graphs: int = 0
    shapes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"first_step_seconds": self.first_step_seconds, "compiled_graphs": self.compiled_graphs,
                "recompiles": self.recompiles, "captured_graphs": self.captured_graphs}


class CudaGraphs:
    """Capture with torch.cuda.graph into one memory pool shared by this step's graphs. Sharing is
    safe because they never run concurrently and every value read after a replay is either copied
    out (``micro`` returns clones) or lives outside the pool (parameters, gradients, optimizer state)."""

    needs_capturable_optimizer = True

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()
        self._side = torch.cuda.Stream()

    @contextlib.contextmanager
    def warmup(self):
        # Warm-up runs on a side stream, as PyTorch's capture recipe does, so that lazy set-up
        # (cuBLAS workspaces, autograd streams) does not happen inside the capture.
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            yield
        torch.cuda.current_stream().wait_stream(self._side)

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn()
        return graph.replay, outputs


def all_reduce_gradients(model: torch.nn.Module, bucket_bytes: int = 256 * 2**20, group=None) -> None:
    """Average the gradients of ``model`` over the processes of ``group``, in place: each dtype's
    gradients flattened into buckets of ~``bucket_bytes``, one all-reduce per bucket. DDP does this
    inside the backward pass; a backward replayed from a CUDA graph runs no hooks, so a TrainStep under
    several processes does it here, once per optimizer step, between the captured backward and the
    captured optimizer step (the gradients are the graphs' static buffers, updated in place)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = dist.get_world_size(group)
    if world == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in model.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        bucket, size = [], 0
        for g in grads + [None]:  # None: flush the last bucket
            if g is not None:
                bucket.append(g)
                size += g.numel() * g.element_size()
            if bucket and (g is None or size >= bucket_bytes):
                flat = _flatten_dense_tensors(bucket)
                dist.all_reduce(flat, group=group)
                flat.div_(world)
                for grad, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                    grad.copy_(synced)
                bucket, size = [], 0


class TrainStep:
    def __init__(self, model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer, speed: Speed, *,
                 scheduler=None, grad_accum_steps: int = 1, max_grad_norm: float | None = None, autocast=None,
                 scaler=None, clock_start: float | None = None, graphs=None, grad_sync=None):
        """``grad_sync()``: called once per optimizer step, after the last backward and before clipping,
        outside any graph: several processes average their gradients there (``all_reduce_gradients``),
        with ``model`` the bare module, not its DDP wrapper."""
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.speed = speed
        self.grad_sync = grad_sync
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm if max_grad_norm and max_grad_norm > 0 else None
        self.autocast = autocast or contextlib.nullcontext
        self.scaler = scaler if scaler is not None and getattr(scaler, "is_enabled", lambda: True)() else None
        self.stats = StepStats()
        self.grad_norm: torch.Tensor | None = None
        self._clock_start = time.perf_counter() if clock_start is None else clock_start
        self._optimizer_steps = 0
        self._seen: dict[tuple, int] = {}     # shape key -> runs so far
        self._graphs: dict[tuple, _Captured] = {}
        self._capture_failures: dict[tuple, int] = {}  # shape key -> captures that met a compilation
        self._optimizer_graph: _Captured | None = None
        self._device: torch.device | None = None
        # Forward, backward and update in one graph per shape: the backward writes each gradient
        # (autograd assigns a gradient that is None) instead of adding it into a static buffer that an
        # optimizer graph reads, and nothing zeroes them. Only where a step is one micro-batch of one
        # process: several micro-batches must accumulate, several processes all-reduce in between.
        self._whole_step = (speed.cuda_graphs and speed.whole_step_graphs and grad_accum_steps == 1
                            and grad_sync is None and self.scaler is None)
        self._updated_by_graph: _Captured | None = None  # the whole-step graph micro() just replayed
        self._micro_pending = False

        self._compute = compile_for(speed, loss_fn) if speed.compile else loss_fn
        self._graph_backend = None
        if speed.cuda_graphs:
            if self.scaler is not None:
                raise ValueError("CUDA graphs cannot capture fp16 loss scaling; resolve_speed turns them off")
            self._graph_backend = graphs if graphs is not None else CudaGraphs()
            if self._graph_backend.needs_capturable_optimizer and not _capturable(optimizer):
                # Known now, not at the first optimizer step: a micro-step captured before then would
                # hold its activations in the graph pool for nothing (on a 16 GB card, the margin).
                self._graphs_impossible(f"{type(optimizer).__name__} has no capturable mode")

    def start_clock(self) -> None:
        """Time to the first optimizer step counts from now (default: from construction)."""
        self._clock_start = time.perf_counter()

    # ---- micro-steps -------------------------------------------------------------------------------
    def micro(self, batch: dict[str, torch.Tensor]):
        """Forward, loss and backward of ``loss / grad_accum_steps``; gradients accumulate. Replaying a
        whole-step graph, the update is done too (``optimizer_step`` must follow)."""
        if self._whole_step and self._graph_backend is not None:
            if self._micro_pending:  # a whole-step graph starts without gradients: nothing may accumulate
                raise RuntimeError("one micro-batch per optimizer step (whole-step CUDA graphs): call "
                                   "optimizer_step() after each micro()")
            self._micro_pending = True
        batch = self._on_device(batch)
        key = _shape_key(batch)
        if self._graph_backend is not None and any(not isinstance(v, torch.Tensor) for v in batch.values()):
            self._graphs_impossible("the batch holds values that are not tensors; a graph would freeze them")
        if self._graph_backend is None:
            return self._counted(key, lambda: self._forward_backward(batch))
        captured = self._graphs.get(key)
        if captured is None:
            if self._seen.get(key, 0) < self.speed.warmup_runs:
                with self._graph_backend.warmup(), as_if_capturing():
                    return self._counted(key, lambda: self._forward_backward(batch))
            captured = self._capture_micro(key, batch)
            if captured is None and self._graph_backend is not None:  # capture deferred: one more warm-up run
                with self._graph_backend.warmup(), as_if_capturing():
                    return self._counted(key, lambda: self._forward_backward(batch))
            if captured is None:  # graphs switched off (see _graphs_impossible): this step runs as it is
                return self._counted(key, lambda: self._forward_backward(batch))
        for name, value in batch.items():
            captured.inputs[name].copy_(value, non_blocking=True)
        captured.replay()
        if self._whole_step:
            self._updated_by_graph = captured
        return _clone(captured.outputs)

    def _on_device(self, batch: dict) -> dict:
        # The captured step reads from device buffers; a host-to-device copy inside a capture is not allowed.
        if self._device is None:
            self._device = next(self.model.parameters()).device
        return {k: to_device(v, self._device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _forward_backward(self, batch):
        with self.autocast():
            out = self._compute(self.model, batch)
        loss = out[0] if isinstance(out, (tuple, list)) else out
        scaled = loss / self.grad_accum_steps
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return _detach(out)

    def _counted(self, key, run):
        before = compiled_graphs() if self.speed.compile else 0
        out = run()
        if self.speed.compile:
            new = compiled_graphs() - before
            self.stats.compiled_graphs += new
            if new and key in self._seen:
                self.stats.recompiles += new
                log.warning("recompiled for an input shape already compiled (%s): %d recompilation(s) so far; "
                            "a recompile per step is a bug (a Python value in the step changes?)",
                            _describe(key), self.stats.recompiles)
        if key not in self._seen:
            self.stats.shapes.append(_describe(key))
        self._seen[key] = self._seen.get(key, 0) + 1
        return out

    def _capture_micro(self, key, batch) -> _Captured | None:
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if missing and not self._whole_step:
            return self._graphs_impossible(f"parameters without gradients after warm-up ({', '.join(missing[:3])}"
                                           f"{'...' if len(missing) > 3 else ''}): a graph would overwrite "
                                           "instead of accumulating them; freeze unused parameters")
        inputs = {name: value.clone() for name, value in batch.items()}

        shape = {}

        def whole_step():
            # Gradients are None here (the warm-up update set them so): the backward allocates them in
            # the graph's pool, the update reads them, and dropping them afterwards hands the memory
            # back to the pool, for this graph's next replay or another shape's. One flat tuple out.
            outputs = self._forward_backward(inputs)
            norm = self._update(set_to_none=True)
            shape.update(single=not isinstance(outputs, (tuple, list)), norm=norm is not None)
            return _as_tuple(outputs) + ((norm,) if norm is not None else ())

        try:
            with _no_compiling(), as_if_capturing():
                if self._whole_step:
                    replay, flat = self._graph_backend.capture(whole_step)
                    flat, norm = (flat[:-1], flat[-1]) if shape["norm"] else (flat, None)
                    outputs = flat[0] if shape["single"] else flat
                else:
                    replay, outputs = self._graph_backend.capture(lambda: self._forward_backward(inputs))
                    norm = None
        except Exception as e:
            reason = _compile_due(e)
            if reason is None:
                raise
            return self._capture_deferred(key, reason)
        if any(not isinstance(o, torch.Tensor) for o in _as_tuple(outputs)):
            return self._graphs_impossible("the loss function returns Python values; a graph would freeze them")
        captured = _Captured(replay, inputs, outputs, norm)
        self._graphs[key] = captured
        self.stats.captured_graphs += 1
        return captured

    def _capture_deferred(self, key, reason: str) -> None:
        """A compilation was due inside the capture (a guard failed: see ``reason``). Nothing ran on the
        device (a capture only records), so the step runs uncaptured now, compiling, and the shape is
        captured at its next batch; a second such failure for one shape switches graphs off."""
        self._capture_failures[key] = self._capture_failures.get(key, 0) + 1
        if self._capture_failures[key] > 1:
            return self._graphs_impossible(f"a compilation was due inside the capture of {_describe(key)} twice; "
                                           f"the last one because: {reason}")
        log.warning("capture of %s deferred: a compilation was due inside it (%s); this batch runs uncaptured",
                    _describe(key), reason)
        self._seen[key] = self.speed.warmup_runs - 1  # this run is one more warm-up run
        return None

    def _graphs_impossible(self, why: str):
        log.warning("CUDA graphs switched off for this run: %s", why)
        self._graph_backend = None
        return None

    # ---- optimizer step ----------------------------------------------------------------------------
    def optimizer_step(self, window: int | None = None) -> torch.Tensor | None:
        """Clip, update, schedule, zero. ``window`` < grad_accum_steps (an epoch's short last window)
        rescales the gradients to the mean over the micro-batches it really had. Returns the
        gradient norm before clipping (a device tensor) when clipping is on."""
        self._micro_pending = False
        if self._updated_by_graph is not None:  # micro() replayed the update already
            norm, self._updated_by_graph = self._updated_by_graph.grad_norm, None
            self.grad_norm = None if norm is None else norm.clone()
            return self._after_update()
        if window is not None and window < self.grad_accum_steps:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, self.grad_accum_steps / window)
        if self.grad_sync is not None:
            self.grad_sync()
        if self._optimizer_steps == 0:
            self._prepare_optimizer()  # after any checkpoint was loaded into it
        backend = self._graph_backend
        if backend is None:
            self.grad_norm = self._update(set_to_none=True)
        elif self._whole_step:  # after a warm-up micro-step: whole-step graphs start without gradients
            with backend.warmup():
                self.grad_norm = self._update(set_to_none=True)
        elif self._optimizer_graph is None and self._optimizer_steps < self.speed.warmup_runs:
            with backend.warmup():
                self.grad_norm = self._update(set_to_none=False)  # graphs accumulate into these tensors
        else:
            if self._optimizer_graph is None:
                with _no_compiling():
                    replay, norm = backend.capture(lambda: self._update(set_to_none=False))
                self._optimizer_graph = _Captured(replay, {}, (norm,))
                self.stats.captured_graphs += 1
            self._optimizer_graph.replay()
            self.grad_norm = self._optimizer_graph.outputs[0]
        return self._after_update()

    def _after_update(self) -> torch.Tensor | None:
        if self.scheduler is not None and not self._skipped_by_scaler():
            self.scheduler.step()
        self._optimizer_steps += 1
        if self._optimizer_steps == 1:
            if any(p.is_cuda for p in self.model.parameters()):
                torch.cuda.synchronize()  # the one sync: time to the first step is a figure we report
            self.stats.first_step_seconds = time.perf_counter() - self._clock_start
        return self.grad_norm

    def _update(self, set_to_none: bool):
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        fused = _fused_adam(self.optimizer) if self.scaler is None and self.max_grad_norm is not None else None
        if fused is not None:
            # Clipping inside the fused update: it divides the gradients by grad_scale in place, as
            # clip_grad_norm_ would multiply them by its coefficient, without its own pass over them.
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            fused.grad_scale = torch.clamp((norm + 1e-6) / self.max_grad_norm, min=1.0)
        elif self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self._scale_before = self.scaler.get_scale() if self.scheduler is not None else None
            self.scaler.update()
        else:
            try:
                self.optimizer.step()
            finally:
                if fused is not None:
                    del fused.grad_scale
        if set_to_none:
            self.optimizer.zero_grad(set_to_none=True)
        elif params:
            torch._foreach_zero_([p.grad for p in params])
        return norm

    def _skipped_by_scaler(self) -> bool:
        # GradScaler skips the update when gradients overflowed (and lowers the scale); the schedule
        # must not advance then, as accelerate and HF Trainer do.
        if self.scaler is None or getattr(self, "_scale_before", None) is None:
            return False
        return self.scaler.get_scale() < self._scale_before

    def _prepare_optimizer(self) -> None:
        backend = self._graph_backend
        if backend is None:
            eager_optimizer_state(self.optimizer)
        elif backend.needs_capturable_optimizer:
            if _capturable(self.optimizer):
                self._make_capturable()
            else:
                self._graphs_impossible(f"{type(self.optimizer).__name__} has no capturable mode")

    def _make_capturable(self) -> None:
        """The optimizer as a graph can replay it: step counters and the learning rate on the device
        (the scheduler fills the lr tensor in place), ``capturable`` set before the first update."""
        device = next(p.device for g in self.optimizer.param_groups for p in g["params"])
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            elif group["lr"].device != device:
                group["lr"] = group["lr"].to(device)
        for state in self.optimizer.state.values():  # restored from a checkpoint on the CPU
            if isinstance(state.get("step"), torch.Tensor) and state["step"].device != device:
                state["step"] = state["step"].to(device)


def compile_for(speed: Speed, fn):
    """``torch.compile(fn)`` as ``speed`` asks, with the compile cache on disk switched on first."""
    enable_compile_cache()
    if speed.compile_dynamic:
        one_graph_for_all_sizes()
    return torch.compile(fn, **speed.compile_options())


def one_graph_for_all_sizes() -> None:
    """Settings for ``torch.compile(dynamic=True)`` (process-wide, set before the first compile) so
    that one graph serves every batch size and length instead of a few guarded variants:

    - Dynamo gives two sizes that happen to be equal when first seen (a prompt and a response bucket
      of 64) one symbol, then compiles again at the first batch where they differ: sizes get their
      own symbols.
    - Inductor fuses a norm's row and column reductions (its backward) only above a size (rows x
      columns >= 5 Mi, rows >= 4096), and under dynamic shapes that test is a guard on the batch's
      tokens: on an H200, T5 pretraining compiled its one graph three times (3 minutes each), once per
      side of the threshold. Non-strict mode skips the size test (the fused reduction stays correct on
      small batches, where it saves less)."""
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = False
    if hasattr(inductor_config.triton, "mix_order_reduction_non_strict_mode"):
        inductor_config.triton.mix_order_reduction_non_strict_mode = True


def eager_optimizer_state(optimizer) -> None:
    """Undo ``_make_capturable`` for an optimizer that runs outside graphs: a checkpoint saved by a
    CUDA-graph run carries device-tensor learning rates and ``capturable=True``, which an eager run
    (on a CPU, say) cannot use."""
    for group in optimizer.param_groups:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False
            if not group.get("fused"):
                for p in group["params"]:
                    state = optimizer.state.get(p, {})
                    if isinstance(state.get("step"), torch.Tensor) and state["step"].device.type != "cpu":
                        state["step"] = state["step"].cpu()


def _capturing() -> bool:
    return True


@contextlib.contextmanager
def as_if_capturing():
    """Warm-up runs take the branches the capture will take: ``torch.cuda.is_current_stream_capturing()``
    answers True inside. Model code branches on it: transformers skips an all-ones attention mask
    (letting SDPA use ``is_causal``) only when not capturing, since deciding reads the mask on the
    host. Without this, layers compiled in the warm-up run are compiled for "no mask", and the
    capture needs a new compilation for "a mask", which cannot happen inside a capture. The capture
    runs under it too: compiled code that calls the function guards on which function it is."""
    real = torch.cuda.is_current_stream_capturing
    torch.cuda.is_current_stream_capturing = _capturing
    try:
        yield
    finally:
        torch.cuda.is_current_stream_capturing = real


def _fused_adam(optimizer):
    """The torch Adam/AdamW under ``optimizer`` (accelerate wraps it) when it runs the fused kernel,
    which takes a divisor for the gradients; else None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if type(inner) in (torch.optim.Adam, torch.optim.AdamW) and all(g.get("fused") for g in inner.param_groups):
        return inner
    return None


def _capturable(optimizer) -> bool:
    return all("capturable" in g for g in optimizer.param_groups)


def _no_compiling():
    """Inside a capture, a torch.compile'd function that would compile (a new shape, a failed guard)
    raises instead. Compiling there breaks the capture at some host-side step, and a broken capture
    leaves the CUDA random-number generator unusable for the rest of the process."""
    return torch.compiler.set_stance("fail_on_recompile")


def _compile_due(error: BaseException) -> str | None:
    """Dynamo's reason when ``error`` (or an error it caused) is the stance above refusing to compile."""
    while error is not None:
        text = str(error)
        if "fail_on_recompile" in text:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("- ")]
            return "; ".join(lines[:3]) or text.splitlines()[0]
        error = error.__cause__ or error.__context__
    return None


def needs_pinning(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether a host tensor bound for ``device`` must be pinned first for its copy to be asynchronous.
    Before a copy from pageable host memory CUDA synchronizes the stream, so the host waits until the
    device has run everything queued (the previous step) before it can queue the next one. (On an
    H200 pinning cut mt-nllb's batch time from 5.9 to 1.7 ms a step, not the step: that step's
    whole-step graph kept the device busy anyway; mt-nllb BENCHMARKS.md, run 8.)"""
    return device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor.to(device, non_blocking=True)`` that does not make the host wait for the device: a host
    tensor bound for CUDA travels through pinned memory (torch's caching host allocator keeps the pinned
    copy until the transfer is done). A tensor already on ``device`` is returned as it is."""
    device = torch.device(device)
    if needs_pinning(tensor, device):
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _shape_key(batch: dict) -> tuple:
    return tuple((name, tuple(v.shape), v.dtype) for name, v in sorted(batch.items()) if isinstance(v, torch.Tensor))


def _describe(key: tuple) -> str:
    return " ".join(f"{name}{list(shape)}" for name, shape, _ in key)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _detach(out):
    if isinstance(out, (tuple, list)):
        return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in out)
    return out.detach()


def _clone(out):
    if isinstance(out, (tuple, list)):
        return tuple(o.clone() for o in out)
    return out.clone()

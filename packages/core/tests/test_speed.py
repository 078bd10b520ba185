"""The fast path on CPU: buckets, resolution, and TrainStep's equality with the eager step.

Real CUDA-graph capture needs a GPU (test_gpu.py runs it there); here a stand-in backend replays a
"graph" by re-running the captured function on the same static input buffers, which exercises
everything TrainStep itself does around capture: warm-up counts, input copies, cloned outputs,
in-place gradient zeroing, the optimizer captured after its first run, schedules that keep moving.
"""

import contextlib
import copy
import logging
import sys
from pathlib import Path

import pytest
import torch
from trainstack.optim import build_scheduler
from trainstack.speed import (
    BatchShapes,
    LengthBuckets,
    SpeedConfig,
    SpeedError,
    TrainStep,
    eager_optimizer_state,
    enable_compile_cache,
    resolve_speed,
)
from trainstack.speed.config import Speed
from trainstack.speed.step import as_if_capturing

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles new models through the same functions: Dynamo's per-function cache (and its
    recompile limit) must not carry over from one test to the next."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---- buckets -------------------------------------------------------------------------------------
def test_bucket_specs():
    assert LengthBuckets.parse("pow2", 200).sizes == (16, 32, 64, 128, 200)
    assert LengthBuckets.parse("multiple:64", 200).sizes == (64, 128, 192, 200)
    assert LengthBuckets.parse("48, 96", 128).sizes == (48, 96, 128)
    assert LengthBuckets.parse("off", 128) is None
    b = LengthBuckets.parse("pow2", 64)
    assert [b.bucket(n) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="exceeds the longest bucket 64"):
        b.bucket(65)
    with pytest.raises(ValueError, match="not a positive integer"):
        LengthBuckets.parse("multiple:x", 64)
    with pytest.raises(ValueError, match=r"exceed the maximum length 64"):
        LengthBuckets.parse("32,100", 64)


def test_bucket_pad_keeps_tokens():
    ids = torch.tensor([[5, 6, 7], [8, 0, 0]])
    out = LengthBuckets.parse("pow2", 64).pad(ids, pad_id=0)
    assert out.shape == (2, 16) and torch.equal(out[:, :3], ids) and not out[:, 3:].any()


def test_bad_bucket_spec_fails_at_config_time():
    with pytest.raises(ValueError, match="not a positive integer"):
        SpeedConfig(length_buckets="multiple:0")


def test_batch_shapes_cut_few_shapes_within_the_token_budget():
    shapes = BatchShapes(LengthBuckets.parse("multiple:64", 192), max_tokens=32 * 192, max_rows=256)
    assert shapes.key((37, 90)) == (64, 128) and shapes.shape((64, 128)) == (48, 64, 128)
    assert shapes.rows((64, 64)) == 96 and shapes.rows((192, 64)) == 32
    assert len(shapes.possible_shapes()) == 9
    assert shapes.describe() == "length buckets 64,128,192 per side, at most 9 batch shapes, 32 to 96 rows"
    shared = BatchShapes(shapes.buckets, max_tokens=32 * 192, max_rows=256, shared_length=True)
    assert shared.key((37, 90)) == (128, 128) and len(shared.possible_shapes()) == 3
    # rows below the multiple stay as they are; above it they round down to it
    assert BatchShapes(LengthBuckets((100,)), max_tokens=700, max_rows=99).rows((100,)) == 7
    assert BatchShapes(LengthBuckets((10,)), max_tokens=130, max_rows=99).rows((10,)) == 8
    with pytest.raises(ValueError, match="does not hold one row"):
        BatchShapes(LengthBuckets((64,)), max_tokens=32, max_rows=8)

    g = torch.Generator().manual_seed(0)
    lengths = [tuple(x) for x in torch.randint(1, 193, (500, 2), generator=g).tolist()]
    for plan in (shapes, shared):
        batches = plan.batches(lengths, seed=1, epoch=0)
        assert sorted(i for _, b in batches for i in b) == list(range(500))  # each row once
        for key, b in batches:
            rows = plan.rows(key)
            assert 0 < len(b) <= rows and rows * max(key) <= 32 * 192  # the shape holds it, within the budget
            assert all(n <= bucket for i in b for n, bucket in zip(lengths[i], key, strict=True))
        # leftovers move up to a larger key: one short batch at most, in the largest key
        short = [key for key, b in batches if len(b) < plan.rows(key)]
        assert short in ([], [(192, 192)])
        assert plan.batches(lengths, seed=1, epoch=0) == batches  # deterministic
        assert plan.batches(lengths, seed=1, epoch=1) != batches  # reshuffled per epoch
    assert {key for key, _ in shapes.batches(lengths, 1)} > {key for key, _ in shared.batches(lengths, 1)}


# ---- resolution ----------------------------------------------------------------------------------
def test_auto_is_off_on_cpu_and_says_so():
    s = resolve_speed(SpeedConfig(), "cpu", max_len=64)
    assert not s.compile and not s.cuda_graphs and not s.fast
    assert s.reason == "speed: compile off, CUDA graphs off (CPU)"  # eager batches are not bucketed
    on = resolve_speed(SpeedConfig(compile=True), "cpu", max_len=64)
    assert on.reason == "speed: compile on, CUDA graphs off, length buckets 16,32,64 (CPU)"


def test_compile_can_be_forced_on_cpu_but_graphs_cannot():
    assert resolve_speed(SpeedConfig(compile=True), "cpu").compile
    with pytest.raises(SpeedError, match="no CUDA device"):
        resolve_speed(SpeedConfig(cuda_graphs=True), "cpu")


def test_graphs_off_with_loss_scaling_or_several_processes(monkeypatch):
    # resolution only reads the device type: a CUDA device object needs no GPU
    s = resolve_speed(SpeedConfig(), torch.device("cuda"), use_grad_scaler=True)
    assert s.compile and not s.cuda_graphs and "fp16 loss scaling" in s.reason
    assert not resolve_speed(SpeedConfig(), torch.device("cuda"), world_size=2).cuda_graphs
    assert resolve_speed(SpeedConfig(), torch.device("cuda")).cuda_graphs
    # asked for under several processes: captured, gradients all-reduced after the captured backward
    asked = resolve_speed(SpeedConfig(cuda_graphs=True), torch.device("cuda"), world_size=2)
    assert asked.cuda_graphs and "all-reduced after the captured backward" in asked.reason



def test_a_task_blocker_turns_auto_graphs_off_with_its_reason_and_refuses_true():
    blocker = "a loss that reads a count back to the host"
    s = resolve_speed(SpeedConfig(), torch.device("cuda"), graph_blockers=[blocker])
    assert not s.cuda_graphs and not s.whole_step_graphs and s.compile
    assert s.reason == f"speed: compile on, CUDA graphs off (CUDA; no graphs: {blocker})"
    with pytest.raises(SpeedError, match=f"cannot work here \\({blocker}\\)"):
        resolve_speed(SpeedConfig(cuda_graphs=True), torch.device("cuda"), graph_blockers=[blocker])
    assert not resolve_speed(SpeedConfig(cuda_graphs=False), torch.device("cuda"), graph_blockers=[blocker]).cuda_graphs

def test_compile_cache_goes_under_trainstack_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINSTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    for var in ("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.setenv(var, "unset-by-test")  # restored afterwards
        monkeypatch.delenv(var)
    assert enable_compile_cache() == tmp_path / "compile"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile" / "inductor")
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "compile" / "flash_attn_cute")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice wins
    assert enable_compile_cache() == tmp_path


# ---- TrainStep equals the eager step ---------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 12)
        self.mix = torch.nn.Linear(12, 12)
        self.norm = torch.nn.LayerNorm(12)
        self.head = torch.nn.Linear(12, 20)

    def forward(self, ids):
        return self.head(self.norm(torch.nn.functional.gelu(self.mix(self.emb(ids)))))


def token_loss(model, batch):
    logits = model(batch["ids"])
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 20), batch["ids"][:, 1:].reshape(-1),
                                             ignore_index=0)
    return loss, (batch["ids"][:, 1:] != 0).sum()


def batches(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        width = (8, 16)[i % 2]  # two shapes, as two length buckets give
        ids = torch.randint(1, 20, (4, width), generator=g)
        ids[0, width // 2:] = 0  # some padding
        out.append({"ids": ids})
    return out


class ReplayByCall:
    """Stands in for CudaGraphs on CPU: capture records the function and undoes its effects (a real
    capture runs nothing); replay runs it again on the same input buffers and writes its results
    into the same output tensors, as a graph replay does."""

    needs_capturable_optimizer = False

    def __init__(self, model, optimizer):
        self.model, self.optimizer, self.captures = model, optimizer, 0

    @contextlib.contextmanager
    def warmup(self):
        yield

    def capture(self, fn):
        saved = ([None if p.grad is None else p.grad.clone() for p in self.model.parameters()],
                 [p.detach().clone() for p in self.model.parameters()],
                 copy.deepcopy(self.optimizer.state_dict()))
        outputs = fn()
        for p, g, w in zip(self.model.parameters(), saved[0], saved[1], strict=True):
            p.data.copy_(w)
            if g is not None:
                p.grad.copy_(g)
        self.optimizer.load_state_dict(saved[2])
        self.captures += 1
        static = None if outputs is None else tuple(o.clone() for o in _as_tuple(outputs))

        def replay():
            with as_if_capturing():  # a replay repeats what the capture recorded
                fresh = fn()
            if static is not None:
                for s, f in zip(static, _as_tuple(fresh), strict=True):
                    s.copy_(f)

        return replay, (static if isinstance(outputs, tuple) else (static[0] if static else None))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _speed(compile=False, graphs=False, backend="aot_eager", dynamic=False):
    return Speed(compile=compile, cuda_graphs=graphs, compile_mode="default", compile_backend=backend,
                 warmup_runs=1, length_buckets="pow2", reason="test", compile_dynamic=dynamic)


def train(speed, data, accum=2, graphs_backend=None):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=len(data) // accum)
    backend = graphs_backend(model, opt) if graphs_backend else None
    step = TrainStep(model, token_loss, opt, speed, scheduler=sched, grad_accum_steps=accum, max_grad_norm=0.5,
                     graphs=backend)
    losses, tokens, lrs = [], [], []
    for i, batch in enumerate(data):
        loss, real = step.micro(batch)
        losses.append(loss)
        tokens.append(int(real))
        if (i + 1) % accum == 0:
            step.optimizer_step()
            lrs.append(float(opt.param_groups[0]["lr"]))
    return torch.stack(losses), tokens, lrs, [p.detach().clone() for p in model.parameters()], step, backend


def test_compiled_step_equals_eager_step():
    data = batches(12)
    ref_losses, ref_tokens, ref_lrs, ref_params, _, _ = train(_speed(), data)
    losses, tokens, lrs, params, step, _ = train(_speed(compile=True), data)
    # fp32, same kernels traced: equal up to float rounding of a reordered sum
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert tokens == ref_tokens and lrs == pytest.approx(ref_lrs)
    assert step.stats.compiled_graphs == 2 and step.stats.recompiles == 0  # one per shape
    assert step.stats.first_step_seconds is not None and len(step.stats.shapes) == 2


def test_dynamic_compile_serves_every_shape_with_one_graph():
    """compile_dynamic: one compilation for all the shapes (here three widths and three row counts,
    the first with as many rows as tokens: no duck sizing ties them), and the same losses and weights
    as the eager step."""
    g = torch.Generator().manual_seed(5)
    data = [{"ids": torch.randint(1, 20, (rows, width), generator=g)} for rows, width in
            [(8, 8), (4, 16), (6, 24), (4, 8), (6, 16), (8, 24)]]
    ref_losses, _, _, ref_params, _, _ = train(_speed(), data)
    losses, _, _, params, step, _ = train(_speed(compile=True, dynamic=True), data)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert len(step.stats.shapes) == 6 and step.stats.compiled_graphs == 1 and step.stats.recompiles == 0
    # On a GPU, Inductor's size test for fusing a norm's two reductions would guard on the batch's tokens.
    import torch._inductor.config as inductor_config
    assert getattr(inductor_config.triton, "mix_order_reduction_non_strict_mode", True) is True
    assert resolve_speed(SpeedConfig(compile=True, compile_dynamic=True), "cpu").reason.startswith(
        "speed: compile on, dynamic shapes, CUDA graphs off")
    assert not resolve_speed(SpeedConfig(compile_dynamic=True), "cpu").compile_dynamic  # nothing compiled


def test_replayed_step_equals_eager_step():
    data = batches(12)
    ref_losses, _, ref_lrs, ref_params, _, _ = train(_speed(), data)
    losses, _, lrs, params, step, backend = train(_speed(graphs=True), data, graphs_backend=ReplayByCall)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-7)
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert lrs == pytest.approx(ref_lrs)  # the schedule still moves under the captured optimizer
    assert backend.captures == 3 and step.stats.captured_graphs == 3  # two shapes + the optimizer
    assert len({id(x) for x in losses}) == len(losses)  # each loss is the caller's own tensor


@pytest.mark.parametrize("whole", [True, False])
def test_one_micro_batch_per_step_replays_forward_backward_and_update_as_one_graph(whole):
    """grad_accum_steps 1: each shape's graph holds the update too (no optimizer graph, no gradient
    buffers kept between steps), and trains as the eager step does; whole_step_graphs=false keeps the
    separate optimizer graph."""
    import dataclasses

    data = batches(10)
    ref_losses, _, ref_lrs, ref_params, ref_step, _ = train(_speed(), data, accum=1)
    speed = dataclasses.replace(_speed(graphs=True), whole_step_graphs=whole)
    losses, _, lrs, params, step, backend = train(speed, data, accum=1, graphs_backend=ReplayByCall)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-7)
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert lrs == pytest.approx(ref_lrs)
    torch.testing.assert_close(step.grad_norm, ref_step.grad_norm)  # the captured norm, as clipping saw it
    assert backend.captures == (2 if whole else 3) and step.stats.captured_graphs == backend.captures
    assert all(p.grad is None for p in step.model.parameters()) == whole


def test_a_whole_step_graph_must_be_followed_by_the_optimizer_step():
    data = batches(4)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = TrainStep(model, token_loss, opt, _speed(graphs=True), graphs=ReplayByCall(model, opt))
    for batch in data[:2]:  # each shape's warm-up run
        step.micro(batch)
        step.optimizer_step()
    step.micro(data[2])  # captured and replayed: the weights moved already
    with pytest.raises(RuntimeError, match="call optimizer_step"):
        step.micro(data[3])
    step.optimizer_step()
    step.micro(data[3])  # replayed: the other shape's graph
    step.optimizer_step()
    assert step.stats.captured_graphs == 2


def test_short_window_is_rescaled_to_its_mean():
    data = batches(3)
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    step = TrainStep(a, token_loss, torch.optim.SGD(a.parameters(), lr=0.0), _speed(), grad_accum_steps=4)
    for batch in data:
        step.micro(batch)
    grads = [p.grad.clone() for p in a.parameters()]
    step.optimizer_step(window=3)
    ref = [torch.zeros_like(p) for p in b.parameters()]
    for batch in data:
        b.zero_grad()
        token_loss(b, batch)[0].backward()
        for r, p in zip(ref, b.parameters(), strict=True):
            r += p.grad / 3
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g * 4 / 3, r, rtol=1e-5, atol=1e-7)


def test_a_recompile_for_a_known_shape_is_counted_and_warned(caplog):
    flag = {"scale": 1.0}

    def loss_reading_a_python_value(model, batch):
        return token_loss(model, batch)[0] * flag["scale"]

    torch.manual_seed(0)
    model = Tiny()
    step = TrainStep(model, loss_reading_a_python_value, torch.optim.SGD(model.parameters(), lr=0.1),
                     _speed(compile=True))
    batch = batches(1)[0]
    step.micro(batch)
    flag["scale"] = 2.0  # a guard on the value fails: Dynamo compiles again for the same shape
    with caplog.at_level(logging.WARNING):
        step.micro(batch)
    assert step.stats.recompiles == 1
    assert "recompiled for an input shape already compiled" in caplog.text


def _compiled_graph_step(loss_fn):
    """A compiled step under stand-in graphs, with an optimizer that does not move the weights."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    backend = ReplayByCall(model, opt)
    return TrainStep(model, loss_fn, opt, _speed(compile=True, graphs=True), graphs=backend), backend, model


def test_a_compilation_due_inside_a_capture_defers_the_capture(caplog):
    """A guard that fails between the warm-up run and the capture (here a Python value the loss reads)
    would compile inside the capture, which breaks a real one: the capture is refused before compiling,
    that batch runs uncaptured (and compiles), and the shape is captured at its next batch."""
    flag = {"scale": 1.0}

    def loss_reading_a_python_value(model, batch):
        loss, real = token_loss(model, batch)
        return loss * flag["scale"], real

    step, backend, model = _compiled_graph_step(loss_reading_a_python_value)
    batch = batches(1)[0]
    step.micro(batch)  # warm-up run: compiles for scale 1
    step.optimizer_step()
    flag["scale"] = 2.0
    with caplog.at_level(logging.WARNING):
        deferred = step.micro(batch)[0]
    step.optimizer_step()
    assert "deferred: a compilation was due inside it" in caplog.text and "scale" in caplog.text
    assert backend.captures == 0 and step.stats.captured_graphs == 0
    assert float(deferred) == pytest.approx(2 * float(token_loss(model, batch)[0].detach()))  # it ran, compiled
    replayed = step.micro(batch)[0]
    step.optimizer_step()
    assert backend.captures == 1 and step.stats.captured_graphs == 1
    assert float(replayed) == pytest.approx(float(deferred))


def test_warm_up_runs_take_the_branch_the_capture_takes():
    """Model code that branches on whether a capture is on (transformers builds an explicit attention
    mask then) sees the same answer in the warm-up run as in the capture, so the graph compiled in
    the warm-up serves the capture: no compilation deferred, captured at the second batch."""
    def loss_branching_on_capture(model, batch):
        loss, real = token_loss(model, batch)
        return (loss * 2 if torch.cuda.is_current_stream_capturing() else loss), real

    step, backend, _ = _compiled_graph_step(loss_branching_on_capture)
    batch = batches(1)[0]
    warm = step.micro(batch)[0]
    step.optimizer_step()
    replayed = step.micro(batch)[0]
    assert backend.captures == 1 and step.stats.compiled_graphs == 1
    assert float(replayed) == pytest.approx(float(warm))
    assert torch.cuda.is_current_stream_capturing.__name__ == "is_current_stream_capturing"  # restored


def test_an_optimizer_without_a_capturable_mode_means_no_capture_at_all(caplog):
    """Known at construction (bitsandbytes' 8-bit AdamW, SGD): no micro-step is captured first, whose
    graph would hold its activations in the pool for nothing."""
    class NeedsCapturable(ReplayByCall):
        needs_capturable_optimizer = True

    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    backend = NeedsCapturable(model, opt)
    with caplog.at_level(logging.WARNING):
        step = TrainStep(model, token_loss, opt, _speed(graphs=True), graphs=backend)
    assert "CUDA graphs switched off for this run: SGD has no capturable mode" in caplog.text
    for batch in batches(4):
        step.micro(batch)
    step.optimizer_step()
    assert backend.captures == 0 and step.stats.captured_graphs == 0


def test_clipping_inside_fused_adamw_equals_clip_grad_norm(monkeypatch):
    """With fused Adam(W) the step clips through the kernel's gradient divisor (one pass over the
    gradients fewer): same weights and norms as clip_grad_norm_ then step."""
    data = batches(6)
    clip = torch.nn.utils.clip_grad_norm_

    def run(clip_in_kernel: bool):
        torch.manual_seed(0)
        model = Tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
        step = TrainStep(model, token_loss, opt, _speed(), max_grad_norm=0.05)
        norms = []
        for batch in data:
            if clip_in_kernel:
                monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", None)  # the step must not call it
                step.micro(batch)
                norms.append(float(step.optimizer_step()))
                monkeypatch.undo()
                continue
            token_loss(model, batch)[0].backward()
            norms.append(float(clip(model.parameters(), 0.05)))
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert not hasattr(opt, "grad_scale")  # nothing left for a later step
        return norms, [p.detach().clone() for p in model.parameters()]

    norms, params = run(True)
    ref_norms, ref_params = run(False)
    assert norms == pytest.approx(ref_norms, rel=1e-6) and max(norms) > 0.05  # clipping was active
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_eager_optimizer_state_undoes_capturable_settings():
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for g in opt.param_groups:
        g["lr"], g["capturable"] = torch.tensor(1e-3), True
    eager_optimizer_state(opt)
    assert all(type(g["lr"]) is float and not g["capturable"] for g in opt.param_groups)


@pytest.mark.slow
def test_inductor_compiled_step_equals_eager_on_cpu(tmp_path, monkeypatch):
    """The real code generator (C++ on CPU, Triton on GPU): about a minute of compiling on 2 cores."""
    monkeypatch.setenv("TRAINSTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    data = [b for b in batches(8) if b["ids"].shape[1] == 8]  # one shape: one compilation
    ref_losses, _, _, ref_params, _, _ = train(_speed(), data)
    losses, _, _, params, step, _ = train(_speed(compile=True, backend="inductor"), data)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-4, atol=1e-5)
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert step.stats.compiled_graphs == 1 and step.stats.recompiles == 0


def test_fit_on_the_fast_path_equals_fit_eager(tmp_path):
    """fit(speed=...) goes through TrainStep (compiled here) and keeps the eager run's losses."""
    from trainstack.loop import LoopConfig, fit
    from trainstack.precision import resolve_precision

    def run(speed, name):
        torch.manual_seed(0)
        model = Tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=6)

        cfg = LoopConfig(max_steps=6, grad_accum_steps=2, log_every_steps=1, tensorboard=False, max_grad_norm=0.5)
        res = fit(model=model, optimizer=opt, scheduler=sched, train_batches=_toy.ListBatches(batches(12)),
                  loss_fn=token_loss, config=cfg, run_dir=tmp_path / name, precision=resolve_precision("fp32"), progress=False,
                  speed=speed)
        return [r["loss"] for r in res.history if "loss" in r], res.history

    ref, _ = run(None, "eager")
    fast, history = run(_speed(compile=True), "fast")
    assert fast == pytest.approx(ref, rel=1e-5)
    assert history[-1]["compiled_graphs"] == 2 and history[-1]["recompiles"] == 0
    assert history[-1]["first_step_seconds"] > 0


# ---- cold start: the compile cache on disk, time to the first step --------------------------------
def test_the_inductor_default_dir_in_the_environment_is_not_the_users_choice(monkeypatch, tmp_path):
    """Inductor writes its temporary default into TORCHINDUCTOR_CACHE_DIR the first time it is asked
    (importing some libraries asks): ours must still win over that, and lose to a directory the user set."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TRAINSTACK_CACHE_DIR", str(tmp_path))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(var, "unset-by-test")  # restored afterwards
        monkeypatch.delenv(var)
    import os

    cache_dir()  # what an import does: the default goes into the environment
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] != str(tmp_path / "compile" / "inductor")
    assert enable_compile_cache() == tmp_path / "compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert enable_compile_cache() == tmp_path


COMPILE_ONCE = """
import json, torch
from transformers import EsmConfig  # an import that sets Inductor's default cache directory
from trainstack.speed import compile_cache_use, enable_compile_cache
enable_compile_cache()
f = torch.compile(lambda x: (x * 2).sin().sum(), dynamic=False)
f(torch.randn(8, requires_grad=True)).backward()
print(json.dumps(compile_cache_use()))
"""


def test_a_second_process_finds_the_first_ones_graphs(tmp_path):
    """Inductor (on this CPU) in two fresh processes sharing TRAINSTACK_CACHE_DIR: the first compiles
    (cold), the second loads every graph from the cache (warm)."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["TRAINSTACK_CACHE_DIR"] = str(tmp_path)
    runs = [json.loads(subprocess.run([sys.executable, "-c", COMPILE_ONCE], env=env, capture_output=True, text=True,
                                      check=True, timeout=300).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert runs[0]["compile_cache"] == "cold" and runs[0]["compile_cache_misses"] > 0
    assert runs[1] == {"compile_cache": "warm", "compile_cache_hits": runs[0]["compile_cache_misses"],
                       "compile_cache_misses": 0}
    assert (tmp_path / "compile" / "inductor").is_dir()


def test_fit_logs_the_time_to_the_first_step_from_its_clock_start(tmp_path, capsys):
    """Eager fit too: the first optimizer step's time counts from clock_start (a process start, say),
    is printed once and rides in every log record with the compile cache's use."""
    import time

    from trainstack.loop import LoopConfig, fit
    from trainstack.precision import resolve_precision

    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    res = fit(model=model, optimizer=opt, scheduler=None, train_batches=_toy.ListBatches(batches(4)),
              loss_fn=token_loss, config=LoopConfig(max_steps=3, log_every_steps=1, tensorboard=False),
              run_dir=tmp_path, precision=resolve_precision("fp32"), progress=False,
              clock_start=time.perf_counter() - 100.0)
    steps = [r for r in res.history if "loss" in r]
    assert len(steps) == 3
    first = steps[0]["first_step_seconds"]
    assert 100.0 <= first < 160.0 and all(r["first_step_seconds"] == first for r in steps)
    before_loop = steps[0]["seconds_before_loop"]   # fit's own set-up counts, the first step does not
    assert 100.0 <= before_loop <= first and all(r["seconds_before_loop"] == before_loop for r in steps)
    assert all(r["compile_cache"] == "unused" for r in steps)
    assert capsys.readouterr().out.count(
        f"first optimizer step after {first:.1f} s ({before_loop:.1f} s before the training loop)") == 1


def test_host_batches_bound_for_cuda_are_pinned_before_the_copy():
    """A copy from pageable memory would make the host wait for the previous step on the device."""
    from trainstack.speed.step import needs_pinning

    host = torch.zeros(4, dtype=torch.long)
    assert needs_pinning(host, torch.device("cuda"))
    assert not needs_pinning(host, torch.device("cpu"))  # a CPU run copies nothing
    assert not needs_pinning(torch.zeros(4, device="meta"), torch.device("cuda"))  # not in host memory

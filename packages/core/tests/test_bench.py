import json

import pytest
import torch
from torch import nn
from trainstack.bench import BenchResult, compare, device_banner, time_steps


def _step_fn(calls):
    model = nn.Linear(16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 16)

    def step():
        calls.append(1)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    return step


def test_time_steps_counts_warmup_and_timed_steps():
    calls = []
    r = time_steps(_step_fn(calls), warmup_steps=2, timed_steps=5, real_tokens_per_step=100, samples_per_step=8,
                   flops_per_token=1e6, name="tiny")
    assert len(calls) == 7
    assert (r.name, r.steps, r.real_tokens, r.samples) == ("tiny", 5, 500, 40)
    assert r.seconds > 0 and r.tokens_per_s == pytest.approx(500 / r.seconds)
    assert r.samples_per_s == pytest.approx(40 / r.seconds)
    assert r.mfu is None and r.peak_memory_gib is None  # CPU: no GPU peak to compare against
    assert r.extra["timer"] == "host" and r.extra["device"] == "cpu"


def test_time_steps_variable_tokens_per_step():
    r = time_steps(lambda: None, warmup_steps=0, timed_steps=3, real_tokens_per_step=lambda i: 10 * (i + 1),
                   samples_per_step=lambda i: 1)
    assert r.real_tokens == 60 and r.samples == 3
    with pytest.raises(ValueError):
        time_steps(lambda: None, warmup_steps=0, timed_steps=0, real_tokens_per_step=1, samples_per_step=1)


def _result(name, tps, mem):
    return BenchResult(name=name, steps=10, seconds=1.0, real_tokens=int(tps), samples=10, tokens_per_s=tps,
                       samples_per_s=10.0, mfu=None, peak_memory_gib=mem, extra={"timer": "cuda_events"})


def test_compare_table_and_json_ratios():
    out = compare([_result("ours", 3000.0, 4.0), _result("baseline", 1000.0, 8.0)], baseline="baseline")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "steps", "ms/step", "tokens/s"]
    assert any(line.startswith("ours") and "3.00x" in line and "0.50x" in line for line in lines)
    data = json.loads(lines[-1])
    ratios = {r["name"]: (r["speedup"], r["memory_ratio"]) for r in data["results"]}
    assert ratios == {"ours": (3.0, 0.5), "baseline": (1.0, 1.0)}
    assert data["baseline"] == "baseline" and data["cpu_figures"] is False
    assert not out.startswith("CPU figures")


def test_compare_on_cpu_says_so():
    calls = []
    a = time_steps(_step_fn(calls), warmup_steps=1, timed_steps=2, real_tokens_per_step=10, samples_per_step=1, name="a")
    b = time_steps(_step_fn(calls), warmup_steps=1, timed_steps=2, real_tokens_per_step=10, samples_per_step=1, name="b")
    out = compare([a, b], baseline="b")
    assert out.startswith("CPU figures")
    data = json.loads(out.splitlines()[-1])
    assert data["cpu_figures"] is True
    assert data["results"][1]["speedup"] == 1.0 and data["results"][0]["memory_ratio"] is None
    with pytest.raises(ValueError, match="baseline 'zzz' not among results: a, b"):
        compare([a, b], baseline="zzz")


def test_device_banner_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    banner = device_banner()
    assert banner.startswith("CPU figures (no GPU)") and f"torch {torch.__version__}" in banner


def test_compare_counts_a_package_timed_gpu_result_as_gpu():
    def manual(name, device):
        return BenchResult(name=name, steps=5, seconds=1.0, real_tokens=100, samples=5, tokens_per_s=100.0,
                           samples_per_s=5.0, mfu=None, peak_memory_gib=None, extra={"device": device})

    on_gpu = json.loads(compare([manual("a", "NVIDIA H100 80GB HBM3"), manual("b", "cpu")], baseline="b").splitlines()[-1])
    on_cpu = json.loads(compare([manual("a", "cpu"), manual("b", "cpu")], baseline="b").splitlines()[-1])
    assert on_gpu["cpu_figures"] is False and on_cpu["cpu_figures"] is True


def _fixed_shape_batches(n: int):
    # one input shape, so the compiled step compiles once
    import _toy

    g = torch.Generator().manual_seed(7)
    return _toy.ListBatches({"ids": torch.randint(1, _toy.VOCAB, (8, 12), generator=g), "mask": torch.ones(8, 12)}
                            for _ in range(n))


@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_fit_step_takes_the_steps_fit_takes(tmp_path, path):
    """FitStep is what package benches time: N calls must leave the weights that N steps of fit leave
    (dropout on, accumulation 2, clipping, a warmup schedule), eager and on the fast path (compiled,
    aot_eager on CPU), or a bench measures another loop."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _toy
    from trainstack.bench import FitStep
    from trainstack.loop import LoopConfig, fit
    from trainstack.optim import build_optimizer, build_scheduler
    from trainstack.precision import resolve_precision
    from trainstack.speed import Speed

    speed = None if path == "eager" else Speed(compile=True, cuda_graphs=False, compile_mode="default",
                                                compile_backend="aot_eager", warmup_runs=1, length_buckets="pow2",
                                                reason="test")
    cfg = LoopConfig(max_steps=5, grad_accum_steps=2, max_grad_norm=0.05, log_every_steps=1, seed=3,
                     tensorboard=False)

    def parts():
        torch.manual_seed(0)
        model = _toy.Toy()
        opt = build_optimizer(model, "adamw", lr=3e-2, weight_decay=0.1)
        batches = _toy.make_batches("tokens") if speed is None else _fixed_shape_batches(10)
        return model, opt, build_scheduler(opt, "cosine", warmup_steps=2, total_steps=5), batches

    model, opt, sched, batches = parts()
    result = fit(model=model, optimizer=opt, scheduler=sched, train_batches=batches, loss_fn=_toy.loss_fn, config=cfg,
                 run_dir=tmp_path, precision=resolve_precision("fp32"), progress=False, speed=speed)
    model2, opt2, sched2, batches2 = parts()
    step = FitStep(model=model2, optimizer=opt2, scheduler=sched2, train_batches=batches2, loss_fn=_toy.loss_fn,
                   config=cfg, precision=resolve_precision("fp32"), speed=speed)
    for _ in range(5):
        step()
    for (name, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert sched2.last_epoch == 5 and len(step.samples) == 5 and all(s > 0 for s in step.samples)
    assert step.real_tokens_of(0) > 0
    # each step's mean micro-batch loss, as fit logs it every step here
    assert [float(x) for x in step.losses] == pytest.approx([r["loss"] for r in result.history if "loss" in r],
                                                            rel=1e-6)
    assert (step.train_step is None) == (speed is None)
    if speed is not None:  # (fit compiled the graph FitStep reuses: dynamo caches it per code object)
        assert step.stats["recompiles"] == 0 and step.stats["first_step_seconds"] > 0

"""CUDA paths: skipped on CPU-only machines. On the GPU machine (no pytest there) run
`python3 packages/core/tests/test_gpu.py` with PYTHONPATH=packages/core/src."""

import json

import torch
from torch import nn

try:  # the GPU machine has no pytest: this file then runs as a script (see the bottom)
    import pytest

    pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
except ImportError:
    pass


def test_detect_and_precision_on_gpu():
    from trainstack.hardware import detect_hardware
    from trainstack.metrics import peak_bf16_flops
    from trainstack.precision import apply_precision, resolve_precision

    hw = detect_hardware()
    assert hw.has_gpu and hw.gpu.memory_gib > 1
    p = resolve_precision("auto", hw)
    assert p.name == ("bf16" if hw.gpu.capability >= (8, 0) else "fp16")
    apply_precision(p)
    x = torch.randn(64, 64, device="cuda")
    with p.autocast("cuda"):
        assert (x @ x).dtype == p.dtype
    print("gpu:", hw.describe(), "| peak", peak_bf16_flops(hw.gpu), "|", p.reason)


def test_fused_adamw_bench_and_memory():
    from trainstack.bench import compare, device_banner, time_steps
    from trainstack.memory import memory_report
    from trainstack.optim import build_optimizer

    def make_step(width):
        model = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)).cuda()
        opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
        assert opt.defaults["fused"] is True
        x = torch.randn(64, 128, width, device="cuda")

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()

        return step

    tokens = 64 * 128
    big = time_steps(make_step(1024), warmup_steps=3, timed_steps=10, real_tokens_per_step=tokens,
                     samples_per_step=64, flops_per_token=6 * 8 * 1024 * 1024, name="big")
    small = time_steps(make_step(256), warmup_steps=3, timed_steps=10, real_tokens_per_step=tokens,
                       samples_per_step=64, flops_per_token=6 * 8 * 256 * 256, name="small")
    assert big.extra["timer"] == "cuda_events" and big.peak_memory_gib > 0 and big.mfu is not None
    print(device_banner())
    out = compare([big, small], baseline="small")
    print(out)
    data = json.loads(out.splitlines()[-1])
    assert data["cpu_figures"] is False
    rep = memory_report()
    assert rep.gpu_allocated_gib > 0 and rep.gpu_peak_gib >= rep.gpu_allocated_gib
    print("memory:", rep.as_dict())


def _train_tiny(speed, steps=12, accum=2, dropout=0.0):
    """A tiny transformer-ish model for ``steps`` micro-batches of two shapes, fp32, fused AdamW with
    a warm-up + cosine schedule and clipping: what a package's step does, small."""
    import time

    from trainstack.optim import build_optimizer, build_scheduler
    from trainstack.speed import TrainStep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Dropout(dropout), nn.Linear(64, 256), nn.GELU(),
                          nn.Linear(256, 64), nn.LayerNorm(64), nn.Linear(64, 50)).cuda()
    opt = build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=steps // accum)

    def loss_fn(m, batch):
        logits = m(batch["ids"])
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), batch["ids"][:, 1:].reshape(-1))

    step = TrainStep(model, loss_fn, opt, speed, scheduler=sched, grad_accum_steps=accum, max_grad_norm=1.0)
    g = torch.Generator(device="cuda").manual_seed(1)
    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
        ids = torch.randint(0, 50, (8, (16, 32)[i % 2]), device="cuda", generator=g)
        losses.append(step.micro({"ids": ids}))
        if (i + 1) % accum == 0:
            step.optimizer_step()
    torch.cuda.synchronize()
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()], step, time.perf_counter() - t0


def test_captured_and_compiled_steps_equal_the_eager_step():
    from trainstack.speed import SpeedConfig, resolve_speed

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 arithmetic on both sides: differences are rounding
    eager = resolve_speed(SpeedConfig(compile=False, cuda_graphs=False), "cuda")
    ref_losses, ref_params, _, _ = _train_tiny(eager)
    for name, cfg in (("graphs", SpeedConfig(compile=False, cuda_graphs=True)),
                      ("compile", SpeedConfig(compile=True, cuda_graphs=False)),
                      ("compile+graphs", SpeedConfig(compile=True, cuda_graphs=True))):
        losses, params, step, seconds = _train_tiny(resolve_speed(cfg, "cuda"))
        loss_diff = float((losses - ref_losses).abs().max())
        param_diff = max(float((p - q).abs().max()) for p, q in zip(params, ref_params, strict=True))
        print(f"{name}: max |loss diff| {loss_diff:.2e}, max |weight diff| {param_diff:.2e}, "
              f"{step.stats.as_dict()}, {seconds:.1f} s")
        assert loss_diff < 1e-4 and param_diff < 1e-4, name
        if cfg.cuda_graphs:
            assert step.stats.captured_graphs == 3  # two shapes and the optimizer step
        if cfg.compile:
            assert step.stats.recompiles == 0
    torch.backends.cuda.matmul.allow_tf32 = True


def test_a_host_batch_reaches_the_device_through_pinned_memory():
    from trainstack.speed import to_device

    host = torch.arange(12).reshape(3, 4)
    on_device = to_device(host, "cuda")
    assert on_device.is_cuda and torch.equal(on_device.cpu(), host)
    assert not host.is_pinned()  # the caller's tensor is left as it was; a pinned copy travelled


if __name__ == "__main__":
    test_detect_and_precision_on_gpu()
    test_fused_adamw_bench_and_memory()
    test_captured_and_compiled_steps_equal_the_eager_step()
    test_a_host_batch_reaches_the_device_through_pinned_memory()
    print("GPU checks passed")

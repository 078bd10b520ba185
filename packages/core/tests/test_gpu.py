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


if __name__ == "__main__":
    test_detect_and_precision_on_gpu()
    test_fused_adamw_bench_and_memory()
    print("GPU checks passed")

import math

import pytest
import torch
from torch import nn
from trainstack import optim as optim_mod
from trainstack.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups


class MyRMSNorm(nn.Module):  # a model-specific norm, like LlamaRMSNorm
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.gain2d = nn.Parameter(torch.ones(1, d))  # 2-D but inside a norm: no decay


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.norm = MyRMSNorm(4)
        self.scale = nn.Parameter(torch.ones(()))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_param_groups_split():
    m = Tiny()
    groups = param_groups(m, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(m.emb.weight), id(m.lin.weight)}
    assert no_decay == {id(m.lin.bias), id(m.ln.weight), id(m.ln.bias), id(m.norm.weight), id(m.norm.gain2d),
                        id(m.scale)}
    assert len(groups[0]["params"]) == 2  # the tied head weight is not listed twice


def test_adamw_applies_decoupled_decay_only_to_decay_group():
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.bias.fill_(1.0)
    opt = build_optimizer(m, "adamw", lr=0.1, weight_decay=0.5)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is False  # CPU params
    m.weight.grad = torch.zeros_like(m.weight)
    m.bias.grad = torch.zeros_like(m.bias)
    opt.step()
    # zero grads: Adam's update is 0, so only decoupled decay moves weights: w *= 1 - lr * wd
    assert torch.allclose(m.weight, torch.full_like(m.weight, 1 - 0.1 * 0.5))
    assert torch.allclose(m.bias, torch.ones_like(m.bias))


def test_adam_and_betas_eps_passed_through():
    opt = build_optimizer(nn.Linear(2, 2), "adam", lr=2e-4, betas=(0.9, 0.95), eps=1e-6)
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-6
    assert opt.param_groups[0]["lr"] == 2e-4


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(optim_mod, "HAS_BITSANDBYTES", False)
    with pytest.raises(ImportError, match="needs bitsandbytes.*trainstack-core\\[bnb\\]"):
        build_optimizer(nn.Linear(2, 2), "adamw8bit")


def test_adafactor_uses_explicit_lr():
    opt = build_optimizer(nn.Linear(2, 2), "adafactor", lr=1e-3, weight_decay=0.01)
    assert type(opt).__name__ == "Adafactor"
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_unknown_optimizer_and_no_params():
    with pytest.raises(ValueError, match="allowed: adamw, adam, adamw8bit, adafactor"):
        build_optimizer(nn.Linear(2, 2), "sgdd")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen)


W, T = 10, 110


@pytest.mark.parametrize("step", [0, 4, 9])
def test_warmup_is_linear(step):
    for schedule in ("cosine", "linear", "constant"):
        assert lr_multiplier(schedule, step, W, T) == pytest.approx((step + 1) / W)


@pytest.mark.parametrize("step, expected", [(10, 1.0), (35, (1 + math.cos(math.pi / 4)) / 2), (60, 0.5), (110, 0.0),
                                            (500, 0.0)])
def test_cosine_closed_form(step, expected):
    assert lr_multiplier("cosine", step, W, T) == pytest.approx(expected)
    floor = 0.1
    assert lr_multiplier("cosine", step, W, T, floor) == pytest.approx(floor + (1 - floor) * expected)


def test_linear_decays_to_floor_esm2():
    # ESM-2: warmup 2000 steps, then linear decay to a tenth of the peak at 500k steps
    w, t = 2000, 500_000
    assert lr_multiplier("linear", w, w, t, 0.1) == pytest.approx(1.0)
    assert lr_multiplier("linear", (w + t) // 2, w, t, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier("linear", t, w, t, 0.1) == pytest.approx(0.1)
    assert lr_multiplier("linear", 10 * t, w, t, 0.1) == pytest.approx(0.1)
    assert lr_multiplier("linear", 35, W, T) == pytest.approx(1 - 25 / 100)


def test_constant_and_no_warmup():
    assert lr_multiplier("constant", 1000, 0, 10) == 1.0
    assert lr_multiplier("cosine", 0, 0, 100) == 1.0


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="allowed: cosine, linear, constant"):
        lr_multiplier("step", 0, 0, 10)
    with pytest.raises(ValueError, match="floor"):
        lr_multiplier("linear", 0, 0, 10, floor=2)


def test_scheduler_drives_optimizer_lr_and_pickles():
    import pickle

    m = nn.Linear(2, 2)
    opt = build_optimizer(m, "adamw", lr=1e-3)
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=6, floor=0.1)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * lr_multiplier("cosine", s, 2, 6, 0.1) for s in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(5e-4) and seen[-1] == pytest.approx(1e-4)
    pickle.dumps(sched.state_dict())
    with pytest.raises(ValueError):
        build_scheduler(opt, "nope", 0, 10)


def test_describe_optimizer_names_the_kernel_that_runs():
    from trainstack.optim import describe_optimizer

    m = nn.Linear(4, 4)
    assert describe_optimizer(torch.optim.AdamW(m.parameters(), fused=True)) == \
        "torch.optim.AdamW fused (parameters on cpu)"
    assert describe_optimizer(torch.optim.AdamW(m.parameters(), foreach=True)).startswith("torch.optim.AdamW foreach")
    # foreach=None is torch's choice at step time: the per-tensor loop for CPU parameters. This is what
    # build_optimizer gets when the model is still on the CPU while the run is meant for a GPU.
    assert describe_optimizer(build_optimizer(m, "adamw")) == "torch.optim.AdamW for-loop (parameters on cpu)"
    assert describe_optimizer(build_optimizer(m, "adam", fused=True)).startswith("torch.optim.Adam fused")


def test_describe_optimizer_looks_through_wrappers_and_names_other_libraries():
    from accelerate import Accelerator
    from trainstack.optim import describe_optimizer

    m = nn.Linear(4, 4)
    inner = torch.optim.AdamW(m.parameters(), fused=True)
    wrapped = Accelerator(cpu=True).prepare(inner)
    assert wrapped is not inner and describe_optimizer(wrapped) == describe_optimizer(inner)
    # Stand-ins with the real classes' module paths: neither library runs on this CPU-only host.
    bnb = type("AdamW8bit", (), {"__module__": "bitsandbytes.optim.adamw"})()
    assert describe_optimizer(bnb) == "bitsandbytes AdamW8bit (8-bit states)"
    zero = type("DeepSpeedZeroOptimizer", (), {"__module__": "deepspeed.runtime.zero.stage_1_and_2"})()
    zero.optimizer = inner
    assert describe_optimizer(zero) == ("DeepSpeed's DeepSpeedZeroOptimizer over torch.optim.AdamW fused "
                                        "(parameters on cpu)")
    fused_adam = type("FusedAdam", (), {"__module__": "deepspeed.ops.adam.fused_adam"})()
    assert describe_optimizer(fused_adam) == "DeepSpeed's FusedAdam"

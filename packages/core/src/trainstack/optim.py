"""Optimizers with sensible parameter groups, and warmup + decay schedules.

    opt = build_optimizer(model, "adamw", lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    sched = build_scheduler(opt, "linear", warmup_steps=2000, total_steps=500_000, floor=0.1)  # ESM-2
    print(f"optimizer: {describe_optimizer(opt)}")  # "torch.optim.AdamW fused (parameters on cuda:0)"

Build the optimizer after the model is on its device: ``fused=None`` picks the fused kernel only
when every parameter is already on CUDA, so an optimizer built on CPU parameters silently runs the
slower per-tensor path after the model moves.

Schedules are multipliers of the peak lr, stepped once per optimizer step:
  warmup   step < W:  (step + 1) / W           (the first step already trains; it reaches 1 at W - 1)
  then     p = clamp((step - W) / (T - W), 0, 1)
    cosine:   floor + (1 - floor) * (1 + cos(pi * p)) / 2
    linear:   floor + (1 - floor) * (1 - p)
    constant: 1
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# Detected once; tests monkeypatch it. bitsandbytes stays an optional extra (trainstack-core[bnb]).
HAS_BITSANDBYTES: bool = importlib.util.find_spec("bitsandbytes") is not None

OPTIMIZERS = ("adamw", "adam", "adamw8bit", "adafactor")
SCHEDULES = ("cosine", "linear", "constant")

# Norm layers whose weights act as per-channel gains: decaying them towards 0 only hurts.
_NORM_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
                                 nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES += (nn.RMSNorm,)


def _is_norm(module: nn.Module) -> bool:
    # Also catches model-specific norms (T5LayerNorm, LlamaRMSNorm, ...) without importing them.
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (matrices, embeddings) and not decayed (biases, norm weights, any 1-D
    or scalar parameter). Frozen parameters are left out; tied parameters appear once."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if _is_norm(module):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or id(p) in no_decay_ids:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _all_on_cuda(groups: list[dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """``fused=None`` picks the fused kernel when every parameter is on CUDA (one launch per step
    instead of one per tensor). adafactor ignores betas/eps (torch uses its own beta2 decay)."""
    name = name.lower()
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name in ("adamw", "adam"):
        if fused is None:
            fused = _all_on_cuda(groups)
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        # Adam's weight_decay is L2 added to the gradient; groups carry it either way.
        return cls(groups, lr=lr, betas=tuple(betas), eps=eps, fused=bool(fused))
    if name == "adamw8bit":
        if not HAS_BITSANDBYTES:
            raise ImportError("optimizer 'adamw8bit' needs bitsandbytes, which is not installed: "
                              "pip install 'trainstack-core[bnb]', or use optimizer 'adamw'")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise ImportError(f"optimizer 'adafactor' needs torch>=2.5 (torch.optim.Adafactor); found {torch.__version__}")
        # lr passed explicitly: torch's default (1e-2) is not a value to train with by accident.
        return torch.optim.Adafactor(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_multiplier(schedule: str, step: int, warmup_steps: int, total_steps: int, floor: float = 0.0) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor is a fraction of the peak lr, in [0, 1]; got {floor}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)


def build_scheduler(optimizer, schedule, warmup_steps, total_steps, floor=0.0) -> LambdaLR:
    lr_multiplier(schedule, 0, warmup_steps, total_steps, floor)  # validate the arguments now, not at step 0
    # functools.partial (not a lambda) keeps the scheduler picklable for checkpoints.
    fn = functools.partial(lr_multiplier, schedule, warmup_steps=warmup_steps, total_steps=total_steps, floor=floor)
    return LambdaLR(optimizer, fn)


def _torch_kernel(optimizer) -> str:
    """fused / foreach / for-loop: what a torch optimizer's step runs. ``foreach=None`` is decided
    by torch at each step from the parameters' devices (foreach on CUDA, a Python loop on CPU)."""
    group = optimizer.param_groups[0] if optimizer.param_groups else optimizer.defaults
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach", "absent")
    if foreach is True:
        return "foreach"
    if foreach is False or foreach == "absent":
        return "for-loop"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:  # torch's own rule, so the line says what torch will do
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(params, bool(group.get("differentiable", False)), False)
    except (ImportError, TypeError):
        foreach = bool(params) and all(p.is_cuda for p in params)
    return "foreach" if foreach else "for-loop"


def _describe_one(optimizer) -> str:
    cls = type(optimizer)
    module, name = cls.__module__, cls.__name__
    if module.startswith("bitsandbytes"):
        return f"bitsandbytes {name}" + (" (8-bit states)" if "8bit" in name.lower() else "")
    if module.startswith("deepspeed"):
        return f"DeepSpeed's {name}"
    if module.startswith("torch.optim"):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        devices = ", ".join(sorted({str(p.device) for p in params})) or "none"
        return f"torch.optim.{name} {_torch_kernel(optimizer)} (parameters on {devices})"
    return f"{module}.{name}"


def describe_optimizer(optimizer) -> str:
    """One line naming the optimizer implementation that runs, for the start-up log:
    "torch.optim.AdamW fused (parameters on cuda:0)", "torch.optim.AdamW for-loop (parameters on cpu)",
    "bitsandbytes AdamW8bit (8-bit states)", "DeepSpeed's DeepSpeedZeroOptimizer over torch.optim.AdamW
    fused (...)". Wrappers that only forward (accelerate's AcceleratedOptimizer) are looked through
    silently; DeepSpeed's ZeRO optimizers are named, since they own the step."""
    layers, seen = [], set()
    while True:
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer or id(optimizer) in seen:
            break
        seen.add(id(optimizer))
        if type(optimizer).__module__.startswith("deepspeed"):
            layers.append(_describe_one(optimizer))
        optimizer = inner
    return " over ".join([*layers, _describe_one(optimizer)])

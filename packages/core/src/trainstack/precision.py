"""Choose the training precision once, from the hardware, and say why.

    p = resolve_precision("auto", hw)   # or "bf16" | "fp16" | "fp32"; env TRAINSTACK_PRECISION overrides auto
    print(p.reason)
    apply_precision(p)                  # TF32 switches
    with p.autocast("cuda"): loss = model(x)

bf16 needs compute capability 8.0+ (Ampere): asking for it on a Turing card fails here, loudly,
instead of running through slow emulation or producing garbage later.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from trainstack.hardware import Hardware, detect_hardware

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ENV_VAR = "TRAINSTACK_PRECISION"

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class PrecisionError(ValueError):
    pass


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype
    use_grad_scaler: bool
    tf32: bool
    reason: str

    @property
    def autocast_enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self, device_type: str):
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    @property
    def accelerate_mixed_precision(self) -> str:
        return {"bf16": "bf16", "fp16": "fp16"}.get(self.name, "no")


def _sm(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def resolve_precision(requested: str = "auto", hw: Hardware | None = None) -> Precision:
    requested = (requested or "auto").strip().lower()
    source = ""
    if requested == "auto" and os.environ.get(ENV_VAR):
        requested = os.environ[ENV_VAR].strip().lower()
        source = f" ({ENV_VAR}={requested})"
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}{source}; allowed: {', '.join(PRECISIONS)}")
    if hw is None:
        hw = detect_hardware()
    gpu = hw.gpu

    if gpu is None:
        if requested == "fp16":
            # CPU autocast in fp16 has no GradScaler path worth using and is slower than fp32.
            raise PrecisionError(f"fp16 asked for{source} but there is no CUDA GPU; use fp32 (or bf16) on CPU")
        if requested == "bf16":
            return Precision("bf16", torch.bfloat16, False, False, f"bf16 on CPU as asked{source} (no GPU)")
        why = "asked" if requested == "fp32" else "auto: no GPU"
        return Precision("fp32", torch.float32, False, False, f"fp32 on CPU ({why}){source}")

    cc = gpu.capability
    has_bf16 = cc >= (8, 0)
    tf32 = has_bf16  # TF32 tensor cores exist from Ampere on; the switch is a no-op before that
    where = f"{gpu.name}, {_sm(cc)}"

    if requested == "auto":
        if has_bf16:
            return Precision("bf16", torch.bfloat16, False, tf32, f"bf16 autocast: auto, {where} supports bf16")
        if cc >= (7, 0):
            return Precision("fp16", torch.float16, True, False,
                             f"fp16 autocast + GradScaler: auto, {where} has fp16 tensor cores but no bf16")
        return Precision("fp32", torch.float32, False, False,
                         f"fp32: auto, {where} has no tensor cores (fp16 would not be faster)")
    if requested == "bf16":
        if not has_bf16:
            raise PrecisionError(
                f"bf16 asked for{source} but {where} has no bf16 support (needs sm_80+); use fp16 or auto")
        return Precision("bf16", torch.bfloat16, False, tf32, f"bf16 autocast as asked{source}, {where}")
    if requested == "fp16":
        return Precision("fp16", torch.float16, True, tf32, f"fp16 autocast + GradScaler as asked{source}, {where}")
    tf = " with TF32 matmuls" if tf32 else ""
    return Precision("fp32", torch.float32, False, tf32, f"fp32{tf} as asked{source}, {where}")


def apply_precision(p: Precision) -> None:
    """Set the TF32 switches. Uses the legacy pair of calls on purpose: torch >= 2.9 raises when the
    legacy (allow_tf32) and new (fp32_precision) APIs are mixed, and libraries still use the legacy one."""
    torch.set_float32_matmul_precision("high" if p.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = p.tf32

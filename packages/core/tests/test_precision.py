import pytest
import torch
from trainstack.hardware import simulated_hardware
from trainstack.precision import PrecisionError, apply_precision, resolve_precision


@pytest.fixture(autouse=True)
def _restore_tf32():
    matmul = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.mark.parametrize(
    "hw, name, dtype, scaler, tf32",
    [
        ("h100-80g", "bf16", torch.bfloat16, False, True),
        ("a100-40g", "bf16", torch.bfloat16, False, True),
        ("rtx4080s-16g", "bf16", torch.bfloat16, False, True),
        ("rtx3080-10g", "bf16", torch.bfloat16, False, True),
        ("rtx2080s-8g", "fp16", torch.float16, True, False),
        ("2x-rtx2080s-8g", "fp16", torch.float16, True, False),
        ("cpu", "fp32", torch.float32, False, False),
    ],
)
def test_auto_follows_compute_capability(monkeypatch, hw, name, dtype, scaler, tf32):
    monkeypatch.delenv("TRAINSTACK_PRECISION", raising=False)
    p = resolve_precision("auto", simulated_hardware(hw))
    assert (p.name, p.dtype, p.use_grad_scaler, p.tf32) == (name, dtype, scaler, tf32)
    assert "auto" in p.reason and "\n" not in p.reason


def test_bf16_on_turing_fails_loudly():
    with pytest.raises(PrecisionError, match="sm_75.*sm_80"):
        resolve_precision("bf16", simulated_hardware("rtx2080s-8g"))


def test_env_overrides_auto_but_not_an_explicit_request(monkeypatch):
    monkeypatch.setenv("TRAINSTACK_PRECISION", "fp32")
    p = resolve_precision("auto", simulated_hardware("h100-80g"))
    assert p.name == "fp32" and p.tf32 and "TRAINSTACK_PRECISION" in p.reason
    assert resolve_precision("fp16", simulated_hardware("h100-80g")).name == "fp16"
    monkeypatch.setenv("TRAINSTACK_PRECISION", "bf16")
    with pytest.raises(PrecisionError, match="TRAINSTACK_PRECISION"):
        resolve_precision("auto", simulated_hardware("rtx2080s-8g"))
    monkeypatch.setenv("TRAINSTACK_PRECISION", "fp8")
    with pytest.raises(PrecisionError, match="allowed: auto, bf16, fp16, fp32"):
        resolve_precision("auto", simulated_hardware("cpu"))


def test_cpu_requests():
    cpu = simulated_hardware("cpu")
    assert resolve_precision("fp32", cpu).accelerate_mixed_precision == "no"
    assert resolve_precision("bf16", cpu).accelerate_mixed_precision == "bf16"
    with pytest.raises(PrecisionError, match="no CUDA GPU"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("fp16", simulated_hardware("h100-80g")).accelerate_mixed_precision == "fp16"


def test_autocast_context():
    cpu = simulated_hardware("cpu")
    x = torch.randn(4, 4)
    with resolve_precision("fp32", cpu).autocast("cpu"):
        assert (x @ x).dtype == torch.float32
    p = resolve_precision("bf16", cpu)
    assert p.autocast_enabled
    with p.autocast("cpu"):
        assert (x @ x).dtype == torch.bfloat16


def test_apply_precision_sets_tf32_switches():
    apply_precision(resolve_precision("auto", simulated_hardware("h100-80g")))
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    apply_precision(resolve_precision("fp32", simulated_hardware("cpu")))
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32

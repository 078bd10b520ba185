import os
from pathlib import Path

import pytest
import torch

# The real HLBD file (hlbd_v1_600pairs.txt, MIT, from the APT-Transformer authors) is not shipped:
# tests that need it read HLBD_DATA and skip without it.
HLBD_DATA_ENV = "HLBD_DATA"


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # threads=1 in a test's config must not slow the tests after it


@pytest.fixture
def v1_path():
    if not os.environ.get(HLBD_DATA_ENV):
        pytest.skip(f"set {HLBD_DATA_ENV} to the real hlbd_v1_600pairs.txt to run this test")
    p = Path(os.environ[HLBD_DATA_ENV])
    if not p.is_file():
        pytest.skip(f"{HLBD_DATA_ENV}={p}: no such file")
    return p


def tiny_overrides(*extra):
    """Overrides for a seconds-long CPU run."""
    return ["model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.n_encoder_layers=1",
            "model.n_decoder_layers=1", "threads=1", "precision=fp32", *extra]


@pytest.fixture
def tiny():
    return tiny_overrides


os.environ.setdefault("HF_HUB_OFFLINE", "1")

"""Autouse fixtures shared by every package's tests: keep global state from leaking between tests."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _session_matmul_precision():
    """The fp32 matmul settings as the session began. apply_precision for a (simulated) GPU with TF32 sets
    "high", which on a CPU with bf16 instructions lets oneDNN run fp32 matmuls in bf16: a later test's
    greedy decoding of an untrained model changed. Tests restore these values, not the ones they found,
    because a module-scoped fixture that trains in-process changes them before its tests begin."""
    import torch

    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.fixture(autouse=True)
def _reset_global_torch_state(_session_matmul_precision):
    import torch

    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(_session_matmul_precision[0])
    torch.backends.cudnn.allow_tf32 = _session_matmul_precision[1]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture(autouse=True)
def _restore_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot create files in, also when tests run as root (which chmod does
    not stop): then the immutable attribute is set with chattr. Skips where neither works."""
    import shutil
    import subprocess
    import tempfile

    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    immutable = False

    def writable() -> bool:
        try:
            with tempfile.NamedTemporaryFile(dir=path):
                return True
        except OSError:
            return False

    if writable() and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    try:
        if writable():
            pytest.skip("cannot make a read-only directory here (root without chattr +i)")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755)

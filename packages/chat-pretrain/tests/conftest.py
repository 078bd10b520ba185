import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny T5 is too small for intra-op threads to pay: on 2 cores, 1 thread took the eval and bench
# tests from 48 s to 20 s of CPU time. Subprocesses (torchrun) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).parents[3] / ".." / "shared" / "data"
CHATLM = SHARED / "chatlm"


@pytest.fixture(scope="session")
def chatlm_dir() -> Path:
    if not (CHATLM / "tokenizer.json").is_file():
        pytest.skip(f"shared ChatLM tokenizer not found at {CHATLM}")
    return CHATLM.resolve()


@pytest.fixture(scope="session")
def tok(chatlm_dir):
    from chat_pretrain.tokenizer import load_tokenizer

    return load_tokenizer(chatlm_dir)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

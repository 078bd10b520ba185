import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny T5 is too small for intra-op threads to pay: on 2 cores, 1 thread took the eval and bench
# tests from 48 s to 20 s of CPU time. Subprocesses (torchrun) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The users' ChatLM-mini-Chinese tokenizer (a directory holding tokenizer.json) is not shipped: with
# CHATLM_TOKENIZER set, tests run with it; without, with a unigram tokenizer trained here by the
# package's own `train_tokenizer` on generated Chinese text (the quickstart's path for a user without
# one; unigram pieces are whole characters, so even an untrained model's output decodes to text).
# Tests of that tokenizer's own defect take `real_chatlm_dir` and skip without it.
CHATLM_ENV = "CHATLM_TOKENIZER"


@pytest.fixture(scope="session")
def chatlm_dir(tmp_path_factory) -> Path:
    if not os.environ.get(CHATLM_ENV):
        from chat_pretrain.synth import make_parquet
        from chat_pretrain.tokenizer import train_tokenizer

        root = tmp_path_factory.mktemp("tokenizer")
        train_tokenizer([make_parquet(root / "text.parquet", 4000, seed=7)], vocab_size=4000, kind="unigram",
                        out_dir=root / "tok")
        return root / "tok"
    return real_chatlm_path()


@pytest.fixture(scope="session")
def real_chatlm_dir() -> Path:
    if not os.environ.get(CHATLM_ENV):
        pytest.skip(f"set {CHATLM_ENV} to the ChatLM tokenizer directory (holding tokenizer.json): this test "
                    "checks that tokenizer's own defect")
    return real_chatlm_path()


def real_chatlm_path() -> Path:
    path = Path(os.environ[CHATLM_ENV]).resolve()
    if path.is_file():
        path = path.parent
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"{CHATLM_ENV}={path}: no tokenizer.json there")
    return path


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

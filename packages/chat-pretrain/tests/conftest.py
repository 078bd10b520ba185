import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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

"""Shared fixtures: a tiny random-init M2M100 and the sample tokenizer, both offline."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_tokenizer():
    from mt_nllb.data import read_pairs
    from mt_nllb.model import build_sample_tokenizer

    pairs, _ = read_pairs(["sample"], [0], "zh", "en", 10, 400)
    return build_sample_tokenizer([t for p in pairs for t in p], ["zho_Hans", "eng_Latn"])

"""Shared fixtures: the shipped sample data, a tiny random-init T5 saved as a normal HF model dir,
and a helper that runs the real entry point in a fresh process (DeepSpeed keeps global state)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "src" / "t5_deepspeed" / "data"
# DeepSpeed's CPU accelerator JIT-builds one C++ op (shm comm, ~40 s) on first use; keep the build
# in a cache that outlives the test run instead of a temp dir.
EXT_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def data_dir():
    return DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny-t5 (shipped config, ~73k parameters) with random weights and the shipped tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(AutoConfig.from_pretrained(DATA / "configs" / "tiny-t5.json"))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(DATA / "tokenizer").save_pretrained(out)
    return out


def cli_env() -> dict:
    """The environment of a CPU run of the CLI: offline, no GPU, no rendezvous left from this process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_EXTENSIONS_DIR": EXT_DIR, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_cli(args, cwd=None, timeout=240, **kwargs):
    """Run `python -m t5_deepspeed ARGS` on CPU; return the CompletedProcess (text)."""
    kwargs.setdefault("env", cli_env())
    return subprocess.run([sys.executable, "-m", "t5_deepspeed", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def cli():
    return run_cli

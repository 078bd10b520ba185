"""One product, one voice: every console script speaks the same command-line grammar.

For each console script (trainstack, hlbd, mt-nllb, chat-pretrain, esm2ae, t5-deepspeed), run as a
user runs it (a subprocess, HF_HUB_OFFLINE=1): --help and --version exit 0; listing the profiles
exits 0; an unknown config key (t5-deepspeed: an unknown flag; trainstack: a bad choice), a missing
data file and a hub name that is not cached each exit 2 with one line on stderr and no traceback.
trainstack takes no config keys and hlbd and trainstack no hub names: those cases do not exist.
The subprocesses run in parallel (about 35 s on 2 cores). In-process: `--profile auto` on a GPU
that no GPU profile fits stops with the closest profile named, instead of training on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NLLB = "facebook/nllb-200-distilled-600M"


def _chat_inputs(root: Path) -> tuple[Path, Path]:
    """A parquet file and a tiny word-level tokenizer, so chat-pretrain gets as far as the model."""
    from chat_pretrain.synth import make_parquet
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    data = make_parquet(root / "chat.parquet", 16, median_chars=8)
    tok = Tokenizer(WordLevel({"[PAD]": 0, "[EOS]": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    (root / "tok").mkdir()
    tok.save(str(root / "tok" / "tokenizer.json"))
    return data, root / "tok"


def _cases(root: Path) -> dict[tuple[str, str], tuple[list[str], int, str]]:
    """(script, case) -> (argv, exit code, what stdout says (exit 0) or stderr's one line says (exit 2))."""
    chat_data, chat_tok = _chat_inputs(root)
    t5_data = REPO / "packages" / "t5-deepspeed" / "src" / "t5_deepspeed" / "data" / "en-ro.train.jsonl"
    t5 = ["--config_name", "tiny-t5", "--source_lang", "en", "--target_lang", "ro", "--do_train"]
    esm = ["train", "--profile", "cpu-debug", f"run_dir={root / 'esm'}"]
    cases = {}
    for script, profiles, shipped in [("trainstack", ["profiles"], "mt-nllb:\n  a100-40g"),
                                      ("hlbd", ["profiles"], "users-baseline"),
                                      ("mt-nllb", ["profiles", "list"], "rtx4080s-16g"),
                                      ("chat-pretrain", ["profiles"], "low-ram-12g"),
                                      ("esm2ae", ["profiles", "list"], "2x-rtx2080s-8g"),
                                      ("t5-deepspeed", ["profiles"], "rtx2080s-8g")]:
        cases[script, "help"] = (["--help"], 0, "profiles")
        cases[script, "version"] = (["--version"], 0, "0.")
        cases[script, "profiles"] = (profiles, 0, shipped)
    cases.update({
        ("trainstack", "bad usage"): (["doctor", "--simulate", "tpu-v9"], 2, "invalid choice: 'tpu-v9'"),
        ("trainstack", "missing data"): (["report", str(root / "no-such-run")], 2, "no log at"),
        ("hlbd", "unknown key"): (["train", "epochz=3"], 2, "unknown key 'epochz' (did you mean 'epochs'?)"),
        ("hlbd", "missing data"): (["train", "--data", str(root / "missing.txt")], 2, "missing.txt"),
        ("mt-nllb", "unknown key"): (["train", "--profile", "cpu-debug", "optim.lrr=1"], 2, "unknown key 'optim.lrr'"),
        ("mt-nllb", "missing data"): (["train", "--profile", "cpu-debug", f"data.train=[{root / 'missing.tsv'}]"], 2,
                                      "data source not found"),
        ("mt-nllb", "hub offline"): (["train", "--profile", "cpu-debug", f"model.name_or_path={NLLB}",
                                      "model.tokenizer=", "--run-dir", str(root / "nllb")], 2,
                                     f"'{NLLB}' is not in the local Hugging Face cache"),
        ("chat-pretrain", "unknown key"): (["train", "--profile", "cpu-tiny", "optim.lrr=1"], 2,
                                           "unknown key 'optim.lrr'"),
        ("chat-pretrain", "missing data"): (["train", "--profile", "cpu-tiny", f"tokenizer.path={chat_tok}",
                                             f"data.train_files=[{root / 'missing.parquet'}]"], 2,
                                            "missing.parquet: no such file or directory"),
        ("chat-pretrain", "hub offline"): (["train", "--profile", "cpu-tiny", f"tokenizer.path={chat_tok}",
                                            f"data.train_files=[{chat_data}]", "model.name=google-t5/t5-small",
                                            f"run_dir={root / 'chat'}"], 2,
                                           "'google-t5/t5-small' is not in the local Hugging Face cache"),
        ("esm2ae", "unknown key"): ([*esm, "optim.lrr=1"], 2, "unknown key 'optim.lrr'"),
        ("esm2ae", "missing data"): ([*esm, f"data.train={root / 'missing.fasta'}"], 2, "missing.fasta"),
        ("esm2ae", "hub offline"): ([*esm, "model.pretrained=true"], 2,
                                    "'facebook/esm2_t6_8M_UR50D' is not in the local Hugging Face cache"),
        ("t5-deepspeed", "unknown key"): ([*t5, "--output_dir", str(root / "t5-a"), "--train_file", str(t5_data),
                                           "--learning_rat", "1"], 2, "unrecognized arguments: --learning_rat"),
        ("t5-deepspeed", "missing data"): ([*t5, "--output_dir", str(root / "t5-b"), "--train_file",
                                            str(root / "missing.jsonl")], 2, "missing.jsonl"),
        ("t5-deepspeed", "hub offline"): ([*t5, "--output_dir", str(root / "t5-c"), "--train_file", str(t5_data),
                                           "--model_name_or_path", "google-t5/t5-small"], 2,
                                          "'google-t5/t5-small' is not in the local Hugging Face cache"),
    })
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case, run once, in parallel: (script, case) -> (expected code, expected text, result)."""
    root = tmp_path_factory.mktemp("voice")
    cases = _cases(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(root / "ext")}
    bin_dir = Path(sys.executable).parent

    def run(key):
        argv = cases[key][0]
        return subprocess.run([str(bin_dir / key[0]), *argv], cwd=root, env=env, capture_output=True, text=True,
                              timeout=240, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    return {key: (code, text, results[key]) for key, (_, code, text) in cases.items()}


SCRIPTS = ["trainstack", "hlbd", "mt-nllb", "chat-pretrain", "esm2ae", "t5-deepspeed"]
CASES = [(s, c) for s in SCRIPTS for c in ("help", "version", "profiles")] + [
    (s, c) for s in SCRIPTS for c in ("unknown key", "bad usage", "missing data", "hub offline")
    if not (s == "trainstack" and c in ("unknown key", "hub offline")) and not (s != "trainstack" and c == "bad usage")
    and not (s == "hlbd" and c == "hub offline")]


@pytest.mark.parametrize(("script", "case"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_console_script_speaks_the_shared_grammar(runs, script, case):
    code, text, r = runs[script, case]
    shown = f"{script} {case}: rc={r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}"
    assert r.returncode == code, shown
    assert "Traceback" not in r.stderr + r.stdout, shown
    if code == 0:
        assert text in r.stdout, shown
        if case == "help":
            assert r.stdout.startswith(f"usage: {script}"), shown
        if case == "version":
            assert r.stdout.startswith(f"{script} " if script != "trainstack" else "trainstack-core "), shown
        return
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"{script}") and "error:" in lines[0] and text in lines[0], shown


def _gpu_machine(memory_gib: float):
    """A faked 8 GB Ampere card: what detect_hardware returns on such a machine."""
    from trainstack.hardware import GPUInfo, Hardware

    return Hardware((GPUInfo("NVIDIA GeForce RTX 3070", (8, 6), memory_gib),), cpu_count=8, ram_gib=16.0)


@pytest.mark.parametrize(("module", "argv", "closest", "cpu"), [
    ("mt_nllb.cli", ["train"], "rtx4080s-16g (GPU 0 has 7.8 GiB, needs 15 GiB)", "cpu-debug"),
    ("chat_pretrain.cli", ["train"], "small (GPU 0 has 7.8 GiB, needs 11 GiB)", "cpu-tiny"),
    ("esm2ae.cli", ["train", "--profile", "auto"], "rtx2080s-8g (RAM 16.0 GiB, needs 30 GiB)", "cpu-debug"),
])
def test_auto_on_a_gpu_no_profile_fits_stops_and_names_the_closest(module, argv, closest, cpu, monkeypatch, capsys,
                                                                  tmp_path):
    """Before: mt-nllb and chat-pretrain trained on the CPU without a word when the GPU was too small."""
    import importlib

    from trainstack import hardware

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hardware, "detect_hardware", lambda: _gpu_machine(7.8))
    main = importlib.import_module(module).main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU profile fits this machine's NVIDIA GeForce RTX 3070" in err[0], err
    assert f"closest: {closest}" in err[0] and f"--profile {cpu}" in err[0], err
    assert not (tmp_path / "runs").exists()

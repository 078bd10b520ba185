"""Bad input through the real entry point: one line on stderr, exit 2, nothing written; checkpoints are
loaded as tensors only, so a crafted file in a run or export directory cannot run code."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from esm2ae.cli import main
from esm2ae.train import SAMPLE_FASTA

TINY = ["model.name=esm2_tiny", "data.max_length=128", "batch.max_tokens_per_batch=1024",
        "batch.tokens_per_step=1024", "optim.lr=3e-3", "optim.warmup_steps=3", "log_every_steps=5",
        "data.val_fraction=0.1"]


def _train(tmp_path, *extra, run_dir=None):
    return main(["train", "--profile", "cpu-debug", *TINY, "max_steps=2", "eval_every_steps=0",
                 f"run_dir={run_dir or tmp_path / 'run'}", *extra])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esm2ae: error:"), err
    return lines[0]


def _bad_data(tmp_path, case):
    if case == "no valid sequence":
        path = tmp_path / "bad.fasta"
        path.write_text(">a\nMK1V\n>b\nMK@@\n>c\n\n")
        return path, "no usable sequences"
    path = tmp_path / "bad.parquet"
    if case == "0-row parquet":
        pq.write_table(pa.table({"sequence": pa.array([], pa.string())}), path)
        return path, "no usable sequences"
    if case == "all-null parquet":
        pq.write_table(pa.table({"sequence": pa.array([None] * 50, pa.string())}), path)
        return path, "no usable sequences"
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"sequence": ["MKVLAAGIVG" * 5] * 200}), good)
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    return path, "not a readable parquet file"


@pytest.mark.parametrize("case, streaming", [
    ("no valid sequence", False), *((c, s) for c in ("0-row parquet", "all-null parquet", "truncated parquet")
                                    for s in (False, True)),
])
def test_unusable_data_is_one_line_and_writes_nothing(tmp_path, capsys, case, streaming):
    path, expect = _bad_data(tmp_path, case)
    extra = ["data.streaming=true", f"data.val={SAMPLE_FASTA}"] if streaming else []
    assert _train(tmp_path, f"data.train={path}", *extra) == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line and str(path) in line
    assert not (tmp_path / "run").exists()  # no config.yaml


@pytest.mark.parametrize("override, key", [
    ("max_steps=-5", "max_steps"), ("max_steps=0", "max_steps"), ("optim.lr=0", "optim.lr"),
    ("optim.lr=-4e-4", "optim.lr"), ("batch.max_tokens_per_batch=-1", "batch.max_tokens_per_batch"),
    ("batch.tokens_per_step=0", "batch.tokens_per_step"),
])
def test_bad_numbers_are_refused_with_the_dotted_key(tmp_path, capsys, override, key):
    assert _train(tmp_path, override) == 2
    assert f"config key '{key}': must be" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unusable_run_dir_is_one_line_and_writes_nothing(tmp_path, capsys, where, request):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    run_dir = {"a file": blocker, "under a file": blocker / "run"}.get(where)
    if where == "read-only":
        run_dir = request.getfixturevalue("read_only_dir") / "run"
    assert _train(tmp_path, run_dir=run_dir) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"run_dir={run_dir}" in line
    assert ("a file is in the way" if where != "read-only" else "cannot write there") in line
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("resume, expect", [
    ("auto", "--resume auto: no checkpoint in"),                # run_dir missing or mistyped
    ("/no/such/run/checkpoints/step-15", "not a checkpoint"),
])
def test_resume_on_a_missing_dir_is_an_error_not_a_fresh_start(tmp_path, capsys, resume, expect):
    assert _train(tmp_path, "--resume", resume) == 2
    assert expect in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, expect", [
    # (conftest sets HF_HUB_OFFLINE=1: no test reaches the hub)
    (["model.name=facebook/esm2_t6_8M_UR50", "model.pretrained=true"],           # a typo in a hub id
     ["'facebook/esm2_t6_8M_UR50' is not in the local Hugging Face cache and the hub is offline",
      "model.pretrained=false"]),
    (["model.name=esm2_tiny", "model.pretrained=true"], ["esm2_tiny has no published weights"]),
    (["model.name=./runs/typo/final", "model.pretrained=true"], ["./runs/typo/final", "does not exist"]),
    (["model.name=esm2_t33_65M", "model.pretrained=false"], ["esm2_t33_65M", "needs an ESM-2 size"]),
])
def test_a_model_that_cannot_be_loaded_is_one_line_never_random_weights(tmp_path, capsys, model, expect):
    assert _train(tmp_path, *model) == 2
    line = _one_line(capsys.readouterr().err)
    assert all(e in line for e in expect), line
    assert not (tmp_path / "run").exists()


def test_pretrained_size_offline_with_an_empty_cache_fails_naming_it(tmp_path):
    """The realistic case, in a fresh process whose hub cache is empty: a size name with
    model.pretrained=true and no network never trains from random weights."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    p = subprocess.run([sys.executable, "-m", "esm2ae", "train", "--profile", "cpu-debug", *TINY,
                        "model.name=esm2_t6_8M", "model.pretrained=true", f"run_dir={tmp_path / 'run'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    line = _one_line(p.stderr)
    assert "model 'facebook/esm2_t6_8M_UR50D' is not in the local Hugging Face cache" in line, line
    assert "point model.name at a local directory" in line, line
    assert "random weights" not in p.stdout and not (tmp_path / "run").exists()


def test_the_removed_loader_key_is_refused_not_ignored(tmp_path, capsys):
    # loader.num_workers was never read (batches are packed in the training process): a profile that
    # sets it must hear so at start-up instead of believing it runs 12 workers
    assert _train(tmp_path, "loader.num_workers=12") == 2
    assert "unknown key 'loader'" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


class _RunsCode:
    """Unpickling this calls exec: what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def torch_24_default(monkeypatch):
    """torch.load as on torch 2.4-2.5 (which the range allows): weights_only defaults to False, so only
    an explicit weights_only=True keeps a crafted file from running code."""
    real = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)


@pytest.mark.parametrize("command, crafted", [("embed", "ae.pt"), ("eval", "ae.pt"), ("eval", "model.pt")])
def test_crafted_checkpoint_file_is_refused_without_running_code(tmp_path, capsys, torch_24_default, command,
                                                                 crafted):
    from esm2ae.config import Config, ModelConfig
    from esm2ae.model import Esm2AE, load_esm
    from esm2ae.train import export_final
    from trainstack.config import save_config

    cfg = Config(model=ModelConfig(name="esm2_tiny"))
    cfg.ae.widths = [16]
    hf, _ = load_esm("esm2_tiny", pretrained=False)
    model = Esm2AE(hf, cfg.ae.widths, cfg.ae.pooling, "sdpa")
    if crafted == "ae.pt":
        target = export_final(model, cfg, tmp_path / "final", {})
    else:  # a step-N checkpoint of a run directory
        save_config(cfg, tmp_path / "run")
        target = tmp_path / "run" / "checkpoints" / "step-1"
        target.mkdir(parents=True)
        (target / "trainer_state.json").write_text('{"step": 1}')
    marker = tmp_path / "pwned"
    torch.save(_RunsCode(marker), target / crafted)
    capsys.readouterr()  # the export's own progress output
    args = ["embed", str(target), str(SAMPLE_FASTA), "-o", str(tmp_path / "z.parquet")] if command == "embed" else \
        ["eval", str(target), "--data", str(SAMPLE_FASTA), "--device", "cpu"] if crafted == "model.pt" else \
        ["eval", str(target), str(SAMPLE_FASTA), "--device", "cpu"]  # the earlier spelling: eval CKPT DATA
    assert main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{target / crafted}: refused to load (it references exec)" in line
    assert not marker.exists() and not (tmp_path / "z.parquet").exists()


def test_eval_needs_its_data_once(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--device", "cpu"]) == 2
    assert "give the data once: --data FILE" in _one_line(capsys.readouterr().err)

"""Bad usage through the real entry point: one line on stderr, exit 2, nothing written; a double Ctrl-C
exits 130 in one line and leaves a resumable run."""

import json
import os
import signal

import hlbd.train as train_mod
import pytest
from hlbd.cli import main
from hlbd.tokenizer import CharTokenizer


def _main(argv) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:  # escaping would end the whole pytest session, not fail this test
        pytest.fail("KeyboardInterrupt escaped hlbd's main")


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hlbd: error:"), err
    return lines[0]


@pytest.mark.parametrize("override, expect", [
    ("batch_size=-4", "config key 'batch_size': must be >= 1, got -4"),
    ("batch_size=0", "config key 'batch_size': must be >= 1, got 0"),
    ("optim.lr=0", "config key 'optim.lr': must be > 0, got 0.0"),
    ("optim.lr=-1e-3", "config key 'optim.lr': must be > 0, got -0.001"),
    ("epochs=-1", "config key 'epochs': must be >= 1, got -1"),
])
def test_bad_numbers_are_refused_with_the_dotted_key(tmp_path, capsys, tiny, override, expect):
    run_dir = tmp_path / "run"
    assert main(["train", f"run_dir={run_dir}", *tiny(override)]) == 2
    assert expect in _one_line(capsys.readouterr().err)
    assert not run_dir.exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unusable_run_dir_is_one_line_and_writes_nothing(tmp_path, capsys, tiny, where, request):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    run_dir = {"a file": blocker, "under a file": blocker / "run"}.get(where)
    if where == "read-only":
        run_dir = request.getfixturevalue("read_only_dir") / "run"
    assert main(["train", "--no-progress", f"run_dir={run_dir}", *tiny("epochs=1")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"run_dir={run_dir}" in line
    assert ("a file is in the way" if where != "read-only" else "cannot write there") in line
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("state", ["missing", "mistyped", "no checkpoint"])
def test_resume_without_a_checkpoint_fails_naming_the_dir(tmp_path, capsys, tiny, state):
    real = tmp_path / "run"
    assert main(["train", "--no-progress", f"run_dir={real}", *tiny("epochs=1", "stop_at_exact_match=0")]) == 0
    capsys.readouterr()
    if state == "no checkpoint":
        for step in (real / "checkpoints").iterdir():
            for f in step.iterdir():
                f.unlink()
            step.rmdir()
        target = real
    else:
        target = tmp_path / ("elsewhere" if state == "missing" else "rnu")
    assert main(["train", "--resume", "--no-progress", f"run_dir={target}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(target) in line and "nothing to resume" in line


# 72 pairs, batch 16 -> 5 micro-batches per epoch; accumulation 2 -> 3 optimizer steps per epoch.
CFG = ("model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.n_encoder_layers=1",
       "model.n_decoder_layers=1", "threads=1", "precision=fp32", "epochs=3", "batch_size=16",
       "grad_accum_steps=2", "stop_at_exact_match=0", "optim.lr=3e-3", "save_every_epochs=1")


def test_double_ctrl_c_before_any_save_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    real, calls = train_mod.seq2seq_loss, [0]
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the test process was started in the background

    def ctrl_c_twice(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "seq2seq_loss", ctrl_c_twice)
    run = tmp_path / "run"
    assert _main(["train", "--no-progress", f"run_dir={run}", *CFG]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hlbd: interrupted twice: stopped without saving; no checkpoint was saved"]
    assert not list((run / "checkpoints").glob("step-*"))
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_double_ctrl_c_during_the_save_keeps_the_last_checkpoint_resumable(tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert main(["train", "--no-progress", f"run_dir={straight}", *CFG]) == 0
    want = [r["loss"] for r in map(json.loads, (straight / "log.jsonl").read_text().splitlines()) if "loss" in r]

    # Ctrl-C in epoch 2 (micro-batch 7); the second arrives while that stop's checkpoint is being
    # written (model.pt already in the temporary directory, tokenizer not yet).
    real_loss, calls = train_mod.seq2seq_loss, [0]

    def ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    real_save, saves = CharTokenizer.save, [0]

    def ctrl_c_in_save(self, path):
        saves[0] += 1
        if saves[0] == 2:  # the first is epoch 1's periodic save
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, path)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "seq2seq_loss", ctrl_c)
        m.setattr(CharTokenizer, "save", ctrl_c_in_save)
        capsys.readouterr()
        assert _main(["train", "--no-progress", f"run_dir={run}", *CFG]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    step3 = run / "checkpoints" / "step-3"
    assert err == [f"hlbd: interrupted twice: stopped without saving; resume from {step3} with: "
                   f"hlbd train --resume run_dir={run}"]
    assert not (run / "checkpoints" / "step-4").exists()  # the interrupted save never became a checkpoint

    assert main(["train", "--resume", "--no-progress", f"run_dir={run}"]) == 0
    assert f"resumed from {step3}" in capsys.readouterr().out
    got = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert got == want  # bit for bit: CPU, fp32, one thread

"""The real entry point, small: `hlbd train` learns, bad input writes nothing, interruption resumes exactly."""

import json
import os
import re
import signal

import hlbd.train as train_mod
import pytest
import torch
from hlbd.cli import main
from hlbd.data import SAMPLES_MARKER, bundled_sample_path


def _sample_records():
    text = bundled_sample_path().read_text(encoding="utf-8")
    return json.loads(text[text.index(SAMPLES_MARKER) + len("samples = "):])


def test_hlbd_train_with_no_arguments_learns_the_bundled_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run_dir (runs/hlbd) lands here
    rc = main(["train"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out
    # the run stops at 95% exact match, at an epoch unknown in advance: an open-ended bar, not "n/300"
    assert "epochs (until 95% exact match, at most 300)" in captured.err and "/300" not in captured.err
    m = re.search(r"^learned: exact match ([\d.]+)% \(72 pairs, greedy\)", out, re.M)
    assert m and float(m.group(1)) >= 95.0, out
    summary = json.loads((tmp_path / "runs" / "hlbd" / "summary.json").read_text())
    assert summary["learned"] and summary["exact_match"] >= 0.95
    # the checkpoint is usable on its own
    assert main(["eval", str(tmp_path / "runs" / "hlbd")]) == 0
    assert capsys.readouterr().out.startswith("learned: exact match")


def test_fast_learns_the_real_600_pairs_well_above_chance(v1_path, tmp_path):
    # A real learning check, not a timing: the fast recipe (AdamW, standard attention, scaled embeddings)
    # at a smaller width and a bounded number of epochs. A whole Chinese sentence right by chance has
    # probability ~0 (vocabulary of ~970 characters, ~15 characters per target).
    from hlbd.config import TrainConfig
    from hlbd.profiles import shipped_profiles
    from trainstack.config import load_config
    from trainstack.hardware import resolve_profile

    cfg = load_config(TrainConfig, resolve_profile("fast", shipped_profiles()).settings, [
        f"data.path={v1_path}", "data.batching=length", "model.d_model=128", "model.d_ff=256", "model.n_heads=4",
        "model.n_encoder_layers=2", "model.n_decoder_layers=2", "model.dropout=0.0", "batch_size=16",
        "optim.lr=2e-3", "epochs=12", "stop_at_exact_match=0.3", "precision=fp32", f"run_dir={tmp_path / 'run'}"])
    summary = train_mod.train(cfg, progress=False, say=lambda *_: None)
    assert summary["pairs"] == 600
    assert summary["history"][0]["loss"] > 4.0 > summary["final_loss"] + 2.5
    assert summary["exact_match"] >= 0.25, summary  # greedy decoding of all 600 targets


@pytest.mark.parametrize("case", ["missing file", "truncated list", "empty list", "no 中文"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, tiny):
    records = _sample_records()[:2]
    path = tmp_path / "data.txt"
    if case == "truncated list":
        body, expect = json.dumps(records, ensure_ascii=False, indent=1)[:-30], "truncated"
    elif case == "empty list":
        body, expect = "[]", "the samples list is empty"
    elif case == "no 中文":
        del records[1]["level_6"]
        body, expect = json.dumps(records, ensure_ascii=False), f"concept '{records[1]['concept']}' .*no level_6.中文"
    else:
        body, expect = None, "file not found"
    if body is not None:
        path.write_text("HLBD\nprose header\n\nsamples = " + body, encoding="utf-8")
    run_dir = tmp_path / "run"
    rc = main(["train", "--data", str(path), f"run_dir={run_dir}", *tiny()])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("hlbd: error:"), err
    assert re.search(expect, err) and str(path) in err, err
    assert not run_dir.exists()


def test_resume_without_a_run_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--resume", f"run_dir={run_dir}"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not run_dir.exists()


def _interrupt_at_call(monkeypatch, call: int, signum: int):
    """Deliver a real signal to this process during the call-th training forward pass."""
    real, calls = train_mod.seq2seq_loss, [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "seq2seq_loss", wrapped)


def _training_records(run_dir):
    """log.jsonl's per-epoch training records (the final greedy evaluation has a record of its own)."""
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


# 72 pairs, batch 16 -> 5 micro-batches per epoch; accumulation 2 -> 3 optimizer steps per epoch.
RESUME_CFG = ("model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.n_encoder_layers=1",
              "model.n_decoder_layers=1", "threads=1", "precision=fp32", "epochs=4", "batch_size=16", "grad_accum_steps=2", "stop_at_exact_match=0", "optim.lr=3e-3")


@pytest.mark.parametrize("signum,call,where", [
    (signal.SIGINT, 7, "in epoch 2 (micro-batch 2)"),   # mid-epoch, mid-accumulation window: finishes the step
    (signal.SIGTERM, 10, "after epoch 2"),             # the epoch's last micro-batch
])
def test_interrupt_saves_and_resume_is_exact(tmp_path, monkeypatch, capsys, signum, call, where):
    straight = tmp_path / "straight"
    assert main(["train", "--no-progress", f"run_dir={straight}", *RESUME_CFG]) == 0
    want = _training_records(straight)
    capsys.readouterr()

    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the test process was started in the background
    with monkeypatch.context() as m:
        _interrupt_at_call(m, call, signum)
        rc = main(["train", "--no-progress", f"run_dir={run}", *RESUME_CFG])
    out = capsys.readouterr().out
    assert rc == 130, out
    assert f"interrupted by signal {int(signum)}" in out and where in out, out
    assert (run / "checkpoints").is_dir() and len(list((run / "log.jsonl").read_text().splitlines())) < 4
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    # --resume [auto|PATH]: the latest checkpoint of run_dir, or the one named
    (saved,) = (run / "checkpoints").glob("step-*")
    resume = ["--resume", f"run_dir={run}"] if signum == signal.SIGINT else ["--resume", str(saved)]
    assert main(["train", *resume, "--no-progress"]) == 0
    assert f"resumed from {saved}" in capsys.readouterr().out
    got = _training_records(run)
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit: CPU, fp32, same thread count
    assert [r["step"] for r in got] == [r["step"] for r in want] == [3, 6, 9, 12]
    a = torch.load(straight / "checkpoints" / "step-12" / "model.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "step-12" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_used_run_dir_is_refused_overwrite_starts_over_and_resume_checks_the_data(tmp_path, capsys, tiny):
    run = tmp_path / "run"
    quick = [*tiny(), "epochs=1", "stop_at_exact_match=0", f"run_dir={run}", "--no-progress"]
    assert main(["train", *quick]) == 0
    (run / "notes.txt").write_text("mine")
    config_before = (run / "config.yaml").read_text()
    capsys.readouterr()

    assert main(["train", *quick, "seed=3"]) == 2  # a fresh start over that run
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds checkpoints" in err and "overwrite=true" in err
    assert f"hlbd train --resume run_dir={run}" in err
    assert (run / "config.yaml").read_text() == config_before  # nothing written

    assert main(["train", *quick, "seed=3", "overwrite=true"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and "seed: 3" in (run / "config.yaml").read_text()

    # resuming on other data: one line naming the field; the override resumes anyway
    other = tmp_path / "other.txt"
    text = bundled_sample_path().read_text(encoding="utf-8")
    other.write_text(text.replace("hand-written sample", "hand-written copy"), encoding="utf-8")  # same pairs
    capsys.readouterr()
    assert main(["train", "--resume", "--data", str(other), f"run_dir={run}", "epochs=2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot resume: data is" in err, err
    assert main(["train", "--resume", "--data", str(other), f"run_dir={run}", "epochs=2",
                 "ignore_resume_mismatch=true", "--no-progress"]) == 0

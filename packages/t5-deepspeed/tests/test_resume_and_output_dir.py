"""Crash safety through the real CLI (issue 12): SIGINT saves and the run resumes exactly, a half-written
newest checkpoint falls back to the previous one, nothing resumes unless asked, crafted or mismatched
checkpoints are refused in one line, and --overwrite_output_dir removes only what t5-deepspeed wrote.

One real run is interrupted by SIGINT (ZeRO-2 over gloo, tiny-t5, constant lr so the steps do not depend
on --max_steps) and shared by the tests below through copies of its output dir; a fresh run with the
same seed is the reference every resumed loss is compared with.
"""

import json
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from t5_deepspeed.checkpoints import COMPLETE_MARKER, weights_only_loading, why_incomplete
from t5_deepspeed.cli import main
from t5_deepspeed.outputs import LEDGER

from .conftest import cli_env, run_cli


def _args(data_dir, out, max_steps, train_file=None, deepspeed=True):
    return [*(["--deepspeed", "zero2"] if deepspeed else []), "--config_name", "tiny-t5",
            "--train_file", train_file or data_dir / "en-ro.train.jsonl", "--source_lang", "en", "--target_lang", "ro",
            "--do_train", "--per_device_train_batch_size", "8", "--learning_rate", "5e-3",
            "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_steps", "2", "--seed", "1",
            "--max_steps", str(max_steps), "--output_dir", out]


def _logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _logged(out) if "loss" in r}


def _last_logged_step(out) -> int:
    """Read while the run writes: a line being written is not complete JSON yet, and is skipped."""
    steps = [0]
    if (out / "log.jsonl").is_file():
        for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return max(steps)


def _tree(path) -> dict:
    """Every file under path with its size and mtime: 'nothing was written' means this is unchanged."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def interrupted(data_dir, tmp_path_factory):
    """A run signalled with SIGINT once it has logged step 3: checkpoint-2 by --save_steps, checkpoint-K
    (K >= 3) by the signal. Returns (output dir, K, completed process)."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    proc = subprocess.Popen([sys.executable, "-m", "t5_deepspeed", *map(str, _args(data_dir, out, 10_000))],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if _last_logged_step(out) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    stdout, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, stdout[-3000:]
    step = max(_losses(out))
    return out, step, stdout


@pytest.fixture(scope="module")
def reference(data_dir, interrupted, tmp_path_factory):
    """{step: loss} of a fresh, uninterrupted run with the same seed, two steps past the interruption."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = run_cli(_args(data_dir, out, interrupted[1] + 2))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return _losses(out)


def _copy(interrupted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    return out


def test_sigint_saves_a_complete_checkpoint_after_the_step_and_exits_130(interrupted):
    out, step, stdout = interrupted
    assert f"stopped by SIGINT after step {step}: saved {out / f'checkpoint-{step}'}" in stdout
    assert why_incomplete(out / f"checkpoint-{step}") is None and why_incomplete(out / "checkpoint-2") is None
    assert {f"checkpoint-{step}", "checkpoint-2", "log.jsonl"} <= set(json.loads((out / LEDGER).read_text())["written"])
    assert not (out / "model.safetensors").exists()  # a stopped run saves a checkpoint, not a final model


def test_same_seed_same_losses_from_step_1(interrupted, reference):
    # two fresh runs: the model is built after seeding, so the random init is the same
    interrupted_losses = _losses(interrupted[0])
    assert interrupted_losses[1] == reference[1]
    assert all(interrupted_losses[s] == reference[s] for s in interrupted_losses)


def test_resume_after_sigint_continues_exactly(data_dir, interrupted, reference, tmp_path):
    out, step = _copy(interrupted, tmp_path), interrupted[1]
    r = run_cli(_args(data_dir, out, step + 2) + ["--resume_from_checkpoint", "latest"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'} (--resume_from_checkpoint latest" in r.stdout
    losses = _losses(out)
    assert losses == reference  # the steps before the stop kept, the ones after it equal to the fresh run's
    logged_steps = [rec["step"] for rec in _logged(out) if "loss" in rec]
    assert logged_steps == sorted(set(logged_steps))  # each step once


def test_half_written_newest_checkpoint_falls_back_to_the_previous(data_dir, interrupted, reference, tmp_path):
    out, step = _copy(interrupted, tmp_path), interrupted[1]
    newest = out / f"checkpoint-{step}"
    # what a kill during its save leaves: the marker (written last) missing, a shard cut short
    (newest / COMPLETE_MARKER).unlink()
    shard = next(newest.glob("global_step*/*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    # the previous complete one: checkpoint-2, or checkpoint-4 too when the signal came a step late
    previous = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p != newest)
    r = run_cli(_args(data_dir, out, previous + 1) + ["--resume_from_checkpoint", "latest"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"checkpoint-{step} is incomplete: no completion marker" in r.stdout
    assert f"resuming from the previous complete one, checkpoint-{previous}" in r.stdout
    assert _losses(out)[previous + 1] == reference[previous + 1]


def test_no_resume_without_being_asked(data_dir, interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    before = _tree(out)
    assert main([str(a) for a in _args(data_dir, out, 6, deepspeed=False)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not empty" in err and "--resume_from_checkpoint latest" in err
    assert _tree(out) == before


def test_resume_with_a_changed_model_size_is_one_line(data_dir, interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    before = _tree(out)
    argv = [str(a) for a in _args(data_dir, out, 6, deepspeed=False)]
    assert main(argv + ["--config_overrides", "d_model=64", "--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t5-deepspeed: error: cannot resume from") and "\n" not in err
    assert "d_model 32 there, 64 now" in err
    assert _tree(out) == before


def test_resume_on_other_data_is_one_line_unless_told(data_dir, interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    other = tmp_path / "other.train.jsonl"
    other.write_text((data_dir / "en-ro.train.jsonl").read_text(encoding="utf-8") * 2, encoding="utf-8")
    argv = [str(a) for a in _args(data_dir, out, interrupted[1] + 1, train_file=other, deepspeed=False)]
    before = _tree(out)
    assert main(argv + ["--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t5-deepspeed: error: cannot resume from") and "\n" not in err
    assert "train_data is" in err and "--ignore_resume_mismatch" in err
    assert _tree(out) == before
    assert main(argv + ["--resume_from_checkpoint", "latest", "--ignore_resume_mismatch"]) == 0


class _CreatesFile:
    """Unpickling this runs open(path, "w"): the test sees whether any code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_in_a_checkpoint_is_refused_unrun(data_dir, interrupted, tmp_path, capsys):
    out, step = _copy(interrupted, tmp_path), interrupted[1]
    ckpt = out / f"checkpoint-{step}"
    sentinel = tmp_path / "code-ran"
    torch.save({"python": _CreatesFile(sentinel)}, ckpt / "rng_state.pth")
    # a forger can rewrite the marker too: the pickle scan must not rely on it
    marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    marker["files"]["rng_state.pth"] = (ckpt / "rng_state.pth").stat().st_size
    (ckpt / COMPLETE_MARKER).write_text(json.dumps(marker))
    argv = [str(a) for a in _args(data_dir, out, step + 2, deepspeed=False)]
    assert main(argv + ["--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"rng_state.pth asks to unpickle {open.__module__}.open" in err
    assert not sentinel.exists()
    # and DeepSpeed's own torch.load(weights_only=False) is overridden while a resume loads
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt / "rng_state.pth", weights_only=False)
    assert not sentinel.exists()


def test_overwrite_keeps_foreign_files_and_the_train_file(data_dir, interrupted, tmp_path):
    out, step = _copy(interrupted, tmp_path), interrupted[1]
    (out / "notes.txt").write_text("the user's, not ours")
    train = out / "train.jsonl"
    shutil.copy(data_dir / "en-ro.train.jsonl", train)
    # checkpoint-2 and checkpoint-K (and checkpoint-4 when the signal came a step late); tb: TensorBoard events
    ours = sorted([p.name for p in out.glob("checkpoint-*")] + ["log.jsonl", "tb"])
    # plain Trainer (no DeepSpeed) keeps this run short; the output-dir rules are the same
    r = run_cli(_args(data_dir, out, 1, train_file=train, deepspeed=False) + ["--overwrite_output_dir"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    said = [line for line in r.stdout.splitlines() if "--overwrite_output_dir:" in line]
    assert len(said) == 1, said
    assert f"removed {len(ours)} entries t5-deepspeed wrote in {out} ({', '.join(ours)})" in said[0]
    assert "kept 2 it did not write or reads as input (notes.txt, train.jsonl)" in said[0]
    assert (out / "notes.txt").read_text() == "the user's, not ours"
    assert train.read_bytes() == (data_dir / "en-ro.train.jsonl").read_bytes()
    assert not (out / f"checkpoint-{step}").exists() and sorted(_losses(out)) == [1]


def test_overwrite_refuses_to_write_over_a_file_it_did_not_write(data_dir, interrupted, tmp_path, capsys):
    out = _copy(interrupted, tmp_path)
    (out / "model.safetensors").write_text("someone else's model")
    before = _tree(out)
    argv = [str(a) for a in _args(data_dir, out, 1, deepspeed=False)] + ["--overwrite_output_dir"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds model.safetensors, not written by this program" in err
    assert _tree(out) == before


def test_sigterm_asks_for_a_save_and_a_stop_after_the_step():
    """The SIGTERM half of the path the SIGINT run above takes (a real signal, core's StopFlag)."""
    import os
    from types import SimpleNamespace

    from t5_deepspeed.trainer import SaveOnSignalCallback
    from trainstack.loop import StopFlag
    from transformers import TrainerControl, TrainerState

    flag, args = StopFlag(), SimpleNamespace(device="cpu")
    callback, control = SaveOnSignalCallback(flag), TrainerControl()
    with flag:
        callback.on_step_end(args, TrainerState(), control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)
        callback.on_step_end(args, TrainerState(), control)
    assert control.should_save and control.should_training_stop and callback.stopped_by == signal.SIGTERM

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
import trainstack.checkpoint as ckpt
from trainstack.checkpoint import (
    CheckpointError,
    CheckpointManager,
    ModelMismatch,
    ResumeMismatch,
    capture_rng_state,
    check_fingerprint,
    files_fingerprint,
    load_model_state,
    restore_rng_state,
)


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def _objs(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_roundtrip_full_state(tmp_path):
    model, opt, sched = _objs(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    m = CheckpointManager(tmp_path)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    p = m.save(3, model=model, optimizer=opt, scheduler=sched, scaler=scaler,
               extra={"epoch": 1, "data": {"batches_consumed": 7}}, metrics={"eval_loss": 1.5})
    expect = (random.random(), np.random.rand(), torch.rand(1))
    model2, opt2, sched2 = _objs(1)
    scaler2 = torch.amp.GradScaler("cpu")
    extra = m.load(p, model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2)
    assert extra == {"epoch": 1, "data": {"batches_consumed": 7}}
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(torch.rand(1), expect[2])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert sched2.last_epoch == sched.last_epoch and scaler2.get_scale() == 1024.0
    state = json.loads((p / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["metrics"]["eval_loss"] == 1.5


def test_keep_last_and_best(tmp_path):
    model, _, _ = _objs()
    m = CheckpointManager(tmp_path, keep_last=2, keep_best=1, metric="eval_loss", mode="min")
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 4.0)]:
        m.save(step, model=model, metrics={"eval_loss": loss})
    assert [p.name for p in m.checkpoints()] == ["step-2", "step-4", "step-5"]
    assert m.best().name == "step-2" and m.latest().name == "step-5"
    mx = CheckpointManager(tmp_path / "max", keep_last=1, keep_best=2, metric="acc", mode="max")
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.7), (4, 0.1)]:
        mx.save(step, model=model, metrics={"acc": acc})
    assert [p.name for p in mx.checkpoints()] == ["step-2", "step-3", "step-4"]


def test_crash_mid_save_keeps_previous(tmp_path, monkeypatch):
    model, opt, sched = _objs()
    m = CheckpointManager(tmp_path, keep_last=1)
    good = m.save(1, model=model, optimizer=opt, scheduler=sched, extra={"epoch": 0})
    real_save = torch.save
    calls = {"n": 0}

    def flaky(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # after model and optimizer were written
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", flaky)
    with pytest.raises(OSError, match="disk full"):
        m.save(2, model=model, optimizer=opt, scheduler=sched, extra={"epoch": 0})
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert (tmp_path / ".tmp-step-2").exists()
    assert m.latest() == good and m.checkpoints() == [good]
    model2, opt2, sched2 = _objs(1)
    assert m.load(m.latest(), model=model2, optimizer=opt2, scheduler=sched2) == {"epoch": 0}
    # a half-written final-named dir (no trainer_state.json) is ignored too
    (tmp_path / "step-9").mkdir()
    assert m.latest() == good
    CheckpointManager(tmp_path)  # a new manager (next run) cleans the temp dir
    assert not (tmp_path / ".tmp-step-2").exists()


def test_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    m = CheckpointManager(tmp_path)
    p = m.save(1, model=model)
    other = Tied()
    m.load(p, model=other)
    assert torch.equal(other.head.weight, model.emb.weight) and other.head.weight is other.emb.weight
    # HF-style files drop the tied key: accepted because head.weight is tied to emb.weight
    load_model_state(other, {"emb.weight": torch.ones(10, 4)})
    assert torch.equal(other.head.weight, torch.ones(10, 4))
    # a missing key that is not tied is an error
    with pytest.raises(ModelMismatch, match="bias"):
        load_model_state(torch.nn.Linear(4, 10), {"weight": torch.ones(10, 4)})


def test_changed_model_size_is_one_line_naming_key_and_shapes(tmp_path):
    m = CheckpointManager(tmp_path)
    p = m.save(1, model=torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)))
    bigger = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 1))
    with pytest.raises(ModelMismatch) as e:
        m.load(p, model=bigger)
    msg = str(e.value)
    assert "\n" not in msg and "0.weight" in msg and "[4, 3]" in msg and "[8, 3]" in msg
    with pytest.raises(ModelMismatch, match="lacks, first '1.weight'"):  # a key the model lacks
        m.load(p, model=torch.nn.Sequential(torch.nn.Linear(3, 4)))


def test_save_model_fn_and_rng_helpers(tmp_path):
    model, _, _ = _objs()
    m = CheckpointManager(tmp_path)
    p = m.save(1, model=model, save_model_fn=lambda d: (d / "hf").mkdir() or (d / "hf" / "config.json").write_text("{}"))
    assert (p / "hf" / "config.json").exists()
    s = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(s)
    assert torch.equal(torch.rand(3), a)


def test_every_file_loads_with_weights_only(tmp_path):
    model, opt, sched = _objs()
    p = CheckpointManager(tmp_path).save(1, model=model, optimizer=opt, scheduler=sched,
                                         scaler=torch.amp.GradScaler("cpu"), extra={"data": {"pos": 3}})
    manifest = json.loads((p / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.pt", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng.pt",
                                      "extra.pt", "trainer_state.json"}
    for name in manifest["files"]:
        if name.endswith(".pt"):
            torch.load(p / name, weights_only=True)


def test_extra_that_could_not_be_loaded_back_fails_at_save(tmp_path):
    m = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"extra\['data'\]\['order'\] is a numpy.ndarray"):
        m.save(1, model=torch.nn.Linear(2, 2), extra={"data": {"order": np.arange(3)}})
    assert m.checkpoints() == [] and not list(tmp_path.glob(".tmp-*"))


class _Evil:
    """Unpickling calls open(marker, "w"): the file appears only if the pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["extra.pt", "rng.pt", "optimizer.pt", "model.pt"])
def test_crafted_pickle_in_a_checkpoint_does_not_execute(tmp_path, name):
    model, opt, sched = _objs()
    m = CheckpointManager(tmp_path / "ckpts")
    p = m.save(1, model=model, optimizer=opt, extra={"epoch": 0})
    marker = tmp_path / "pwned"
    torch.save({"state": _Evil(marker)}, p / name)
    # an attacker can fix the manifest too: the load itself must refuse
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"][name] = (p / name).stat().st_size
    (p / "manifest.json").write_text(json.dumps(manifest))
    assert m.latest() == p
    with pytest.raises(CheckpointError) as e:
        m.load(p, model=model, optimizer=opt)
    assert "\n" not in str(e.value) and name in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_a_directory_without_manifest_is_never_latest_nor_loaded(tmp_path):
    model, _, _ = _objs()
    m = CheckpointManager(tmp_path)
    good = m.save(1, model=model)
    legacy = tmp_path / "step-5"  # trainer_state.json only: an older core's layout, or a half-deleted copy
    legacy.mkdir()
    (legacy / "trainer_state.json").write_text(json.dumps({"step": 5}))
    torch.save(model.state_dict(), legacy / "model.pt")
    assert m.latest() == good and m.checkpoints() == [good]
    with pytest.raises(CheckpointError, match="no valid manifest.json"):
        m.load(legacy, model=model)
    # a listed file that shrank (a torn copy) makes a checkpoint incomplete too
    with open(good / "model.pt", "r+b") as f:
        f.truncate(10)
    assert m.latest() is None


def _toy(value: float):
    """A model and optimizer whose weights are all ``value``, so a test can tell which copy survived."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model, opt


def _engine_state(value: float):
    """A shared_save_fn writing a nested file the way DeepSpeed's save_checkpoint does."""
    def write(directory):
        (directory / "deepspeed" / "engine").mkdir(parents=True)
        torch.save({"value": torch.tensor(value)}, directory / "deepspeed" / "engine" / "optim_states.pt")
    return write


def _save_in_a_child_killed_at(phase, root, run_id, step, value, shared=False) -> int:
    """Fork a process (torch is already imported: no start-up cost) that saves one checkpoint and
    SIGKILLs itself when the save reaches ``phase``; return the child's wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            def crash_at(name):
                if name == phase:
                    os.kill(os.getpid(), signal.SIGKILL)

            ckpt._reached = crash_at
            model, opt = _toy(value)
            CheckpointManager(root, keep_last=2, run_id=run_id).save(
                step, model=model, optimizer=opt, extra={"value": value},
                shared_save_fn=_engine_state(value) if shared else None)
        finally:
            os._exit(3)  # reached only if the phase never came: the parent fails the test
    return os.waitpid(pid, 0)[1]


# (save kind, phase where the child is killed, the step and value a fresh manager must find as latest)
CRASHES = [
    ("new", "tmp_files", 2, 2.0),     # only model.pt written: the previous checkpoint is latest
    ("new", "tmp_complete", 3, 3.0),  # complete but not renamed: recovery renames it into place
    ("new", "renamed", 3, 3.0),
    ("new", "trashed", 3, 3.0),       # while pruning step-1
    ("resave", "tmp_files", 2, 2.0),
    ("resave", "tmp_complete", 2, 2.0),  # both copies complete: the committed one stays
    ("resave", "old_moved", 2, 5.0),     # no step-2 at all for a moment: the new copy is promoted
    ("resave", "renamed", 2, 5.0),
    ("resave", "trashed", 2, 5.0),       # while the old copy is being deleted
]


@pytest.mark.parametrize("kind,phase,want_step,want_value", CRASHES)
def test_sigkill_during_a_save_keeps_a_complete_latest(tmp_path, kind, phase, want_step, want_value):
    m = CheckpointManager(tmp_path, keep_last=2, run_id="run-a")
    for step, value in ((1, 1.0), (2, 2.0)):
        model, opt = _toy(value)
        m.save(step, model=model, optimizer=opt, extra={"value": value})
    step, value = (3, 3.0) if kind == "new" else (2, 5.0)
    status = _save_in_a_child_killed_at(phase, tmp_path, "run-a", step, value)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # really killed at that moment

    fresh = CheckpointManager(tmp_path, keep_last=2)
    latest = fresh.latest()
    assert latest is not None and latest.name == f"step-{want_step}"
    model, opt = _toy(0.0)
    extra = fresh.load(latest, model=model, optimizer=opt)
    assert extra == {"value": want_value} and torch.all(model.weight == want_value)
    assert fresh.run_id == "run-a"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left over
    # and the run goes on: a re-save of the same step and a new step both work
    fresh.save(want_step, model=model, optimizer=opt, extra=extra)
    fresh.save(want_step + 1, model=model, optimizer=opt, extra=extra)
    assert [p.name for p in fresh.checkpoints()][-2:] == [f"step-{want_step}", f"step-{want_step + 1}"]


@pytest.mark.parametrize("phase,want_value", [("tmp_files", 2.0), ("old_moved", 5.0)])
def test_files_of_a_shared_save_are_in_the_manifest_and_survive_a_kill_mid_resave(tmp_path, phase, want_value):
    m = CheckpointManager(tmp_path, run_id="run-a")
    model, opt = _toy(2.0)
    first = m.save(2, model=model, optimizer=opt, extra={"value": 2.0}, shared_save_fn=_engine_state(2.0))
    assert "deepspeed/engine/optim_states.pt" in ckpt.read_manifest(first)["files"]
    status = _save_in_a_child_killed_at(phase, tmp_path, "run-a", 2, 5.0, shared=True)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    latest = CheckpointManager(tmp_path).latest()
    assert latest == tmp_path / "step-2"
    assert torch.load(latest / "deepspeed/engine/optim_states.pt")["value"] == want_value  # the same copy's
    assert torch.load(latest / "extra.pt")["value"] == want_value
    # a nested file that shrank makes the checkpoint incomplete, like a top-level one
    with open(latest / "deepspeed/engine/optim_states.pt", "r+b") as f:
        f.truncate(10)
    assert CheckpointManager(tmp_path).latest() is None


def test_recovery_promotes_a_complete_temp_copy_over_a_half_deleted_final(tmp_path):
    """The state the old core left when killed between deleting step-N and renaming its temp copy."""
    model, _, _ = _objs()
    m = CheckpointManager(tmp_path, run_id="r")
    p = m.save(4, model=model, extra={"epoch": 1})
    os.rename(p, tmp_path / ".tmp-step-4")
    (tmp_path / "step-4").mkdir()  # what was left of the old copy
    (tmp_path / "step-4" / "trainer_state.json").write_text("{}")
    again = CheckpointManager(tmp_path)
    assert again.latest() == tmp_path / "step-4" and not (tmp_path / ".tmp-step-4").exists()
    assert again.load(again.latest(), model=model) == {"epoch": 1}


def test_pruning_keeps_this_runs_checkpoints_in_a_reused_directory(tmp_path):
    model, _, _ = _objs()
    old = CheckpointManager(tmp_path, keep_last=2, run_id="old")
    for step in (20, 40, 60):
        old.save(step, model=model)
    new = CheckpointManager(tmp_path, keep_last=2, run_id="new")
    for step in (10, 20, 24):
        new.save(step, model=model)
    names = [p.name for p in new.checkpoints()]
    assert names == ["step-40", "step-60", "step-20", "step-24"]  # save order; the new run's last two
    assert new.latest().name == "step-24"


def test_fingerprint_helpers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("x")
    fp = files_fingerprint([data, "hub/dataset"])
    assert fp == files_fingerprint([data, "hub/dataset"]) and fp != files_fingerprint([data])
    (data / "a.txt").write_text("xy")
    assert files_fingerprint([data, "hub/dataset"]) != fp

    m = CheckpointManager(tmp_path / "ckpts")
    p = m.save(1, model=torch.nn.Linear(2, 2), fingerprint={"data": "abc", "max_length": 128, "vocab_size": 10})
    # a field only one side has (another version of the caller) is not compared
    check_fingerprint(p, {"data": "abc", "max_length": 128, "vocab_size": 10, "new_field": 1})
    with pytest.raises(ResumeMismatch) as e:
        check_fingerprint(p, {"data": "abc", "max_length": 256, "vocab_size": 11})
    assert "\n" not in str(e.value) and "max_length is 256 now but 128" in str(e.value)
    said = []
    check_fingerprint(p, {"data": "zzz", "max_length": 256}, ignore_mismatch=True, say=said.append)
    assert len(said) == 2 and "data differs" in said[0]

import json
import random

import numpy as np
import pytest
import torch
import trainstack.checkpoint as ckpt
from trainstack.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state


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
    torch.save({"emb.weight": torch.ones(10, 4)}, p / "model.pt")
    m.load(p, model=other)
    assert torch.equal(other.head.weight, torch.ones(10, 4))
    # a missing key that is not tied is an error
    lin = torch.nn.Linear(4, 10)
    torch.save({"weight": torch.ones(10, 4)}, p / "model.pt")
    with pytest.raises(KeyError, match="bias"):
        m.load(p, model=lin)


def test_save_model_fn_and_rng_helpers(tmp_path):
    model, _, _ = _objs()
    m = CheckpointManager(tmp_path)
    p = m.save(1, model=model, save_model_fn=lambda d: (d / "hf").mkdir() or (d / "hf" / "config.json").write_text("{}"))
    assert (p / "hf" / "config.json").exists()
    s = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(s)
    assert torch.equal(torch.rand(3), a)

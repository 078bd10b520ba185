"""report_to: log.jsonl always, TensorBoard and W&B as asked (W&B through a fake module: no account, no network)."""

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from trainstack.extras import MissingExtra  # noqa: E402
from trainstack.loop import LoopConfig  # noqa: E402
from trainstack.runlog import RunLog  # noqa: E402


class FakeWandb(types.ModuleType):
    """The three calls RunLog makes, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # accelerate asks find_spec("wandb")
        self.init_kwargs, self.logged, self.finished = None, [], 0

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def log(self, data, step=None):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished += 1


def test_fit_reports_to_wandb_the_numbers_of_log_jsonl(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "toy-run"
    res, _ = _toy.run(run_dir, max_steps=4, total_steps=4, loop={"report_to": ["wandb"]})
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert res.steps == 4 and len(rows) == 4
    assert fake.init_kwargs["name"] == "toy-run" and fake.init_kwargs["dir"] == str(run_dir)
    assert fake.init_kwargs["config"]["max_steps"] == 4 and fake.finished == 1
    assert [step for step, _ in fake.logged] == [r["step"] for r in rows] == [1, 2, 3, 4]
    for (_, data), row in zip(fake.logged, rows, strict=True):
        assert data["loss"] == row["loss"] and data["lr"] == row["lr"] and data["rss_gib"] == row["rss_gib"]
        assert "step" not in data and "mfu" not in data  # mfu is None without flops_per_token: not a number
    assert not (run_dir / "tb").exists()  # report_to lists wandb only


def test_report_to_wandb_without_wandb_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails as if not installed
    with pytest.raises(MissingExtra) as e:
        _toy.run(tmp_path / "run", max_steps=2, total_steps=2, loop={"report_to": ["wandb", "tensorboard"]})
    assert str(e.value) == ("report_to=wandb needs wandb, which is not installed: "
                            "pip install 'trainstack-core[wandb]'")
    assert not (tmp_path / "run").exists()


def test_report_to_is_validated():
    with pytest.raises(ValueError, match="report_to: unknown 'tb'; allowed: tensorboard, wandb, none"):
        LoopConfig(report_to=["tb"])
    with pytest.raises(ValueError, match="'none' cannot be combined with wandb"):
        LoopConfig(report_to=["none", "wandb"])
    assert LoopConfig().report_to == ["tensorboard"]
    assert LoopConfig(report_to="wandb").report_to == ["wandb"]
    assert LoopConfig(tensorboard=False).report_to == ["none"]
    assert LoopConfig(report_to=["tensorboard", "wandb"], tensorboard=False).report_to == ["wandb"]


def test_runlog_writes_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLog(tmp_path, ["tensorboard"]) as run_log:
        run_log.write({"step": 1, "loss": 2.0, "grad_norm": None, "note": "text"})
        run_log.write({"step": 2, "loss": 1.5, "eval_exact_match": 0.25})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval_exact_match", "loss"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.5)]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2

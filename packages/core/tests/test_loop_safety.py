"""fit's run-directory, resume and stop guarantees: a reused directory, a crash between saves, a
signal inside a long accumulation window, epochs without data, crafted files, changed runs."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from trainstack.checkpoint import CheckpointError, ModelMismatch, ResumeMismatch  # noqa: E402
from trainstack.loop import LoopConfig, NoUsableData, RunDirError, fit  # noqa: E402
from trainstack.precision import resolve_precision  # noqa: E402


def _log(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in _log(run_dir) if "loss" in r}


def test_a_fresh_start_over_a_runs_checkpoints_is_refused_and_overwrite_keeps_unknown_files(tmp_path):
    run = tmp_path / "run"
    _toy.run(run, 4, 4)
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "README").write_text("mine too")
    log_before = (run / "log.jsonl").read_bytes()
    with pytest.raises(RunDirError) as e:
        _toy.run(run, 3, 3, resume_hint="toy --resume")
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and "step-4" in msg and "toy --resume" in msg
    assert "overwrite=true" in msg
    assert (run / "log.jsonl").read_bytes() == log_before  # nothing touched

    res, _ = _toy.run(run, 3, 3, overwrite=True)
    assert res.steps == 3 and (run / "notes.txt").read_text() == "mine"
    assert (run / "checkpoints" / "README").read_text() == "mine too"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["README", "step-3"]
    assert [r["step"] for r in _log(run)] == [1, 2, 3]


def test_a_file_as_run_dir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is not a directory"):
        _toy.run(tmp_path / "f", 2, 2)


def test_resume_after_a_crash_between_saves_logs_each_step_once(tmp_path):
    _toy.run(tmp_path / "ref", 6, 6)
    _toy.run(tmp_path / "run", 6, 6, loop={"save_every_steps": 3})
    # killed after logging steps 4-6 but before saving step 6: only step-3 survives
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-6")
    res, _ = _toy.run(tmp_path / "run", 6, 6, resume=True)
    assert res.steps == 6
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")


def _signalling_run(run_dir, max_steps, signal_at_micro=None, resume=False):
    """_toy's job with an 8-batch accumulation window; SIGTERM arrives during micro-batch N."""
    calls = []

    def loss_fn(model, batch):
        calls.append(batch["index"].tolist())
        if len(calls) == signal_at_micro:
            os.kill(os.getpid(), signal.SIGTERM)
        return _toy.loss_fn(model, batch)

    torch.manual_seed(0)
    model = _toy.Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    cfg = LoopConfig(max_steps=max_steps, grad_accum_steps=8, log_every_steps=1, seed=7, tensorboard=False)
    res = fit(model=model, optimizer=opt, scheduler=None, train_batches=_toy.make_batches("tokens"), loss_fn=loss_fn,
              config=cfg, run_dir=run_dir, precision=resolve_precision("fp32"), resume=resume, progress=False,
              resume_hint="toy train --resume")
    return res, model, calls


def test_a_signal_inside_a_long_window_stops_at_the_next_batch_and_resumes_exactly(tmp_path, capsys):
    _, ref_model, ref_calls = _signalling_run(tmp_path / "ref", 3)
    res, _, calls = _signalling_run(tmp_path / "run", 3, signal_at_micro=11)  # 3rd micro-batch of window 2
    assert res.interrupted and res.steps == 1 and len(calls) == 11  # no further batch was trained on
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("stopped by signal 15 at step 1; checkpoint ") and last.endswith("; continue with toy train --resume")
    res2, model, calls2 = _signalling_run(tmp_path / "run", 3, resume=True)
    assert res2.steps == 3 and not res2.interrupted
    assert calls2 == ref_calls[8:]  # the dropped window is replayed whole
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_stop_message_carries_the_callers_resume_hint(tmp_path, capsys):
    _signalling_run(tmp_path / "run", 3, signal_at_micro=3)
    out = capsys.readouterr().out
    assert "toy train --resume" in out and "resume=True" not in out


def _linear_fit(run_dir, batches, width=3, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(width, 1)
    cfg = kwargs.pop("config", LoopConfig(max_steps=2, tensorboard=False))
    return fit(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None,
               train_batches=_toy.ListBatches(batches), loss_fn=lambda m, x: (m(x).pow(2).mean(), x.shape[0]), config=cfg,
               run_dir=run_dir, precision=resolve_precision("fp32"), progress=False, **kwargs)


@pytest.mark.parametrize("config", [LoopConfig(max_steps=5, tensorboard=False), LoopConfig(epochs=3, tensorboard=False)])
def test_an_epoch_without_batches_is_an_error_not_a_spin(tmp_path, config):
    with pytest.raises(NoUsableData, match="epoch 0 yielded no batch"):
        _linear_fit(tmp_path, [], config=config)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("step-*"))


def test_resume_at_the_end_of_an_epoch_is_not_an_empty_epoch(tmp_path):
    # 34 batches, accumulation 2: step 17 ends epoch 0, saved with the whole epoch consumed
    _toy.run(tmp_path / "ref", 20, 20)
    _toy.run(tmp_path / "run", 17, 20)
    res, _ = _toy.run(tmp_path / "run", 20, 20, resume=True)
    assert res.steps == 20 and _losses(tmp_path / "run") == _losses(tmp_path / "ref")


@pytest.mark.parametrize("kwargs,match", [({"max_steps": -5}, "max_steps must be >= 1"),
                                          ({"max_steps": 0}, "max_steps must be >= 1"),
                                          ({"epochs": 0}, "epochs must be >= 1"),
                                          ({"save_every_steps": -1}, "save_every_steps must be >= 0")])
def test_loop_config_rejects_counts_that_train_nothing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**kwargs)


def test_resume_checks_the_fingerprint_and_the_model(tmp_path):
    data = [torch.randn(4, 3) for _ in range(3)]
    _linear_fit(tmp_path, data, resume_fingerprint={"data": "aaa", "max_length": 64})
    with pytest.raises(ResumeMismatch) as e:
        _linear_fit(tmp_path, data, resume=True, resume_fingerprint={"data": "bbb", "max_length": 64},
                    config=LoopConfig(max_steps=3, tensorboard=False))
    assert "\n" not in str(e.value) and "data is 'bbb' now but 'aaa'" in str(e.value)
    res = _linear_fit(tmp_path, data, resume=True, resume_fingerprint={"data": "bbb", "max_length": 64},
                      ignore_resume_mismatch=True, config=LoopConfig(max_steps=3, tensorboard=False))
    assert res.steps == 3
    with pytest.raises(ModelMismatch) as e:
        _linear_fit(tmp_path, [torch.randn(4, 5)], width=5, resume=True,
                    config=LoopConfig(max_steps=4, tensorboard=False))
    assert "\n" not in str(e.value) and "weight has shape [1, 3] in the checkpoint but [1, 5]" in str(e.value)


def test_a_crafted_pickle_does_not_run_on_resume(tmp_path):
    data = [torch.randn(4, 3) for _ in range(3)]
    res = _linear_fit(tmp_path, data)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    extra = res.checkpoint / "extra.pt"
    torch.save({"step": 2, "epoch": 0, "x": Evil()}, extra)
    manifest = json.loads((res.checkpoint / "manifest.json").read_text())
    manifest["files"]["extra.pt"] = extra.stat().st_size
    (res.checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as e:
        _linear_fit(tmp_path, data, resume=True, config=LoopConfig(max_steps=3, tensorboard=False))
    assert "\n" not in str(e.value) and "extra.pt: refused" in str(e.value)
    assert not marker.exists()


def test_resume_of_a_run_dir_whose_checkpoints_are_all_incomplete_is_refused(tmp_path):
    (tmp_path / "checkpoints" / "step-5").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="nothing complete to resume"):
        _linear_fit(tmp_path, [torch.randn(4, 3)], resume=True)


class _Positioned(list):
    """Fixed-shape batches with a resumable position (what fit saves and restores)."""

    def __init__(self, items):
        super().__init__(items)
        self.pos = 0

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        while self.pos < len(self):
            self.pos += 1
            yield list.__getitem__(self, self.pos - 1)
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def test_a_signal_inside_a_window_on_the_fast_path_drops_it_and_resumes_exactly(tmp_path):
    from trainstack.speed import Speed

    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(4, 6, generator=g), "y": torch.randn(4, 1, generator=g)} for _ in range(16)]

    def run(run_dir, max_steps, signal_at=None, resume=False):
        calls = []

        def loss_fn(model, batch):
            calls.append(1)
            if len(calls) == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return (model(batch["x"]) - batch["y"]).pow(2).mean(), batch["x"].shape[0]

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
        speed = Speed(compile=True, cuda_graphs=False, compile_mode="default", compile_backend="aot_eager",
                      warmup_runs=1, length_buckets="pow2", reason="test")
        res = fit(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), scheduler=None,
                  train_batches=_Positioned(data), loss_fn=loss_fn, resume=resume, progress=False, speed=speed,
                  config=LoopConfig(max_steps=max_steps, grad_accum_steps=4, log_every_steps=1, seed=1,
                                    tensorboard=False),
                  run_dir=run_dir, precision=resolve_precision("fp32"))
        return res, model, calls

    _, ref, _ = run(tmp_path / "ref", 3)
    res, _, calls = run(tmp_path / "run", 3, signal_at=6)  # the 2nd micro-batch of window 2
    assert res.interrupted and res.steps == 1 and len(calls) == 6
    res, model, _ = run(tmp_path / "run", 3, resume=True)
    assert res.steps == 3 and _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)

"""`chat-pretrain bench --arm ours` runs what `chat-pretrain train` runs (issue 11: a bench measures
what ships).

Both go through train.py's builders: the recorders below wrap each one, the loss function stops the run
once one optimizer step (two micro-batches) is done, and the two runs are compared call by call for the
same config and data. A bench that built its own model, batches, optimizer, scheduler or loss would
leave a builder unrecorded or train another model, and fail here.
"""

import dataclasses

import chat_pretrain.train as T
import pytest
import torch
from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet
from trainstack.precision import Precision
from trainstack.speed import Speed
from trainstack.testing import StopRun, record_builders

BUILDERS = ("build_tokenizer", "resolve_train_speed", "build_training_model", "build_train_batches", "schedule_steps",
            "build_optimizer_and_scheduler", "make_loss_fn", "build_loop_config")
ACCUM = 2


def _record_builders(monkeypatch):
    return record_builders(monkeypatch, T, BUILDERS, stop_after_micro_batches=ACCUM + 1)


def _comparable(x):
    """A builder argument as a value: what is built once per run compares by its settings."""
    if isinstance(x, T.TrainConfig):
        return dataclasses.replace(x, run_dir="")  # where train writes; the bench writes nothing
    if isinstance(x, torch.nn.Module):
        return ("model", x.config.to_dict())
    if hasattr(x, "eos_id") and hasattr(x, "fixed"):  # LoadedTokenizer
        return ("tokenizer", str(x.path), x.vocab_size, x.pad_id, x.eos_id, x.fixed)
    if hasattr(x, "stream") and hasattr(x, "files"):  # PromptResponseBatches
        return ("batches", [str(f) for f in x.files], x.cfg, x.seed, x.rank, x.world_size, x.max_tokens, x.shapes,
                x.fixed_shapes)
    if isinstance(x, int | str | torch.device | type(None) | Speed | Precision):
        return x
    return ("object", type(x).__name__)


def _call(run, name):
    (call,) = [c for c in run["calls"] if c[0] == name]
    return call


def test_bench_ours_and_train_go_through_the_same_builders(tmp_path, chatlm_dir, monkeypatch, capsys):
    data = make_parquet(tmp_path / "train.parquet", 120, median_chars=10, row_group_rows=50, task="copy")
    same = [f"grad_accum_steps={ACCUM}", "data.max_batch_rows=8"]
    trained = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        main(["train", "--profile", "cpu-tiny", f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}",
              f"run_dir={tmp_path / 'run'}", *same])
    assert "optimizer: torch.optim.AdamW for-loop (parameters on cpu)" in capsys.readouterr().out

    monkeypatch.undo()
    benched = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        main(["bench", "--tokenizer", str(chatlm_dir), "--data", str(data), "--profile", "cpu-tiny", "--arm", "ours",
              "--steps", "1", "--warmup", "1", *same])

    for run in (trained, benched):
        assert sorted(c[0] for c in run["calls"]) == sorted(BUILDERS)  # each once
        model, _ = _call(run, "build_training_model")[2]
        optimizer, scheduler = _call(run, "build_optimizer_and_scheduler")[2]
        assert _call(run, "build_optimizer_and_scheduler")[1]["model"] is model
        # the micro-steps ran the built model; one optimizer step of the built optimizer and scheduler
        trained_model = run["losses"][0][0]
        assert all(a is b for a, b in zip(getattr(trained_model, "module", trained_model).parameters(),
                                          model.parameters(), strict=True))
        assert run["optimizer_steps"] == 1 and scheduler.last_epoch == 1
    for name in BUILDERS:
        a_args, b_args = _call(trained, name)[1], _call(benched, name)[1]
        assert {k: _comparable(v) for k, v in a_args.items()} == {k: _comparable(v) for k, v in b_args.items()}, name
    # the same micro-batches (streamed and collated the same way), the same weights after the step
    for (_, a), (_, b) in zip(trained["losses"], benched["losses"], strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    after_a, after_b = trained["losses"][-1][0].state_dict(), benched["losses"][-1][0].state_dict()
    assert all(torch.equal(after_a[k], after_b[k]) for k in after_a)


def test_train_builds_the_optimizer_after_the_model_is_on_its_device(tmp_path, chatlm_dir, monkeypatch):
    """The fused kernel is chosen from where the parameters are when the optimizer is built. Here the
    run's device is "meta" (a stand-in for CUDA on this CPU host): every parameter must be there."""
    data = make_parquet(tmp_path / "train.parquet", 40, median_chars=10, task="copy")
    real_model = T.build_training_model
    seen = {}

    def on_meta(cfg, tok, device):
        return real_model(cfg, tok, torch.device("meta"))

    def check(cfg, model, total_steps):
        seen["devices"] = {p.device.type for p in model.parameters()}
        raise StopRun

    monkeypatch.setattr(T, "build_training_model", on_meta)
    monkeypatch.setattr(T, "build_optimizer_and_scheduler", check)
    with pytest.raises(StopRun):
        main(["train", "--profile", "cpu-tiny", f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}",
              f"run_dir={tmp_path / 'run'}"])
    assert seen["devices"] == {"meta"}

"""`mt-nllb bench`'s "ours" arm runs what `mt-nllb train` runs (issue 11: a bench measures what ships).

Both go through train.py's builders: the recorders below wrap each one, the loss function stops the run
at the second micro-batch (one optimizer step done), and the two runs are compared call by call on the
same config and data. A bench that built its own model, batches, optimizer, scheduler or loss would
leave a builder unrecorded or train another model and fail here.
"""

import dataclasses

import pytest
import torch
from mt_nllb import train as T
from mt_nllb.bench import bench_ours
from mt_nllb.cli import main
from trainstack.testing import StopRun, record_builders

BUILDERS = ("resolve_train_speed", "build_training_model", "build_train_batches", "total_optimizer_steps",
            "build_optimizer_and_scheduler", "make_loss_fn", "build_loop_config")


def _record_builders(monkeypatch):
    return record_builders(monkeypatch, T, BUILDERS, stop_after_micro_batches=2)


def _train(tmp_path, monkeypatch, *overrides):
    run = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        main(["train", "--profile", "cpu-debug", "--run-dir", str(tmp_path / "run"), "--no-progress",
              f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return run


def _call(run, name):
    (call,) = [c for c in run["calls"] if c[0] == name]
    return call


def _comparable(x):
    """A builder argument as a value: objects built once per run (model, its config, the batches)
    compare by their settings; the data and tokenizer are the very objects train used."""
    if isinstance(x, torch.nn.Module):
        return ("model", x.config.to_dict())
    if hasattr(x, "to_dict"):
        return ("config", x.to_dict())
    if isinstance(x, T.TrainConfig | torch.device | int):
        return x
    if dataclasses.is_dataclass(x):  # core's resolved Speed, the precision
        return ("settings", type(x).__name__, repr(x))
    if hasattr(x, "state_dict") and hasattr(x, "tp"):  # TranslationBatches
        return ("batches", id(x.tp), {k: v for k, v in vars(x).items() if k not in ("tp", "lengths", "_plan")})
    return ("object", id(x))


def _params(model):
    return list(getattr(model, "module", model).parameters())


def test_bench_ours_and_train_go_through_the_same_builders(tmp_path, monkeypatch, capsys):
    trained = _train(tmp_path, monkeypatch)
    assert "optimizer: torch.optim.AdamW for-loop (parameters on cpu)" in capsys.readouterr().out
    model_args = _call(trained, "build_training_model")[1]
    cfg, tokenizer, tp = model_args["cfg"], model_args["tokenizer"], _call(trained, "build_train_batches")[1]["train_tp"]

    monkeypatch.undo()
    benched = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        bench_ours("ours", cfg, tp, tokenizer=tokenizer, steps=1, warmup=1)

    for run in (trained, benched):
        assert sorted(c[0] for c in run["calls"]) == sorted(BUILDERS)  # each once
        model = _call(run, "build_training_model")[2]
        optimizer, scheduler = _call(run, "build_optimizer_and_scheduler")[2]
        assert _call(run, "build_optimizer_and_scheduler")[1]["model"] is model
        # the step trained the built model with the built optimizer and scheduler
        assert all(a is b for a, b in zip(_params(run["losses"][0][0]), model.parameters(), strict=True))
        assert run["optimizer_steps"] == 1 and scheduler.last_epoch == 1
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} <= {id(p) for p in model.parameters()}
    for name in BUILDERS:
        a_args, b_args = _call(trained, name)[1], _call(benched, name)[1]
        assert {k: _comparable(v) for k, v in a_args.items()} == {k: _comparable(v) for k, v in b_args.items()}, name
    # the same first micro-batch (same collation), and the same weights after the first optimizer step
    batch_a, batch_b = trained["losses"][0][1], benched["losses"][0][1]
    assert batch_a.keys() == batch_b.keys() and all(torch.equal(batch_a[k], batch_b[k]) for k in batch_a)
    assert all(torch.equal(a, b) for a, b in zip(trained["losses"][1][0].state_dict().values(),
                                                 benched["losses"][1][0].state_dict().values(), strict=True))


def test_train_builds_the_optimizer_after_the_model_is_on_its_device(tmp_path, monkeypatch):
    """The fused kernel is chosen from where the parameters are when the optimizer is built. Here the
    run's device is "meta" (a stand-in for CUDA on this CPU host): every parameter must be there."""
    real_model, real_optim = T.build_training_model, T.build_optimizer_and_scheduler
    seen = {}

    def on_meta(cfg, tokenizer, device, speed=None, world_size=1):
        seen["asked"] = device
        return real_model(cfg, tokenizer, torch.device("meta"), speed, world_size)

    def check(cfg, model, total_steps):
        seen["devices"] = {p.device.type for p in model.parameters()}
        seen["optimizer"] = real_optim(cfg, model, total_steps)[0]
        raise StopRun

    monkeypatch.setattr(T, "build_training_model", on_meta)
    monkeypatch.setattr(T, "build_optimizer_and_scheduler", check)
    with pytest.raises(StopRun):
        main(["train", "--profile", "cpu-debug", "--run-dir", str(tmp_path / "run"), "--no-progress",
              f"data.cache_dir={tmp_path / 'cache'}"])
    assert seen["devices"] == {"meta"}
    assert {p.device.type for g in seen["optimizer"].param_groups for p in g["params"]} == {"meta"}

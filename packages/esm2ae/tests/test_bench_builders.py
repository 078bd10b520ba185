"""`esm2ae bench`'s "ours" arm runs what `esm2ae train` runs (issue 11: a bench measures what ships).

Both go through train.py's builders: the recorders below wrap each one, the loss function stops the run
once one optimizer step (two micro-batches) is done, and the two runs are compared call by call for the
same config and data. A bench that built its own model, batches, optimizer, scheduler or loss would
leave a builder unrecorded or train another model, and fail here.
"""

import dataclasses

import pytest
import torch
from esm2ae import train as T
from esm2ae.bench import bench_config, bench_ours, lognormal_lengths, random_proteins
from esm2ae.cli import main
from trainstack.testing import StopRun, record_builders

from .test_train import TINY

BUILDERS = ("build_training_model", "schedule_steps", "build_optimizer_and_scheduler", "build_train_batches",
            "make_loss_fn", "build_loop_config")
ACCUM = 2


def _record_builders(monkeypatch):
    return record_builders(monkeypatch, T, BUILDERS, stop_after_micro_batches=ACCUM + 1)


def _comparable(x):
    """A builder argument as a value: the model built once per run compares by its weights' shapes;
    the data is the very list train read."""
    if isinstance(x, T.Config):
        return dataclasses.replace(x, run_dir="")  # where train writes; the bench writes nothing
    if isinstance(x, torch.nn.Module):
        return ("module", type(x).__name__, [(n, p.shape) for n, p in x.named_parameters()])
    if isinstance(x, list):
        return ("list", id(x))
    return x


def _call(run, name):
    (call,) = [c for c in run["calls"] if c[0] == name]
    return call


def test_bench_ours_and_train_go_through_the_same_builders(tmp_path, monkeypatch, capsys):
    trained = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        main(["train", "--profile", "cpu-debug", *TINY, f"batch.tokens_per_step={ACCUM * 1024}",
              "eval_every_steps=0", f"run_dir={tmp_path / 'run'}"])
    assert "optimizer: torch.optim.AdamW for-loop (parameters on cpu)" in capsys.readouterr().out
    cfg = _call(trained, "build_training_model")[1]["cfg"]
    train_seqs = _call(trained, "build_train_batches")[1]["train_seqs"]

    monkeypatch.undo()
    benched = _record_builders(monkeypatch)
    with pytest.raises(StopRun):
        bench_ours(cfg, train_seqs, steps=1, warmup=1)

    for run in (trained, benched):
        assert sorted(c[0] for c in run["calls"]) == sorted(BUILDERS)  # each once
        model, trainable, _ = _call(run, "build_training_model")[2]
        optimizer, scheduler = _call(run, "build_optimizer_and_scheduler")[2]
        assert _call(run, "build_optimizer_and_scheduler")[1]["trainable"] is trainable
        # the micro-steps ran the built model; one optimizer step of the built optimizer and scheduler
        stepped = run["losses"][0][0]
        assert all(a is b for a, b in zip(getattr(stepped, "module", stepped).parameters(), model.parameters(),
                                          strict=True))
        assert run["optimizer_steps"] == 1 and scheduler.last_epoch == 1
    for name in BUILDERS:
        a_args, b_args = _call(trained, name)[1], _call(benched, name)[1]
        assert {k: _comparable(v) for k, v in a_args.items()} == {k: _comparable(v) for k, v in b_args.items()}, name
    # the same packed, masked micro-batches, and the same weights after the step
    for (_, a), (_, b) in zip(trained["losses"], benched["losses"], strict=True):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y, field.name
    after_a, after_b = trained["losses"][-1][0].state_dict(), benched["losses"][-1][0].state_dict()
    assert all(torch.equal(after_a[k], after_b[k]) for k in after_a)


def test_bench_ours_runs_the_bench_config_on_cpu():
    """--accum 2: each timed optimizer step is two packed micro-batches, their real tokens all counted."""
    cfg = bench_config("esm2_tiny", max_tokens=1024, attention="sdpa", compile=False, precision="fp32",
                       overrides=["data.max_length=128"], accum=2)
    assert cfg.task == "mlm" and not cfg.model.pretrained and cfg.batch.grad_accum_steps() == 2
    res = bench_ours(cfg, random_proteins(lognormal_lengths(64, seed=1, median=60, high=128), seed=1), steps=2,
                     warmup=1)
    assert res.steps == 2 and res.samples > 0 and res.extra["grad_accum"] == 2
    assert 1024 < res.real_tokens <= 2 * 2 * 1024   # more than one micro-batch's slots a step
    assert 0 <= res.extra["padding_fraction"] < 0.5
    assert res.extra["optimizer"] == "torch.optim.AdamW for-loop (parameters on cpu)"
    # time to the first step counts the model build: more than the first step alone, less than the whole arm
    assert 0 < res.extra["first_step_seconds"] < res.extra["wall_incl_compile_s"]
    assert res.extra["compile_cache"] == "unused" and not res.extra["compiled"]


def test_ours_profile_groups_the_step_by_kernel_category():
    """The ours-profile arm profiles bench_ours's step; on a CPU the rows are operators (a GPU's are kernels)."""
    from esm2ae.bench import profile_ours

    cfg = bench_config("esm2_tiny", max_tokens=1024, attention="sdpa", compile=False, precision="fp32",
                       overrides=["data.max_length=128"])
    table = profile_ours(cfg, random_proteins(lognormal_lengths(64, seed=1, median=60, high=128), seed=1),
                         warmup=1, steps=2)
    assert table.device == "cpu" and table.steps == 2
    spent = table.by_category()
    for category in ("matmul", "attention fwd", "attention bwd", "norms", "optimizer"):
        assert spent[category] > 0, category
    assert sum(spent.values()) == pytest.approx(table.total_seconds)
    text = table.format()
    assert "not a GPU profile" in text and "aten::mm" in text


def test_fast_vs_eager_trains_both_paths_from_the_same_weights_on_cpu():
    """The bench's fast-vs-eager arm: the compiled layer (aot_eager: Inductor's graphs, traced on a CPU)
    and the eager path give the same losses over the same batches; a difference would show."""
    from esm2ae.bench import fast_vs_eager

    cfg = bench_config("esm2_tiny", max_tokens=1024, precision="fp32",
                       overrides=["data.max_length=128", "model.compile_backend=aot_eager"])
    result = fast_vs_eager(cfg, random_proteins(lognormal_lengths(64, seed=1, median=60, high=128), seed=1), steps=3)
    assert result["fast"] == "sdpa, compiled" and result["eager"] == "sdpa"
    assert len(result["fast_losses"]) == len(result["eager_losses"]) == 3
    assert result["fast_losses"] == pytest.approx(result["eager_losses"], rel=1e-5)
    assert result["max_abs_loss_diff"] < 1e-4
    assert len(set(result["fast_losses"])) == 3   # the weights move: the steps are not one loss three times


def test_bench_key_value_overrides_reach_ours_and_a_bad_key_is_one_line(monkeypatch, capsys):
    """`esm2ae bench ... model.residual_dtype=fp32` sets ours' config (what `train` would read); a key
    that does not exist stops before any arm runs, with one line and exit 2."""
    import esm2ae.bench as B

    assert main(["bench", "--sizes", "esm2_tiny", "model.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.nope" in err
    seen = {}
    monkeypatch.setattr(B.torch.cuda, "is_available", lambda: False)  # stop after the config is read
    monkeypatch.setattr(B, "bench_config", lambda *a, **k: seen.update(k) or bench_config(*a, **k))
    assert main(["bench", "--sizes", "esm2_tiny", "model.residual_dtype=fp32"]) == 2
    assert "esm2ae: error: esm2ae bench needs a CUDA GPU" in capsys.readouterr().err
    assert seen["overrides"] == ["model.residual_dtype=fp32"]
    assert bench_config("esm2_tiny", overrides=seen["overrides"]).model.residual_dtype == "fp32"


def test_fast_vs_eager_compares_at_most_32k_token_micro_batches(monkeypatch):
    """At the h200-141g profile's 65,536-token micro-batches the bench times ours at that size, while the
    fast-vs-eager comparison (whose eager reference holds a tokens x tokens mask) runs at 32,768; smaller
    micro-batches are compared as they are timed."""
    import esm2ae.bench as B

    timed, compared = [], []
    monkeypatch.setattr(B.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("trainstack.bench.device_banner", lambda: "")
    monkeypatch.setattr(B, "lognormal_lengths", lambda n, seed=0: lognormal_lengths(8, seed))
    monkeypatch.setattr(B, "bench_ours", lambda cfg, *a: timed.append(cfg.batch.max_tokens_per_batch) or _Result())
    monkeypatch.setattr(B, "fast_vs_eager", lambda cfg, proteins, steps: compared.append(cfg.batch.max_tokens_per_batch)
                        or {"name": "fast-vs-eager", "fast": "", "eager": "", "max_abs_loss_diff": 0.0,
                            "max_rel_loss_diff": 0.0})
    for tokens in (65536, 16384):
        B.run_bench(["esm2_tiny"], max_tokens=tokens, skip_baseline=True, compare_steps=1)
    assert timed == [65536, 16384] and compared == [32768, 16384]


@dataclasses.dataclass
class _Result:
    extra: dict = dataclasses.field(default_factory=lambda: {"first_step_seconds": 0.0, "compile_cache": "unused"})

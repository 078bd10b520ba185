"""`t5-deepspeed bench`'s "ours" side runs what `t5-deepspeed` (train) runs (issue 11: a bench measures
what ships).

The ours side is a subprocess of the real entry point. Here the bench's command is captured instead of
run, then executed in-process through the CLI until it reaches train.run, whose parsed arguments are
compared with those of the train command a user types for the same job (written out below, not derived
from the bench's). A bench side that ran another module, another recipe, or changed a training setting
fails here; only the bench's bookkeeping (timing JSON, step count, output, logging, no saving) differs.
"""

import dataclasses
import sys

import pytest
import t5_deepspeed.bench as B
import t5_deepspeed.train as T
from t5_deepspeed.args import ExtraArguments
from t5_deepspeed.cli import main as cli_main

# What the bench adds for its own measurement; none of it changes the model, data or optimizer step.
BOOKKEEPING_TRAINING = {"output_dir", "max_steps", "save_strategy", "logging_steps", "report_to", "seed"}
BOOKKEEPING_EXTRA = {"bench_json", "bench_warmup_steps", "overwrite_output_dir"}


class StopRun(Exception):
    pass


def _parsed_run_args(argv, monkeypatch):
    seen = []

    def stop(parsed):
        seen.append(parsed)
        raise StopRun

    monkeypatch.setattr(T, "run", stop)
    with pytest.raises(StopRun):
        cli_main(argv)
    return seen[0]


def test_bench_ours_is_the_train_entry_point_with_the_train_settings(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(B.subprocess, "call", lambda cmd, **kw: commands.append(cmd) or 1)  # 1: "failed"
    B.main(["--model", "t5-small", "--deepspeed", "zero2", "--batch_size", "4", "--sides", "ours", "--steps", "3",
            "--warmup", "1", "--out", str(tmp_path)])
    (ours,) = commands
    # `python -m t5_deepspeed` is the `t5-deepspeed` console script's entry (cli.main), train by default
    assert ours[:3] == [sys.executable, "-m", "t5_deepspeed"]
    benched = _parsed_run_args(ours[3:], monkeypatch)

    user_train = ["--config_name", "t5-small", "--deepspeed", "zero2", "--train_file", str(tmp_path / "bench.train.jsonl"),
                  "--source_lang", "en", "--target_lang", "ro", "--source_prefix", "translate English to Romanian: ",
                  "--do_train", "--per_device_train_batch_size", "4", "--learning_rate", "5e-05",
                  "--max_source_length", "256", "--max_target_length", "256", "--output_dir", str(tmp_path / "mine")]
    trained = _parsed_run_args(user_train, monkeypatch)

    assert benched.extra.recipe == trained.extra.recipe == ExtraArguments().recipe == "ours"
    assert benched.model == trained.model and benched.data == trained.data
    strip = {k: None for k in BOOKKEEPING_EXTRA}
    assert dataclasses.replace(benched.extra, **strip) == dataclasses.replace(trained.extra, **strip)
    assert {k: v for k, v in benched.training.items() if k not in BOOKKEEPING_TRAINING} == \
        {k: v for k, v in trained.training.items() if k not in BOOKKEEPING_TRAINING}
    assert benched.extra.bench_json and benched.training["max_steps"] == 4  # warmup + timed steps


def test_compiled_and_eager_losses_are_compared_only_without_dropout():
    compiled, eager = {1: 10.75, 2: 9.5, 3: 9.0}, {1: 10.75, 2: 9.25, 3: 9.0}
    line = B.compiled_vs_eager(compiled, eager, dropout_off=True)
    assert "largest loss difference 2.50e-01 at step 2" in line and "over 3 steps" in line
    assert "not compared" in B.compiled_vs_eager(compiled, eager, dropout_off=False)
    assert B.dropout_off("dropout_rate=0.0") and B.dropout_off("num_layers=4, dropout_rate=0")
    assert not B.dropout_off(None) and not B.dropout_off("dropout_rate=0.1") and not B.dropout_off("initializer_factor=32.0")

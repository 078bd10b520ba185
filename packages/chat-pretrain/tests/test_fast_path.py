"""The fast path learns what the eager path learns: same weights, same batches, same losses.

On CPU the fast path is forced with speed.compile=true and the aot_eager backend (traced, no code
generation). It runs what the GPU's captured step runs, less the capture: batches padded to their
length buckets and filled with filler rows, the step compiled once for every shape, core's
TrainStep. `chat-pretrain bench --arms fast-vs-eager` repeats the comparison on a GPU with CUDA
graphs and the full-size model.
"""

import dataclasses
import json

import pytest
import torch
from chat_pretrain import train as T
from chat_pretrain.cli import main
from chat_pretrain.config import load_train_config
from chat_pretrain.data import real_tokens
from chat_pretrain.synth import make_parquet
from trainstack.speed import SpeedConfig, resolve_speed

BUCKETS = "speed.length_buckets=8,16,24"
FAST = ["speed.compile=true", "speed.compile_backend=aot_eager"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_fast_path_losses_equal_the_eager_path_through_train(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "train.parquet", 300, median_chars=12, row_group_rows=100, task="copy")
    common = ["train", "--profile", "cpu-tiny", "--no-progress", f"data.train_files=[{data}]",
              f"tokenizer.path={chatlm_dir}", "max_steps=4", "log_every_steps=1", "grad_accum_steps=2", BUCKETS]
    assert main([*common, f"run_dir={tmp_path / 'eager'}"]) == 0
    eager_out = capsys.readouterr().out
    assert main([*common, f"run_dir={tmp_path / 'fast'}", *FAST]) == 0
    fast_out = "".join(capsys.readouterr())  # a recompile warning would go to the log (stderr)
    assert "speed: compile off, CUDA graphs off (CPU)" in eager_out
    assert "padded to each batch's longest row (eager)" in eager_out
    assert "speed: compile on, dynamic shapes, CUDA graphs off, length buckets 8,16,24,32 (CPU)" in fast_out
    assert ("batches: length buckets 8,16,24,32 per side, at most 16 batch shapes, 8 to 16 rows; padded to their "
            "bucket and filled to the shape's rows (fast path)") in fast_out
    assert "recompiled" not in fast_out
    assert json.loads((tmp_path / "fast" / "summary.json").read_text())["speed"].startswith("speed: compile on")
    eager, fast = _records(tmp_path / "eager"), _records(tmp_path / "fast")
    assert [r["loss"] for r in fast] == pytest.approx([r["loss"] for r in eager], abs=1e-5)
    # one compilation for every shape, and the optimizer's steps equal: same gradients, same norms
    assert fast[-1]["compiled_graphs"] == 1 and fast[-1]["recompiles"] == 0
    assert [r["grad_norm"] for r in fast] == pytest.approx([r["grad_norm"] for r in eager], rel=1e-4)


def test_fixed_shapes_are_few_and_padding_does_not_change_the_loss(tmp_path, chatlm_dir):
    """The batches of an epoch, eager and fast: the same rows in the same order; the fast ones take
    a few shapes; bucket padding and filler rows leave each batch's loss and real-token count as they
    are."""
    data = make_parquet(tmp_path / "train.parquet", 400, median_chars=10, row_group_rows=100)
    cfg = load_train_config("cpu-tiny", [f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}", BUCKETS,
                                         "data.id_column=id"])
    tok = T.build_tokenizer(cfg)
    fast_speed = resolve_speed(SpeedConfig(compile=True), "cpu", max_len=cfg.data.max_seq_len)
    eager_batches, fast_batches = (list(T.build_train_batches(cfg, tok, speed=s)) for s in (None, fast_speed))
    assert len(eager_batches) == len(fast_batches) > 10
    shapes = T.batch_shapes(cfg)
    possible = set(shapes.possible_shapes())
    seen = {(b["input_ids"].shape[0], b["input_ids"].shape[1], b["labels"].shape[1]) for b in fast_batches}
    assert seen <= possible and 1 < len(seen) <= 16
    assert len({b["input_ids"].shape + b["labels"].shape for b in eager_batches}) > len(seen)  # eager: more shapes
    # a group's leftover rows join a larger group: at most one filled batch per bucket of rows (400 / 256)
    assert sum(bool((b["row_ids"] == -1).any()) for b in fast_batches) <= 2

    torch.manual_seed(0)
    model, _ = T.build_training_model(cfg, tok, "cpu")
    model.eval()  # (no dropout in cpu-tiny either)
    loss_fn = T.make_loss_fn()
    # Training builds no KV cache: transformers 5.17's T5 makes one when use_cache is on, and that
    # broke the compiled step into three graphs on a GPU.
    calls = []
    model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs.get("use_cache")), with_kwargs=True)
    for eager, fast in zip(eager_batches[:8], fast_batches[:8], strict=True):
        rows = len(eager["row_ids"])
        assert fast["row_ids"][:rows].tolist() == eager["row_ids"] and (fast["row_ids"][rows:] == -1).all()
        assert fast["labels"][rows:].eq(-100).all()  # filler rows: nothing to predict
        with torch.no_grad():
            (l_eager, n_eager), (l_fast, n_fast) = loss_fn(model, eager), loss_fn(model, fast)
        assert int(n_fast) == int(n_eager) == int(real_tokens(eager))
        torch.testing.assert_close(l_fast, l_eager, rtol=1e-5, atol=1e-6)
    assert calls == [False] * 16


def test_shared_length_pads_both_sides_to_one_bucket(tmp_path, chatlm_dir):
    cfg = load_train_config("cpu-tiny", [BUCKETS, "speed.shared_length=true"])
    shapes = T.batch_shapes(cfg)
    assert shapes.possible_shapes() == [(16, 8, 8), (16, 16, 16), (8, 24, 24), (8, 32, 32)]
    assert T.batch_shapes(dataclasses.replace(cfg, speed=dataclasses.replace(cfg.speed, length_buckets="off"))) is None


def test_two_gloo_processes_on_the_fast_path(tmp_path, chatlm_dir):
    """Several processes: the model compiled (no graphs under DDP), batches on fixed shapes, and the
    ranks' zero-weight padding batches on a shape of the set too; an epoch with evaluation finishes."""
    import os
    import subprocess
    import sys

    from trainstack.testing import failed_run_text, free_port

    train = make_parquet(tmp_path / "train.parquet", 150, median_chars=10, row_group_rows=50, task="copy")
    valid = make_parquet(tmp_path / "valid.parquet", 7, median_chars=10, seed=9, task="copy")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "chat_pretrain", "train", "--profile", "cpu-tiny", "--no-progress",
           f"data.train_files=[{train}]", f"data.valid_files=[{valid}]", f"tokenizer.path={chatlm_dir}",
           f"run_dir={run}", "data.bucket_rows=40", "data.max_batch_rows=8", "grad_accum_steps=2",
           "log_every_steps=1", "eval.max_new_tokens=4", BUCKETS, *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, failed_run_text(proc.stdout, proc.stderr)
    assert "padded to their bucket and filled to the shape's rows (fast path)" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["speed"].startswith("speed: compile on, dynamic shapes, CUDA graphs off")
    assert summary["interrupted"] is False and summary["best_metric"] is not None
    losses = [r["loss"] for r in _records(run) if "loss" in r]
    assert losses and all(x == x for x in losses)  # no NaN from a padding or filler row

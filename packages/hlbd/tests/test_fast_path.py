"""hlbd on core's fast path, on CPU: the compiled run learns what the eager run learns, and the
bench's "ours" arms run train's own step."""

import hlbd.bench as bench_mod
import hlbd.train as train_mod
import pytest
import torch
from hlbd.config import TrainConfig
from trainstack.config import load_config
from trainstack.speed import TrainStep


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _cfg(tiny, tmp_path, name, *extra):
    return load_config(TrainConfig, {}, tiny("epochs=2", "stop_at_exact_match=0", "batch_size=16",
                                             "optim.lr=3e-3", "model.dropout=0", f"run_dir={tmp_path / name}", *extra))


def test_compiled_run_equals_the_eager_run(tiny, tmp_path):
    """Compiled (traced, no code generation: seconds on CPU) with length buckets and full-width
    batches vs eager with trimmed, short batches: the same losses epoch by epoch, because bucket
    padding is masked and filler rows carry no targets. No dropout: a compiled step draws its masks
    from another random stream."""
    quiet = lambda *_: None  # noqa: E731
    eager = train_mod.train(_cfg(tiny, tmp_path, "eager", "data.batching=length"), progress=False, say=quiet)
    fast = train_mod.train(_cfg(tiny, tmp_path, "fast", "data.batching=length", "speed.compile=true",
                                "speed.compile_backend=aot_eager"), progress=False, say=quiet)
    assert [h["loss"] for h in fast["history"]] == pytest.approx([h["loss"] for h in eager["history"]], rel=1e-5)
    assert fast["compiled_graphs"] >= 1 and fast["recompiles"] == 0 and eager["compiled_graphs"] == 0
    assert fast["first_step_seconds"] > 0


def test_full_rows_adds_targetless_rows_only():
    batch = {"src": torch.tensor([[5, 6, 0]]), "tgt": torch.tensor([[2, 7, 3]])}
    out = train_mod.full_rows(batch, 3)
    assert out["src"].shape == (3, 3) and torch.equal(out["src"][0], batch["src"][0])
    assert (out["tgt"][1:, 1:] == 0).all()  # nothing to predict in a filler row
    assert (out["src"][1:, 0] != 0).all()   # and never a fully masked attention row


def test_bench_ours_arms_run_trains_setup_and_step(tiny, tmp_path, monkeypatch):
    """The bench's users-baseline arm and `hlbd train` build their step through the same setup (the
    same TrainStep over the same loss): a bench with its own model, optimizer or step fails this."""
    made = []

    class Recording(TrainStep):
        def __init__(self, model, loss_fn, optimizer, speed, **kw):
            made.append((type(model).__name__, loss_fn, type(optimizer).__name__, kw["grad_accum_steps"]))
            super().__init__(model, loss_fn, optimizer, speed, **kw)

    monkeypatch.setattr(train_mod, "TrainStep", Recording)
    cfg = _cfg(tiny, tmp_path, "b", "grad_accum_steps=2")
    bench_mod.stage_users_baseline(cfg, epochs=2)
    train_mod.train(cfg, progress=False, say=lambda *_: None)
    assert len(made) == 2 and made[0] == made[1] == ("APTModel", train_mod.pair_loss, "AdamW", 2)
    assert bench_mod.setup is train_mod.setup and bench_mod.train_one_epoch is train_mod.train_one_epoch

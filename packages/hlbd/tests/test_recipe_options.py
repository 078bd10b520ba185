"""The users' proposals as options: fp16 with loss scaling (Volta/Turing), gradient checkpointing,
8-bit AdamW. On CPU: fp16 is faked by the precision resolution (core picks it on sm_70/75)."""

import hlbd.train as train_mod
import pytest
import torch
from hlbd.cli import main
from hlbd.config import TrainConfig
from hlbd.model import seq2seq_loss
from trainstack import optim
from trainstack.config import load_config
from trainstack.precision import Precision


def _cfg(tiny, tmp_path, *extra):
    return load_config(TrainConfig, {}, tiny("epochs=2", "stop_at_exact_match=0", "batch_size=16", "optim.lr=3e-3",
                                             f"run_dir={tmp_path / 'run'}", *extra))


@pytest.fixture
def fp16_resolved(monkeypatch):
    """What core's resolve_precision answers on an sm_75 card, whatever was asked here."""
    fp16 = Precision("fp16", torch.float16, True, False, "fp16 autocast + GradScaler (faked sm_75)")
    monkeypatch.setattr(train_mod, "resolve_precision", lambda *a, **k: fp16)


def test_fp16_trains_with_a_grad_scaler_and_saves_it(tiny, tmp_path, fp16_resolved):
    summary = train_mod.train(_cfg(tiny, tmp_path), progress=False, say=lambda *_: None)
    assert summary["precision"] == "fp16"
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    state = torch.load(tmp_path / "run" / "checkpoints" / f"step-{summary['steps']}" / "scaler.pt")
    # Every optimizer step went through the scaler (its growth tracker counts clean steps) at the
    # initial scale: nothing overflowed.
    assert state["_growth_tracker"] == summary["steps"] and state["scale"] == 2.0 ** 16


def test_fp16_overflow_skips_the_update_and_holds_the_schedule(tiny, tmp_path, fp16_resolved):
    cfg = _cfg(tiny, tmp_path, "optim.warmup_steps=10")
    s = train_mod.setup(cfg, train_mod.prepare_data(cfg))
    assert s.scaler is not None and s.train_step.scaler is s.scaler
    batch = {"src": s.dataset.tensors["src"][:4], "tgt": s.dataset.tensors["tgt"][:4]}
    s.train_step.micro(batch)
    s.train_step.optimizer_step()
    lr_after_one = s.scheduler.get_last_lr()[0]
    before = [p.detach().clone() for p in s.model.parameters()]
    s.train_step.micro(batch)
    next(p for p in s.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")  # an fp16 overflow
    s.train_step.optimizer_step()
    assert all(torch.equal(a, p) for a, p in zip(before, s.model.parameters(), strict=True))  # update skipped
    assert s.scheduler.last_epoch == 1 and s.scheduler.get_last_lr()[0] == lr_after_one  # warm-up held
    assert s.scaler.get_scale() == 2.0 ** 15  # and the scale halved
    s.train_step.micro(batch)
    s.train_step.optimizer_step()
    assert s.scheduler.last_epoch == 2 and not all(
        torch.equal(a, p) for a, p in zip(before, s.model.parameters(), strict=True))


def test_fp32_has_no_scaler(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path)
    s = train_mod.setup(cfg, train_mod.prepare_data(cfg))
    assert s.scaler is None and s.train_step.scaler is None


def test_checkpointing_gives_the_plain_losses_and_gradients(tiny, tmp_path):
    """Dropout on: non-reentrant checkpointing replays each layer's dropout masks in backward."""
    runs = []
    for checkpointing in (False, True):
        cfg = _cfg(tiny, tmp_path, "model.dropout=0.3", "model.n_encoder_layers=2", "model.n_decoder_layers=2",
                   "data.pad_to=48", f"model.checkpointing={str(checkpointing).lower()}")
        data = train_mod.prepare_data(cfg)
        torch.manual_seed(0)
        model = train_mod.build_model(cfg, len(data.tokenizer)).train()
        src, tgt = torch.tensor(data.src[:8]), torch.tensor(data.tgt[:8])
        torch.manual_seed(1)
        loss = seq2seq_loss(model, src, tgt)[0]
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (ckpt_loss, ckpt_grads) = runs
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_recomputes_in_backward(tiny, tmp_path):
    """The option really checkpoints: each layer's forward runs again during backward (a pre-hook:
    torch stops a recomputation early, once it has the tensors backward needs)."""
    cfg = _cfg(tiny, tmp_path, "model.checkpointing=true", "data.pad_to=48")
    data = train_mod.prepare_data(cfg)
    model = train_mod.build_model(cfg, len(data.tokenizer)).train()
    calls = []
    model.encoder_layers[0].register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss = seq2seq_loss(model, torch.tensor(data.src[:4]), torch.tensor(data.tgt[:4]))[0]
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2
    with torch.no_grad():  # evaluation: no checkpointing, nothing to recompute
        model.eval()
        seq2seq_loss(model, torch.tensor(data.src[:4]), torch.tensor(data.tgt[:4]))
    assert len(calls) == 3


def test_adamw8bit_without_bitsandbytes_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(optim, "HAS_BITSANDBYTES", False)
    run_dir = tmp_path / "run"
    rc = main(["train", "optim.name=adamw8bit", f"run_dir={run_dir}", *tiny()])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "needs bitsandbytes" in err and "pip install 'hlbd[bnb]'" in err, err
    assert not run_dir.exists()


def test_adamw8bit_goes_through_cores_optimizer(tiny, tmp_path, monkeypatch):
    """With bitsandbytes present, hlbd asks core's build_optimizer for it (recorded, then built as
    AdamW: the test must not depend on bitsandbytes being installed)."""
    asked = []
    real = train_mod.build_optimizer

    def recording(model, name, **kw):
        asked.append(name)
        return real(model, "adamw", **kw)

    monkeypatch.setattr(optim, "HAS_BITSANDBYTES", True)
    monkeypatch.setattr(train_mod, "build_optimizer", recording)
    cfg = _cfg(tiny, tmp_path, "optim.name=adamw8bit")
    train_mod.setup(cfg, train_mod.prepare_data(cfg))
    assert asked == ["adamw8bit"]

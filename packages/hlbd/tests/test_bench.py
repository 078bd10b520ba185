"""users-baseline is the users' math (checked against users_loop.py), and `hlbd bench` runs end to end."""

import json

import torch
from hlbd.cli import main
from hlbd.config import TrainConfig
from hlbd.data import SAMPLES_MARKER, bundled_sample_path
from hlbd.profiles import shipped_profiles
from hlbd.train import prepare_data, setup, train_one_epoch
from hlbd.users_loop import UsersLoop
from trainstack.config import load_config
from trainstack.hardware import resolve_profile

SIZES = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_encoder_layers": 1, "n_decoder_layers": 1}


def test_users_baseline_matches_the_users_loop_step_for_step():
    """Same seed, same data, same batch order: our users-baseline (vectorized autopoietic attention,
    device-resident batches, core's Adam with L2 on every parameter) against the reproduction of their
    loop (per-head Python loops, DataLoader batches, torch.optim.Adam(model.parameters())). Dropout is
    on: both draw their masks from the global RNG in the same order, so the masks are identical too.

    Tolerance: the two differ only in float32 summation order inside the attention transform
    (vectorized reductions vs per-head ones, ~1e-7 relative per op). After 36 micro-batches and 6 Adam
    steps at lr 5e-5 the weights agree to ~1e-8 (measured), so 1e-6 leaves margin; a real difference in
    the math moves them by a good fraction of lr per step (measured when the test was written: leaving
    L2 off the biases and norm weights, core's default, puts them 6e-4 apart)."""
    overrides = [f"data.path={bundled_sample_path()}", "threads=1", *(f"model.{k}={v}" for k, v in SIZES.items())]
    cfg = load_config(TrainConfig, resolve_profile("users-baseline", shipped_profiles()).settings, overrides)
    assert (cfg.batch_size, cfg.grad_accum_steps, cfg.optim.lr, cfg.precision) == (4, 8, 5e-5, "fp32")
    data = prepare_data(cfg)
    ours = setup(cfg, data)
    theirs = UsersLoop(data.pairs, data.tokenizer, torch.device("cpu"), seed=cfg.seed, num_workers=0,
                       model_sizes=SIZES)
    try:
        for a, b in zip(ours.model.state_dict().values(), theirs.model.state_dict().values(), strict=True):
            assert torch.equal(a, b)  # same seed -> same initial weights
        init = [t.clone() for t in ours.model.state_dict().values()]

        src, tgt = torch.tensor(data.src), torch.tensor(data.tgt)   # both padded to 64, as theirs are
        assert src.shape[1] == tgt.shape[1] == 64
        order = torch.randperm(len(src), generator=torch.Generator().manual_seed(7))
        batches = [order[i:i + 4] for i in range(0, len(order), 4)]   # 18 micro-batches, the last of 4
        theirs.loader = [(src[i], tgt[i]) for i in batches]
        ours.dataset.batches = lambda batch_size, generator: ({"src": src[i], "tgt": tgt[i]} for i in batches)

        theirs_losses, ours_losses = [], []
        for epoch in range(2):
            torch.manual_seed(100 + epoch)
            theirs_losses.append(theirs.train_epoch()["loss"])
            torch.manual_seed(100 + epoch)
            ours_losses.append(float(train_one_epoch(ours)))
        assert ours.step == 6  # 8 + 8 + 2 micro-batches: the short last window still steps, as theirs does
        torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(theirs_losses), rtol=1e-5, atol=0)
        assert ours_losses[1] < ours_losses[0]  # lr 5e-5 learns slowly, but it does
        moved = max((a - b).abs().max() for a, b in zip(ours.model.state_dict().values(), init, strict=True))
        assert moved > 1e-4  # six Adam steps of ~lr each: the weights did move, so the comparison below bites
        for (name, a), b in zip(ours.model.state_dict().items(), theirs.model.state_dict().values(), strict=True):
            # Key biases barely reach the loss (softmax ignores a shift shared by all keys; only the
            # autopoietic transform's non-linearity sees it), so their gradients are mostly rounding
            # noise and Adam turns noise into lr-sized steps: bounded by the 6 steps taken, not by 1e-6.
            atol = 6 * cfg.optim.lr if name.endswith("k_proj.bias") else 1e-6   # 1e-6: 1/50 of one Adam step
            torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)
    finally:
        theirs.close()


def test_bench_runs_on_cpu_and_prints_the_ratios(tmp_path, capsys, tiny):
    text = bundled_sample_path().read_text(encoding="utf-8")
    records = json.loads(text[text.index(SAMPLES_MARKER) + len("samples = "):])[:3]   # 18 pairs
    data = tmp_path / "small.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "bench.json"
    common = ["bench", "--data", str(data), "--out", str(out)]
    assert main([*common, "--stages", "users-loop", "--users-seconds", "0.5"]) == 0
    assert main([*common, "--stages", "users-baseline,fast", "--baseline-epochs", "2", *tiny("epochs=2"),
                 "run_dir=unused"]) == 0
    printed = capsys.readouterr().out
    assert "ratio per epoch (users-baseline vs users-loop):" in printed
    assert "loss curve, epoch 1, per optimizer step" in printed
    assert "fast: NOT learned" in printed or "fast: learned" in printed
    report = json.loads(out.read_text())
    assert report["users-loop"]["result"]["seconds"] > 0 and len(report["users-loop"]["micro_losses"]) >= 1
    assert len(report["users-baseline"]["epoch_losses"]) == 2
    assert set(report["per_epoch_seconds"]) == {"users-loop", "users-baseline", "fast"}
    assert main([*common, "--stages", "report"]) == 0
    assert "ratio per epoch" in capsys.readouterr().out


def test_bench_without_data_uses_the_bundled_sample(tmp_path, tiny):
    out = tmp_path / "bench.json"
    assert main(["bench", "--stages", "users-baseline", "--baseline-epochs", "2", "--out", str(out), *tiny()]) == 0
    report = json.loads(out.read_text())
    assert report["data"] == str(bundled_sample_path())
    assert len(report["users-baseline"]["epoch_losses"]) == 2

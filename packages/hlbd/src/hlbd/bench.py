"""hlbd bench: the users' loop vs our users-baseline vs fast, on one GPU, in one run.

    hlbd bench                                    # ../shared/data/hlbd/hlbd_v1_600pairs.txt
    hlbd bench --users-epochs 2 --out bench.json
    PYTHONPATH=packages/core/src:packages/hlbd/src python3 -m hlbd bench --out $OUT/bench.json   (device)

(a) users-loop      their loop reproduced (users_loop.py), timed for --users-epochs epochs
(b) users-baseline  the same math in our implementation (profiles/users-baseline.yaml)
(c) fast            profiles/fast.yaml, trained until greedy exact match >= 95%
Per-epoch figures come from core's bench harness (one step = one epoch over all pairs); the loss
curves of (a) and (b) are printed side by side (same seed, same data, same math).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trainstack.bench import compare, device_banner, time_steps
from trainstack.config import load_config
from trainstack.hardware import resolve_profile

from hlbd.config import TrainConfig
from hlbd.train import prepare_data, setup, train, train_one_epoch
from hlbd.users_loop import UsersLoop

SHARED_DATA = Path(__file__).resolve().parents[4] / ".." / "shared" / "data" / "hlbd" / "hlbd_v1_600pairs.txt"


def _cfg(name: str, data: str, overrides) -> TrainConfig:
    from hlbd.cli import _profiles

    return load_config(TrainConfig, resolve_profile(name, _profiles()).settings, [*overrides, f"data.path={data}"])


def _epoch_bench(cfg: TrainConfig, name: str, warmup: int, timed: int):
    data = prepare_data(cfg)
    s = setup(cfg, data)
    losses = []
    tokens = int(sum(1 for t in data.tgt for x in t if x != 0))
    res = time_steps(lambda: losses.append(train_one_epoch(s)), warmup_steps=warmup, timed_steps=timed,
                     real_tokens_per_step=tokens, samples_per_step=len(data.pairs), name=name)
    return res, [float(x) for x in torch.stack(losses).tolist()]


def run_bench(data=None, users_epochs=2, out=None, overrides=(), skip_users=False, fast_only=False,
              baseline_epochs=6, full_baseline=False) -> int:
    data = str(data or SHARED_DATA)
    if not Path(data).exists():
        print(f"hlbd bench: data not found: {data} (pass --data FILE)")
        return 1
    print(device_banner(), flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, report = [], {"data": data, "device": device_banner()}

    base_cfg = _cfg("users-baseline", data, overrides)
    if not fast_only:
        if not skip_users:
            prepared = prepare_data(base_cfg)
            loop = UsersLoop(prepared.pairs, prepared.tokenizer, device, seed=0)
            users_losses = []
            tokens = int(sum(1 for t in prepared.tgt for x in t if x != 0))
            res = time_steps(lambda: users_losses.append(loop.train_epoch()), warmup_steps=0, timed_steps=users_epochs,
                             real_tokens_per_step=tokens, samples_per_step=len(prepared.pairs), name="users-loop")
            loop.close()
            results.append(res)
            report["users_loop_losses"] = users_losses
            print(f"users-loop: {res.seconds / res.steps:.2f} s/epoch, losses {[round(x, 3) for x in users_losses]}",
                  flush=True)
        res, losses = _epoch_bench(base_cfg, "users-baseline", warmup=1, timed=baseline_epochs - 1)
        results.append(res)
        report["users_baseline_losses"] = losses
        print(f"users-baseline: {res.seconds / res.steps:.2f} s/epoch, losses {[round(x, 3) for x in losses]}",
              flush=True)
        if out:
            Path(out).write_text(json.dumps(report, indent=2))
        if full_baseline:
            cfg = _cfg("users-baseline", data, [*overrides, "stop_at_exact_match=0.95", "run_dir=/tmp/hlbd-bench-base"])
            summary = train(cfg, progress=False)
            report["users_baseline_full"] = {k: v for k, v in summary.items() if k != "history"}
            report["users_baseline_full"]["loss_curve"] = [h["loss"] for h in summary["history"]]

    for variant, extra in (("fast", []), ("fast+compile", ["compile=true"])):
        cfg = _cfg("fast", data, [*overrides, *extra, f"run_dir=/tmp/hlbd-bench-{variant}"])
        res, _ = _epoch_bench(cfg, variant, warmup=2 if "compile" in variant else 1, timed=5)
        results.append(res)
        summary = train(cfg, progress=False)
        report[variant] = {k: v for k, v in summary.items() if k != "history"}
        report[variant]["loss_curve"] = [h["loss"] for h in summary["history"]]
        if out:
            Path(out).write_text(json.dumps(report, indent=2))
        print(f"{variant}: {res.seconds / res.steps:.3f} s/epoch; learned={summary['learned']} "
              f"in {summary['seconds_to_learned']} s ({summary['epochs']} epochs, exact match "
              f"{summary['exact_match']:.1%}, chrF {summary['chrf']:.1f})", flush=True)

    baseline = "users-loop" if any(r.name == "users-loop" for r in results) else results[0].name
    table = compare(results, baseline=baseline)
    print(table)
    report["per_epoch"] = {r.name: r.seconds / r.steps for r in results}
    if "users-loop" in report["per_epoch"]:
        u = report["per_epoch"]["users-loop"]
        report["ratios_vs_users_loop"] = {k: u / v for k, v in report["per_epoch"].items()}
        report["users_loop_50_epochs_s"] = 50 * u
    print(json.dumps({k: v for k, v in report.items() if k != "device"}))
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return 0

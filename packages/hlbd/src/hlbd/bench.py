"""hlbd bench: the users' loop vs our users-baseline vs fast, on one GPU.

    hlbd bench                                          # all stages, on the bundled sample (72 pairs)
    hlbd bench --data path/to/hlbd_v1_600pairs.txt      # the real 600 pairs (HLBD, MIT, not shipped)
    hlbd bench --stages users-loop --users-seconds 60 --out bench.json
    hlbd bench --stages users-baseline --out bench.json     # merges into the same JSON, prints the ratio
    hlbd bench --stages report --out bench.json             # only print the table and ratios from the JSON
    packages/hlbd/scripts/gpu_bench.sh                       (the GPU run behind BENCHMARKS.md)

(a) users-loop      their loop reproduced (users_loop.py) for --users-epochs epochs, or until
                    --users-seconds have passed, extrapolated per epoch from the micro-batches done
(b) users-baseline  the same math in our implementation (profiles/users-baseline.yaml): per-epoch
                    time over --baseline-epochs epochs (the first is warm-up), and its loss curve
                    next to (a)'s: same seed, so the same initial weights; batch order and dropout
                    masks differ, so the curves agree within noise, not bit for bit
(c) fast            profiles/fast.yaml trained until greedy exact match >= 95%: seconds of training,
                    time to the first optimizer step (compile and capture included), whole call
(d) fast-vs-eager   users-baseline without dropout for one epoch, twice from the same initial
                    weights on the same batches: the fast path (speed.*: auto) and the eager path
                    (speed.compile=false speed.cuda_graphs=false); the largest loss and weight
                    differences say whether the fast path learns the same thing
(b) and (c) run `train`'s own setup and epoch function (hlbd.train.setup / train_one_epoch / train):
what the bench times is what `hlbd train` runs.
Each stage merges its results into --out, so stages can run as separate processes (each under its own
`timeout`) and a later stage or `--stages report` prints the ratios. key=value overrides apply to
(b) and (c) (the users' loop is their fixed recipe).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from trainstack.bench import BenchResult, compare, device_banner, time_steps
from trainstack.config import load_config
from trainstack.hardware import resolve_profile

from hlbd.config import TrainConfig
from hlbd.data import bundled_sample_path
from hlbd.train import prepare_data, real_target_tokens, setup, train, train_one_epoch
from hlbd.users_loop import UsersLoop

STAGES = ("users-loop", "users-baseline", "fast", "fast-vs-eager")
EAGER = ("speed.compile=false", "speed.cuda_graphs=false")


def _cfg(name: str, data: str, overrides) -> TrainConfig:
    from hlbd.profiles import shipped_profiles

    return load_config(TrainConfig, resolve_profile(name, shipped_profiles()).settings,
                       [*overrides, f"data.path={data}"])


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _param_checksum(model) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def per_step_means(micro_losses: list[float], accum: int) -> list[float]:
    """Mean loss of each accumulation window (one optimizer step) of an epoch."""
    return [sum(w) / len(w) for w in (micro_losses[i:i + accum] for i in range(0, len(micro_losses), accum))]


def _load(out) -> dict:
    if out and Path(out).exists():
        return json.loads(Path(out).read_text())
    return {}


def _save(out, report: dict) -> None:
    if out:
        Path(out).write_text(json.dumps(report, indent=2, ensure_ascii=False))


def stage_users_loop(cfg: TrainConfig, epochs: int, max_seconds: float | None, device) -> dict:
    prepared = prepare_data(cfg)
    loop = UsersLoop(prepared.pairs, prepared.tokenizer, device, seed=cfg.seed)
    checksum = _param_checksum(loop.model)
    runs = []
    try:
        for _ in range(epochs):
            runs.append(loop.train_epoch(max_seconds=max_seconds))
            if not runs[-1]["complete"]:
                break
    finally:
        loop.close()
    last = runs[-1]
    if last["complete"]:
        per_epoch = sum(r["seconds"] for r in runs) / len(runs)
        how = f"measured over {len(runs)} epoch(s)"
    else:
        # Rate after the first 10 micro-batches (worker start-up, CUDA warm-up) extrapolated to the
        # rest of the epoch, plus those first 10 as measured.
        k, stamps, n = last["micro_batches"], last["stamps"], last["micro_per_epoch"]
        head = min(10, k - 1)
        rate = (stamps[-1] - stamps[head - 1]) / (k - head) if head > 0 else stamps[-1] / k
        per_epoch = sum(r["seconds"] for r in runs[:-1]) + (stamps[head - 1] if head > 0 else 0) + rate * (n - head)
        per_epoch /= len(runs)
        how = f"extrapolated from {k}/{n} micro-batches in {last['seconds']:.1f} s"
    tokens, samples = real_target_tokens(prepared), len(prepared.pairs)
    res = BenchResult(name="users-loop", steps=1, seconds=per_epoch, real_tokens=tokens, samples=samples,
                      tokens_per_s=tokens / per_epoch, samples_per_s=samples / per_epoch, mfu=None,
                      peak_memory_gib=None, extra={"how": how, "device": _device_name(), "timer": "host"})
    print(f"users-loop: {per_epoch:.2f} s/epoch ({how}); epoch-1 loss {runs[0]['loss']:.4f}", flush=True)
    return {"result": asdict(res), "how": how, "init_checksum": checksum, "accum": 8,
            "micro_losses": runs[0]["micro_losses"], "epoch_losses": [r["loss"] for r in runs],
            "complete": last["complete"]}


def stage_users_baseline(cfg: TrainConfig, epochs: int) -> dict:
    prepared = prepare_data(cfg)
    s = setup(cfg, prepared)
    checksum = _param_checksum(s.model)
    losses, micro = [], []
    first_epoch_micro = []

    def one_epoch():
        collect = first_epoch_micro if not losses else None
        losses.append(train_one_epoch(s, micro_losses=collect))

    res = time_steps(one_epoch, warmup_steps=1, timed_steps=max(1, epochs - 1),
                     real_tokens_per_step=real_target_tokens(prepared), samples_per_step=len(prepared.pairs),
                     name="users-baseline")
    epoch_losses = torch.stack(losses).tolist()
    micro = torch.stack(first_epoch_micro).tolist()
    print(f"users-baseline: {res.seconds / res.steps:.3f} s/epoch over {res.steps} timed epoch(s) after 1 warm-up; "
          f"epoch losses {[round(x, 4) for x in epoch_losses]}; {s.speed.reason}; "
          f"first optimizer step after {s.train_step.stats.first_step_seconds:.1f} s", flush=True)
    return {"result": asdict(res), "init_checksum": checksum, "accum": cfg.grad_accum_steps, "micro_losses": micro,
            "epoch_losses": epoch_losses, "speed": s.speed.reason, **s.train_step.stats.as_dict()}


def stage_fast_vs_eager(cfg: TrainConfig, eager_cfg: TrainConfig) -> dict:
    """One epoch each from the same initial weights on the same batches; dropout off in both (the
    compiled step draws its dropout masks from another random stream, so only no dropout compares
    bit for bit up to rounding)."""
    runs = {}
    for name, c in (("fast", cfg), ("eager", eager_cfg)):
        s = setup(c, prepare_data(c))
        micro: list = []
        train_one_epoch(s, micro_losses=micro)
        runs[name] = {"losses": torch.stack(micro).double().cpu(), "speed": s.speed.reason,
                      "params": [p.detach().double().cpu() for p in s.model.parameters()]}
    loss_diff = float((runs["fast"]["losses"] - runs["eager"]["losses"]).abs().max())
    param_diff = max(float((a - b).abs().max()) for a, b in zip(runs["fast"]["params"], runs["eager"]["params"],
                                                              strict=True))
    param_scale = max(float(b.abs().max()) for b in runs["eager"]["params"])
    print(f"fast-vs-eager: {len(runs['fast']['losses'])} micro-batches; max |loss difference| {loss_diff:.2e} "
          f"(losses {float(runs['eager']['losses'][0]):.4f} -> {float(runs['eager']['losses'][-1]):.4f}); "
          f"max |weight difference| {param_diff:.2e} (largest weight {param_scale:.2f}); "
          f"fast: {runs['fast']['speed']}; eager: {runs['eager']['speed']}", flush=True)
    return {"micro_batches": len(runs["fast"]["losses"]), "max_abs_loss_diff": loss_diff,
            "max_abs_param_diff": param_diff, "largest_param": param_scale,
            "fast_losses": runs["fast"]["losses"].tolist(), "eager_losses": runs["eager"]["losses"].tolist(),
            "speed": {k: runs[k]["speed"] for k in runs}}


def stage_fast(cfg: TrainConfig, name: str) -> dict:
    t0 = time.perf_counter()
    summary = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    hist = summary["history"]
    if summary["interrupted"] or not hist:  # stopped by a timeout's SIGTERM: keep what it reached
        print(f"{name}: interrupted after {len(hist)} epochs, {summary['train_seconds']:.1f} s of training; "
              f"last teacher-forced exact match {hist[-1].get('eval_exact_match_tf') if hist else None}", flush=True)
        return {"interrupted": True, "epochs": len(hist), "train_seconds": summary["train_seconds"],
                "loss_curve": [h["loss"] for h in hist], "exact_match_curve": [h.get("eval_exact_match_tf") for h in hist]}
    # Seconds per epoch from the run itself (epochs 2.. exclude the first one's warm-up).
    per_epoch = ((hist[-1]["seconds"] - hist[0]["seconds"]) / (len(hist) - 1)) if len(hist) > 1 else hist[0]["seconds"]
    tokens = real_target_tokens(prepare_data(cfg))
    res = BenchResult(name=name, steps=len(hist), seconds=per_epoch * len(hist), real_tokens=tokens * len(hist),
                      samples=len(hist) * summary["pairs"], tokens_per_s=tokens / per_epoch,
                      samples_per_s=summary["pairs"] / per_epoch, mfu=None, peak_memory_gib=None,
                      extra={"device": _device_name(), "timer": "host"})
    print(f"{name}: learned={summary['learned']} exact match {summary['exact_match']:.1%} (chrF {summary['chrf']:.1f}) "
          f"after {summary['epochs']} epochs, {summary['train_seconds']:.1f} s of training "
          f"({per_epoch:.3f} s/epoch; first optimizer step after {summary['first_step_seconds']:.1f} s; "
          f"{wall:.1f} s with set-up and final greedy eval)", flush=True)
    return {"result": asdict(res), "summary": {k: v for k, v in summary.items() if k != "history"},
            "loss_curve": [h["loss"] for h in hist], "exact_match_curve": [h.get("eval_exact_match_tf") for h in hist],
            "wall_seconds": wall}


def print_report(report: dict) -> None:
    """The table (core's compare) and the ratio lines, from whatever stages the JSON holds."""
    results = [BenchResult(**report[k]["result"]) for k in STAGES if k in report and "result" in report[k]]
    results += [BenchResult(**report[k]["result"]) for k in report if k.startswith("fast (") and "result" in report[k]]
    if not results:
        print("hlbd bench: no stage results yet")
        return
    per_epoch = {r.name: r.seconds / r.steps for r in results}
    baseline = "users-loop" if "users-loop" in per_epoch else results[0].name
    print("one step = one epoch over all pairs")
    print(compare(results, baseline=baseline))
    if "users-loop" in report:
        u = report["users-loop"]
        print(f"users-loop: {per_epoch['users-loop']:.2f} s/epoch ({u['how']}); 50 epochs = "
              f"{50 * per_epoch['users-loop'] / 60:.1f} min")
    if "users-baseline" in report:
        print(f"users-baseline: {per_epoch['users-baseline']:.3f} s/epoch")
    if "users-loop" in report and "users-baseline" in report:
        a, b = report["users-loop"], report["users-baseline"]
        ratio = per_epoch["users-loop"] / per_epoch["users-baseline"]
        print(f"ratio per epoch (users-baseline vs users-loop): {ratio:.1f}x faster")
        same_init = abs(a["init_checksum"] - b["init_checksum"]) <= 1e-9 * abs(a["init_checksum"])
        ca, cb = per_step_means(a["micro_losses"], a["accum"]), per_step_means(b["micro_losses"], b["accum"])
        n = min(len(ca), len(cb))
        if n:
            diffs = [abs(x - y) for x, y in zip(ca[:n], cb[:n], strict=True)]
            print(f"loss curve, epoch 1, per optimizer step (same seed, same initial weights: {same_init}):")
            print("  step  users-loop  users-baseline")
            for i in range(n):
                print(f"  {i + 1:4d}  {ca[i]:10.4f}  {cb[i]:14.4f}")
            print(f"  max |difference| {max(diffs):.4f}, mean {sum(diffs) / n:.4f} over {n} optimizer steps")
            report["loss_curve_epoch1"] = {"users-loop": ca, "users-baseline": cb, "max_abs_diff": max(diffs),
                                           "same_initial_weights": same_init}
        report["ratio_users_baseline_vs_users_loop"] = ratio
    for k in [k for k in report if k == "fast" or k.startswith("fast (")]:
        if report[k].get("interrupted"):
            print(f"{k}: interrupted (timeout) after {report[k]['epochs']} epochs, "
                  f"{report[k]['train_seconds']:.1f} s of training; exact match curve {report[k]['exact_match_curve']}")
            continue
        s = report[k]["summary"]
        line = (f"{k}: {'learned' if s['learned'] else 'NOT learned'} (exact match {s['exact_match']:.1%}) in "
                f"{s['train_seconds']:.1f} s of training, {s['epochs']} epochs; first optimizer step after "
                f"{s['first_step_seconds']:.1f} s, {s['train_seconds'] - s['first_step_seconds']:.1f} s of training "
                f"after it; {report[k]['wall_seconds']:.1f} s for the whole call")
        if "users-loop" in report:
            line += f"; users' loop for 50 epochs: {50 * per_epoch['users-loop']:.0f} s"
        print(line)
    if "fast-vs-eager" in report:
        e = report["fast-vs-eager"]
        print(f"fast-vs-eager ({e['micro_batches']} micro-batches, no dropout, same initial weights and batches): "
              f"max |loss difference| {e['max_abs_loss_diff']:.2e}, max |weight difference| "
              f"{e['max_abs_param_diff']:.2e}")
    report["per_epoch_seconds"] = per_epoch


def run_bench(data=None, stages=STAGES, users_epochs=1, users_seconds=None, baseline_epochs=4, out=None,
              overrides=(), fast_eager=False) -> int:
    stages = tuple(stages)
    unknown = [s for s in stages if s not in (*STAGES, "report")]
    if unknown:
        raise ValueError(f"unknown bench stage(s) {unknown}; allowed: {', '.join(STAGES)}, report")
    report = _load(out)
    if stages != ("report",):
        data = str(data or bundled_sample_path())
        if not Path(data).exists():
            raise FileNotFoundError(f"{data}: HLBD data not found (pass --data FILE)")
        banner = device_banner()
        print(banner, flush=True)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        report.setdefault("data", data)
        report.setdefault("devices", {})
        base_cfg = _cfg("users-baseline", data, overrides)
        for stage in stages:
            report["devices"][stage] = banner
            if stage == "users-loop":
                report[stage] = stage_users_loop(base_cfg, users_epochs, users_seconds, device)
            elif stage == "users-baseline":
                report[stage] = stage_users_baseline(base_cfg, baseline_epochs)
            elif stage == "fast":
                runs = Path(tempfile.mkdtemp(prefix="hlbd-bench-"))
                report["fast"] = stage_fast(_cfg("fast", data, [*overrides, f"run_dir={runs / 'fast'}"]), "fast")
                if fast_eager:
                    cfg = _cfg("fast", data, [*overrides, *EAGER, f"run_dir={runs / 'fast-eager'}"])
                    report["fast (eager)"] = stage_fast(cfg, "fast (eager)")
            elif stage == "fast-vs-eager":
                no_dropout = [*overrides, "model.dropout=0"]
                report[stage] = stage_fast_vs_eager(_cfg("users-baseline", data, no_dropout),
                                                    _cfg("users-baseline", data, [*no_dropout, *EAGER]))
            _save(out, report)  # after each stage: a later stage's timeout loses nothing
    print_report(report)
    _save(out, report)
    print(json.dumps({k: report[k] for k in ("per_epoch_seconds", "ratio_users_baseline_vs_users_loop")
                      if k in report}))
    return 0

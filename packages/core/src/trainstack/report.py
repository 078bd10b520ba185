"""`trainstack report RUN_DIR`: plots and a markdown summary from RUN_DIR/log.jsonl.

The plots need matplotlib: `pip install 'trainstack-core[report]'`.

Training rows carry step, loss, lr, tokens_per_s and memory (flat ``gpu_peak_gib`` / ``rss_gib`` keys,
or nested under ``memory``); eval rows carry ``eval_*`` keys. A run killed mid-write can leave a
partial last line, so unreadable lines are skipped with a warning instead of failing the report.
Every curve has one point per step, in step order (the last value of a step logged twice).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from trainstack.extras import require

MEMORY_KEYS = ("gpu_peak_gib", "gpu_reserved_gib", "gpu_allocated_gib", "rss_gib")


def read_log(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path}:{lineno}: not JSON, skipped", file=sys.stderr)
                continue
            if not isinstance(row, dict):
                print(f"warning: {path}:{lineno}: not a JSON object, skipped", file=sys.stderr)
                continue
            if isinstance(row.get("memory"), dict):  # flatten {"memory": {"rss_gib": ...}}
                for k, v in row.pop("memory").items():
                    row.setdefault(k, v)
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key``, one value per step in step order. A step logged twice (a run that
    crashed after logging it and was resumed from an earlier checkpoint) keeps its last value, so no
    curve goes back in time."""
    by_step: dict = {}
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            x = row.get("step", i)
            by_step[x if isinstance(x, (int, float)) and not isinstance(x, bool) else i] = float(v)
    xs = sorted(by_step)
    return xs, [by_step[x] for x in xs]


def _repeated_steps(rows: list[dict]) -> int:
    seen, repeated = set(), 0
    for row in rows:
        if "loss" in row and "step" in row:
            repeated += row["step"] in seen
            seen.add(row["step"])
    return repeated


def _memory_series(rows: list[dict]) -> dict:
    # CPU runs log the GPU fields as 0.0: a flat zero line would only hide the RSS curve's scale.
    series = {k: _series(rows, k) for k in MEMORY_KEYS}
    return {k: v for k, v in series.items() if any(y != 0 for y in v[1])}


def _pyplot():
    matplotlib = require("matplotlib", "report", "trainstack report")
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def _plot(out: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]], logy: bool = False) -> bool:
    plt = _pyplot()
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def write_report(run_dir, out_dir=None) -> Path:
    """Write loss.png, lr.png, tokens_per_s.png, memory.png and report.md; return report.md's path."""
    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"no log at {log}")
    _pyplot()  # a missing matplotlib stops here, before anything is written
    out_dir = Path(out_dir) if out_dir else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_log(log)
    train = [r for r in rows if "loss" in r]
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval_")})

    plots = {
        "loss.png": ("loss", "loss", {"train loss": _series(train, "loss"), "eval loss": _series(rows, "eval_loss")}, True),
        "lr.png": ("learning rate", "lr", {"lr": _series(train, "lr")}, False),
        "tokens_per_s.png": ("throughput (real tokens/s)", "tokens/s", {"tokens/s": _series(train, "tokens_per_s")}, False),
        "memory.png": ("memory", "GiB", _memory_series(rows), False),
    }
    written = [name for name, (title, ylabel, series, logy) in plots.items()
               if _plot(out_dir / name, title, ylabel, series, logy)]

    lines = [f"# Run report: {run_dir.name}", "", f"- log: `{log}` ({len(rows)} rows, {len(train)} training rows)"]
    if train:
        steps = [r["step"] for r in train if "step" in r]
        losses = _series(train, "loss")[1]
        if steps:
            lines.append(f"- steps: {min(steps)} to {max(steps)}")
        repeated = _repeated_steps(train)
        if repeated:
            lines.append(f"- {repeated} training rows repeat an earlier step (a resumed run): the last value "
                         f"per step is used")
        if losses:
            lines.append(f"- loss: first {losses[0]:.4g}, last {losses[-1]:.4g}, min {min(losses):.4g}")
        lrs = _series(train, "lr")[1]
        if lrs:
            lines.append(f"- lr: max {max(lrs):.3g}, last {lrs[-1]:.3g}")
        tps = _series(train, "tokens_per_s")[1]
        if tps:
            # The first interval includes start-up (compilation, allocator growth): leave it out.
            steady = tps[1:] or tps
            lines.append(f"- tokens/s: median {statistics.median(steady):,.0f} (first interval left out)")
        mfu = _series(train, "mfu")[1]
        if mfu:
            lines.append(f"- MFU: median {statistics.median(mfu[1:] or mfu):.1%}")
    for key in MEMORY_KEYS:
        values = _series(rows, key)[1]
        if values:
            lines.append(f"- {key}: max {max(values):.2f}")
    if eval_keys:
        lines += ["", "## Eval (last value)", ""]
        for key in eval_keys:
            values = _series(rows, key)[1]
            if values:
                lines.append(f"- {key}: {values[-1]:.4g}")
    if (run_dir / "config.yaml").is_file():
        lines += ["", "Config: `config.yaml`"]
    lines += ["", "## Plots", ""]
    lines += [f"![{name[:-4]}]({name})" for name in written] or ["(nothing to plot)"]
    missing = [name for name in plots if name not in written]
    if missing:
        lines.append("")
        lines.append(f"No data for: {', '.join(missing)}")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report

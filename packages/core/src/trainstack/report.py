"""`trainstack report RUN [RUN ...]`: plots and a markdown summary from each RUN/log.jsonl.

The plots need matplotlib: `pip install 'trainstack-core[report]'`. Several runs are overlaid, one
line per run, its legend the run directory's name. Besides the PNGs and report.md, report.json lists
each plot's series (run, label, log key, points, last value), for scripts and tests.

Training rows carry step, loss, lr, tokens_per_s and memory (flat ``gpu_peak_gib`` / ``rss_gib`` keys,
or nested under ``memory``); eval rows carry ``eval_*`` keys. A run killed mid-write can leave a
partial last line, so unreadable lines are skipped with a warning instead of failing the report.
Every curve has one point per step, in step order (the last value of a step logged twice).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainstack.extras import require

MEMORY_KEYS = ("gpu_peak_gib", "gpu_reserved_gib", "gpu_allocated_gib", "rss_gib")
# What each memory field measures, for the legend: the host process vs the GPU's caching allocator.
MEMORY_LABELS = {"rss_gib": "host RSS", "gpu_peak_gib": "GPU peak allocated", "gpu_reserved_gib": "GPU reserved",
                 "gpu_allocated_gib": "GPU allocated"}
MEMORY_STYLES = {"rss_gib": "-", "gpu_peak_gib": "--", "gpu_reserved_gib": ":", "gpu_allocated_gib": "-."}
STANDARD_PLOTS = ("loss.png", "lr.png", "tokens_per_s.png", "memory.png")


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


@dataclass
class Run:
    name: str
    """The legend: the run directory's name (with its parent when two runs share a name)."""
    path: Path
    rows: list[dict]

    @property
    def train(self) -> list[dict]:
        return [r for r in self.rows if "loss" in r]

    @property
    def eval_keys(self) -> list[str]:
        return sorted({k for r in self.rows for k in r if k.startswith("eval_")})


@dataclass
class Line:
    run: str
    label: str
    key: str
    xs: list
    ys: list
    style: str = "-"


@dataclass
class Plot:
    title: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    logy: bool = False
    """Log scale when the values span at least a factor of 10 (loss early in a run)."""


def _checked_run_dirs(run_dirs) -> list[Path]:
    paths = [Path(d) for d in run_dirs]
    for path in paths:
        if not (path / "log.jsonl").is_file():
            raise FileNotFoundError(f"no log at {path / 'log.jsonl'}")
    return paths


def load_runs(run_dirs) -> list[Run]:
    """Each RUN/log.jsonl read; FileNotFoundError names the first run without a log."""
    paths = _checked_run_dirs(run_dirs)
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):  # runs/a/seed-1 vs runs/b/seed-1: the parent tells them apart
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    return [Run(name, path, read_log(path / "log.jsonl")) for name, path in zip(names, paths, strict=True)]


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".png"


def plan_plots(runs: list[Run]) -> dict[str, Plot]:
    """What each PNG shows: file name -> Plot, with one line per run and series (empty plots included)."""
    several = len(runs) > 1

    def label(run: Run, what: str | None) -> str:
        # One series per run: the run's name alone; one run: what the series is.
        if what is None:
            return run.name if several else ""
        return f"{run.name}: {what}" if several else what

    plots = {"loss.png": Plot("loss", "loss"), "lr.png": Plot("learning rate", "lr"),
             "tokens_per_s.png": Plot("throughput (real tokens/s)", "tokens/s"),
             "memory.png": Plot("memory: host RSS vs GPU", "GiB")}
    eval_keys = sorted({k for run in runs for k in run.eval_keys if k != "eval_loss"})
    for key in eval_keys:
        plots[_file_name(key)] = Plot(key.removeprefix("eval_").replace("_", " "), key)
    for run in runs:
        train = run.train
        plots["loss.png"].lines += [Line(run.name, label(run, "train loss"), "loss", *_series(train, "loss")),
                                    Line(run.name, label(run, "eval loss"), "eval_loss", *_series(run.rows, "eval_loss"),
                                         style="--")]
        plots["lr.png"].lines.append(Line(run.name, label(run, None), "lr", *_series(train, "lr")))
        plots["tokens_per_s.png"].lines.append(
            Line(run.name, label(run, None), "tokens_per_s", *_series(train, "tokens_per_s")))
        plots["memory.png"].lines += [Line(run.name, label(run, MEMORY_LABELS[k]), k, *xy, style=MEMORY_STYLES[k])
                                      for k, xy in _memory_series(run.rows).items()]
        for key in eval_keys:
            plots[_file_name(key)].lines.append(Line(run.name, label(run, None), key, *_series(run.rows, key)))
    for plot in plots.values():
        plot.lines = [line for line in plot.lines if line.xs]
        values = [y for line in plot.lines for y in line.ys]
        plot.logy = plot.ylabel == "loss" and bool(values) and min(values) > 0 and max(values) >= 10 * min(values)
    return plots


def _readable_number(value: float, _pos=None) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"  # 12,500 tokens/s rather than 1.25e4
    if abs(value) < 0.01:
        return f"{value:.1e}"  # learning rates: 5.0e-05, 1.0e-04, 3.0e-04 (one format on the whole axis)
    return f"{value:.3g}"  # 2.5, 0.95


def draw(plot: Plot, colors: dict[str, str]):
    """The matplotlib Figure of ``plot`` (the caller saves and closes it)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for line in plot.lines:
        ax.plot(line.xs, line.ys, line.style, label=line.label or None, color=colors[line.run],
                marker="o" if len(line.xs) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(plot.ylabel)
    ax.set_title(plot.title)
    if plot.logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_readable_number))
    ax.yaxis.set_major_formatter(FuncFormatter(_readable_number))
    ax.grid(alpha=0.3)
    if len(plot.lines) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _run_summary(run: Run) -> list[str]:
    rows, train = run.rows, run.train
    lines = [f"- log: `{run.path / 'log.jsonl'}` ({len(rows)} rows, {len(train)} training rows)"]
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
    evals = [(key, _series(rows, key)[1]) for key in run.eval_keys]
    evals = [(key, values) for key, values in evals if values]
    if evals:
        lines += ["", "Eval (last value):", ""]
        lines += [f"- {key}: {values[-1]:.4g}" for key, values in evals]
    if (run.path / "config.yaml").is_file():
        lines += ["", f"Config: `{run.path / 'config.yaml'}`"]
    return lines


def write_report(run_dirs, out_dir=None) -> Path:
    """Plots (loss, lr, tokens/s, memory, one per ``eval_*`` metric), report.md and report.json for one
    run or several overlaid; return report.md's path. ``run_dirs``: one path or a list. One run writes
    into its own directory by default; several need ``out_dir`` (ValueError otherwise)."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not run_dirs:
        raise ValueError("no run directory given")
    if len(run_dirs) > 1 and out_dir is None:
        raise ValueError(f"comparing {len(run_dirs)} runs: pass --out DIR for the report (it belongs to no single run)")
    _checked_run_dirs(run_dirs)
    plt = _pyplot()  # a missing matplotlib stops here, before anything is read or written
    runs = load_runs(run_dirs)
    out_dir = Path(out_dir) if out_dir else runs[0].path
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {run.name: palette[i % len(palette)] for i, run in enumerate(runs)}

    plots = plan_plots(runs)
    written = []
    for name, plot in plots.items():
        if plot.lines:
            fig = draw(plot, colors)
            fig.savefig(out_dir / name)
            plt.close(fig)
            written.append(name)
    summary = {"runs": [{"name": run.name, "path": str(run.path)} for run in runs],
               "plots": {name: {"title": plots[name].title, "series": [
                   {"run": line.run, "label": line.label, "key": line.key, "points": len(line.xs),
                    "last": line.ys[-1]} for line in plots[name].lines]} for name in written}}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    if len(runs) == 1:
        lines = [f"# Run report: {runs[0].name}", "", *_run_summary(runs[0])]
    else:
        lines = [f"# Runs compared: {', '.join(run.name for run in runs)}"]
        for run in runs:
            lines += ["", f"## {run.name}", "", *_run_summary(run)]
    lines += ["", "## Plots", ""]
    lines += [f"![{name[:-4]}]({name})" for name in written] or ["(nothing to plot)"]
    missing = [name for name in STANDARD_PLOTS if name not in written]
    if missing:
        lines += ["", f"No data for: {', '.join(missing)}"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report

"""The `trainstack` command.

    trainstack doctor                       # hardware, precision and why, each task package's profile
    trainstack doctor --simulate rtx2080s-8g   # what that machine would get
    trainstack report runs/my-run           # loss/lr/tokens-per-s/memory PNGs + report.md
    python -m trainstack --help
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib.metadata import entry_points
from pathlib import Path

import trainstack
from trainstack.hardware import (
    SIMULATED,
    NoProfileFits,
    detect_hardware,
    load_profiles,
    pick_profile,
    simulated_hardware,
)

TASKS_GROUP = "trainstack.tasks"


def task_entry_points() -> list:
    return sorted(entry_points(group=TASKS_GROUP), key=lambda ep: ep.name)


def doctor(args) -> int:
    # Imported here so that `trainstack --help` answers without loading torch.
    import torch

    from trainstack.precision import PrecisionError, resolve_precision

    hw = simulated_hardware(args.simulate) if args.simulate else detect_hardware()
    print(f"trainstack-core {trainstack.__version__} | python {platform.python_version()} | torch {torch.__version__}"
          f" | CUDA {torch.version.cuda or 'none'}")
    print(f"hardware{' (simulated: ' + args.simulate + ')' if args.simulate else ''}: {hw.describe()}")
    for i, g in enumerate(hw.gpus):
        print(f"  gpu {i}: {g.name}, sm_{g.capability[0]}{g.capability[1]}, {g.memory_gib:.1f} GiB")
    try:
        p = resolve_precision(args.precision, hw)
        print(f"precision: {p.reason}{' | TF32 on' if p.tf32 else ''}")
    except PrecisionError as e:
        print(f"precision: error: {e}")
    eps = task_entry_points()
    if not eps:
        print(f"task packages: none installed (entry point group '{TASKS_GROUP}')")
        return 0
    print("task packages:")
    for ep in eps:
        dist = f" ({ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else ""
        try:
            profiles = load_profiles(ep.load()())
        except Exception as e:  # one broken package must not hide the others
            print(f"  {ep.name}{dist}: cannot load profiles: {type(e).__name__}: {e}")
            continue
        try:
            chosen = pick_profile(profiles, hw)
            print(f"  {ep.name}{dist}: profile {chosen.name}" + (f" - {chosen.description}" if chosen.description else ""))
        except NoProfileFits as e:
            print(f"  {ep.name}{dist}: " + str(e).replace("\n", "\n    "))
    return 0


def report(args) -> int:
    from trainstack.extras import MissingExtra
    from trainstack.report import write_report

    try:
        path = write_report(args.run_dir, args.out)
    except (FileNotFoundError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"wrote {path} and {', '.join(written) or 'no plots'} in {path.parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainstack", description="trainstack-core tools: check a machine, report on a run.")
    parser.add_argument("--version", action="version", version=f"trainstack-core {trainstack.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("doctor", help="hardware, precision, and the profile each installed task package would pick")
    d.add_argument("--simulate", choices=sorted(SIMULATED), help="pretend to be this machine")
    d.add_argument("--precision", default="auto", help="auto | bf16 | fp16 | fp32 (default: auto)")
    d.set_defaults(func=doctor)
    r = sub.add_parser("report", help="plots (PNG) and report.md from RUN_DIR/log.jsonl")
    r.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    r.add_argument("--out", type=Path, default=None, help="output directory (default: RUN_DIR)")
    r.set_defaults(func=report)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `trainstack` command.

    trainstack doctor                       # hardware, precision, optional packages, hub cache, disk,
                                            # each task package's profile (exit 1 if it lacks a package)
    trainstack doctor --simulate rtx2080s-8g   # what that machine would get
    trainstack profiles                     # every installed task package's shipped profiles
    trainstack report runs/my-run           # loss/lr/tokens-per-s/memory/eval PNGs + report.md
    trainstack report runs/a runs/b --out runs/a-vs-b   # the runs overlaid, one line each
    python -m trainstack --help
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trainstack
from trainstack.hardware import SIMULATED
from trainstack.task_cli import EXIT_OK, EXIT_USAGE, OneLineErrorParser


def doctor(args) -> int:
    from trainstack.doctor import doctor as run_doctor
    from trainstack.hardware import detect_hardware, simulated_hardware

    hw = simulated_hardware(args.simulate) if args.simulate else detect_hardware()
    return run_doctor(hw, precision=args.precision, simulated=args.simulate)


def profiles(args) -> int:
    """Every installed task package's shipped profiles (each package's `profiles` command says more)."""
    from trainstack.doctor import TASKS_GROUP, task_entry_points
    from trainstack.hardware import load_profiles
    from trainstack.task_cli import describe_requirements

    if not task_entry_points():
        print(f"no task packages installed (entry point group '{TASKS_GROUP}')")
    for ep in task_entry_points():
        try:
            shipped = load_profiles(ep.load()())
        except Exception as e:  # one broken package must not hide the others
            print(f"{ep.name}: cannot load profiles: {type(e).__name__}: {e}")
            continue
        print(f"{ep.name}:")
        for p in shipped:
            print(f"  {p.name:<16} {describe_requirements(p.requires):<38} {p.description}")
    return EXIT_OK


def report(args) -> int:
    from trainstack.extras import MissingExtra
    from trainstack.report import write_report

    try:
        path = write_report(args.run_dirs, args.out)
    except (FileNotFoundError, ValueError, MissingExtra) as e:
        print(f"trainstack: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    written = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"wrote {path} and {', '.join(written) or 'no plots'} in {path.parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="trainstack", description="trainstack-core tools: check a machine, report on a run.")
    parser.add_argument("--version", action="version", version=f"trainstack-core {trainstack.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    d = sub.add_parser("doctor", help="hardware, precision, optional packages, hub cache, disk, and the profile each "
                                      "installed task package would pick")
    d.add_argument("--simulate", choices=sorted(SIMULATED), help="pretend to be this machine")
    d.add_argument("--precision", default="auto", help="auto | bf16 | fp16 | fp32 (default: auto)")
    d.set_defaults(func=doctor)
    p = sub.add_parser("profiles", help="every installed task package's shipped profiles")
    p.set_defaults(func=profiles)
    r = sub.add_parser("report", help="plots (PNG), report.md and report.json from RUN/log.jsonl; several runs "
                                      "are overlaid, one line per run")
    r.add_argument("run_dirs", metavar="RUN", type=Path, nargs="+", help="run directories holding log.jsonl")
    r.add_argument("--out", type=Path, default=None,
                   help="output directory (default: the run's directory; required with several runs)")
    r.set_defaults(func=report)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error: argparse printed it
        return e.code if isinstance(e.code, int) else EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

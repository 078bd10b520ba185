"""hlbd: train, evaluate and benchmark the APT model on HLBD pairs.

    hlbd train [--data FILE] [--profile fast|users-baseline|PATH.yaml] [key=value ...]
    hlbd train --resume [run_dir=DIR] [key=value ...]     (continue an interrupted run)
    hlbd eval RUN_OR_CHECKPOINT [--data FILE]
    hlbd generate RUN_OR_CHECKPOINT "🌧️" ["I love you" ...] [--field emoji]
    hlbd bench [--data FILE] [--stages users-loop,users-baseline,fast] [--out FILE.json]   (one GPU)
    hlbd profiles
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings

PINYIN_MARKS = set("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜü")


def _guess_field(text: str) -> str:
    if re.search(r"[\uac00-\ud7af]", text):
        return "korean"
    if re.search(r"[\u3040-\u30ff]", text):
        return "japanese"
    if any(c in PINYIN_MARKS for c in text):
        return "pinyin"
    if re.search(r"[A-Za-z]", text):
        return "english"
    if re.search(r"[\u4e00-\u9fff]", text):
        return "phrase"
    return "emoji"


def _profiles():
    from trainstack.hardware import load_profiles

    from hlbd.profiles import profile_dir

    return load_profiles(profile_dir())


def _load_cfg(profile_name: str, overrides: list[str], data: str | None):
    from trainstack.config import load_config
    from trainstack.hardware import resolve_profile

    from hlbd.config import TrainConfig

    profile = resolve_profile(profile_name, _profiles())
    if data:
        overrides = [*overrides, f"data.path={data}"]
    return load_config(TrainConfig, profile.settings, overrides)


def _resume_cfg(args, overrides):
    """The interrupted run's own config.yaml, with any key=value overrides on top."""
    from pathlib import Path

    from trainstack.config import load_config

    from hlbd.config import TrainConfig

    if args.profile:
        raise ValueError("--resume takes the run's saved config.yaml; drop --profile (key=value overrides still apply)")
    run_dir = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "run_dir"), TrainConfig.run_dir)
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise ValueError(f"{run_dir}: nothing to resume (no config.yaml; pass run_dir=DIR of the interrupted run)")
    if args.data:
        overrides = [*overrides, f"data.path={args.data}"]
    return load_config(TrainConfig, saved, overrides)


def cmd_train(args, overrides) -> int:
    from hlbd.train import latest_checkpoint, train

    cfg = _resume_cfg(args, overrides) if args.resume else _load_cfg(args.profile or "fast", overrides, args.data)
    try:
        summary = train(cfg, progress=not args.no_progress, resume=args.resume)
    except KeyboardInterrupt:
        # A second Ctrl-C means "now": stop without finishing the save. Saves are atomic (a temporary
        # directory renamed into place), so the last complete checkpoint is intact either way.
        latest = latest_checkpoint(cfg.run_dir)
        kept = f"resume from {latest} with: hlbd train --resume run_dir={cfg.run_dir}" if latest else \
            "no checkpoint was saved"
        print(f"hlbd: interrupted twice: stopped without saving; {kept}", file=sys.stderr)
        return 130
    if summary["interrupted"]:
        return 130
    # 1, not 2: the run itself was fine but did not reach its goal (2 is bad input or config)
    return 0 if summary["learned"] or cfg.stop_at_exact_match == 0 else 1


def cmd_eval(args, overrides) -> int:
    from hlbd.data import build_pairs, read_hlbd
    from hlbd.evaluate import evaluate_pairs, load_checkpoint

    model, tok, info = load_checkpoint(args.checkpoint)
    from pathlib import Path

    import yaml

    run_cfg = {}
    cfg_file = Path(info["checkpoint"]).parent.parent / "config.yaml"
    if cfg_file.exists():
        run_cfg = yaml.safe_load(cfg_file.read_text()) or {}
    data_cfg = run_cfg.get("data", {})
    path = args.data or info.get("extra", {}).get("data")
    pairs = build_pairs(read_hlbd(path), data_cfg.get("sources", None) or
                        ("emoji", "phrase", "english", "pinyin", "japanese", "korean"),
                        data_cfg.get("targets", None) or ("chinese",), data_cfg.get("language_tags", True))
    result = evaluate_pairs(model, tok, pairs)
    verdict = "learned" if result["exact_match"] >= 0.95 else "not learned"
    print(f"{verdict}: exact match {result['exact_match']:.1%} of {result['n']} pairs (greedy), chrF {result['chrf']:.1f}")
    for w in result["wrong_examples"]:
        print(f"  {w['source']} -> {w['got']!r} (expected {w['expected']!r})")
    print(json.dumps({k: v for k, v in result.items() if k != "wrong_examples"}, ensure_ascii=False))
    return 0


def cmd_generate(args, overrides) -> int:
    from hlbd.data import LANGUAGE_TAGS
    from hlbd.evaluate import generate, load_checkpoint

    model, tok, _ = load_checkpoint(args.checkpoint)
    sources = []
    for text in args.text:
        field = args.field or _guess_field(text)
        tag = LANGUAGE_TAGS[field]
        sources.append(text if text.startswith("<") or tag not in tok.ids else tag + text)
    for text, out in zip(args.text, generate(model, tok, sources), strict=True):
        print(f"{text}\t{out}")
    return 0


def cmd_bench(args, overrides) -> int:
    from hlbd.bench import run_bench

    return run_bench(data=args.data, stages=[s for s in args.stages.split(",") if s], users_epochs=args.users_epochs,
                     users_seconds=args.users_seconds, baseline_epochs=args.baseline_epochs, out=args.out,
                     overrides=overrides, fast_eager=args.fast_eager)


def cmd_profiles(args, overrides) -> int:
    for p in _profiles():
        print(f"{p.name:16s} {p.description}")
    return 0


def main(argv=None) -> int:
    from trainstack.config import parse_cli_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = parse_cli_overrides(argv)
    parser = argparse.ArgumentParser(prog="hlbd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (default: recipe fast on the bundled sample)")
    p.add_argument("--data", help="HLBD .txt/.json/.jsonl (default: the bundled sample)")
    p.add_argument("--profile", default=None, help="fast (default) | users-baseline | path to a YAML recipe")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run_dir (default runs/hlbd) from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("eval", help="greedy-decode every training target: exact match and chrF")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="pairs to evaluate (default: the data the run trained on)")
    p = sub.add_parser("generate", help="greedy generation for the given inputs")
    p.add_argument("checkpoint")
    p.add_argument("text", nargs="+")
    p.add_argument("--field", choices=["emoji", "phrase", "english", "pinyin", "japanese", "korean", "card", "math"],
                   help="the inputs' field (default: guessed from the script)")
    p = sub.add_parser("bench", help="users' loop vs users-baseline vs fast, one GPU")
    p.add_argument("--data", default=None, help="HLBD .txt/.json/.jsonl (default: the bundled sample)")
    p.add_argument("--stages", default="users-loop,users-baseline,fast",
                   help="comma-separated: users-loop, users-baseline, fast, fast-vs-eager; "
                        "or 'report' (print from --out only)")
    p.add_argument("--users-epochs", type=int, default=1, help="epochs of the users' loop (a)")
    p.add_argument("--users-seconds", type=float, default=None,
                   help="stop (a) after this many seconds and extrapolate the epoch from the micro-batches done")
    p.add_argument("--baseline-epochs", type=int, default=4, help="epochs of (b); the first is warm-up")
    p.add_argument("--fast-eager", action="store_true",
                   help="also time fast with the fast path off (speed.compile=false speed.cuda_graphs=false)")
    p.add_argument("--out", default=None, help="JSON results; each stage merges into it")
    sub.add_parser("profiles", help="list the shipped recipes")
    args = parser.parse_args(rest)
    if overrides and args.command not in ("train", "bench"):
        parser.error(f"key=value overrides only apply to train and bench: {overrides}")

    from trainstack.config import ConfigError
    from trainstack.hardware import ProfileError
    from trainstack.precision import PrecisionError

    from hlbd.data import HLBDError

    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    handlers = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "bench": cmd_bench,
                "profiles": cmd_profiles}
    try:
        return handlers[args.command](args, overrides)
    except (HLBDError, ConfigError, ProfileError, PrecisionError, FileNotFoundError, ValueError) as e:
        print(f"hlbd: error: {e}", file=sys.stderr)
        return 2  # bad input, config or usage; 1 is left to failures of a run that started fine

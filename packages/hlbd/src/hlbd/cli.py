"""hlbd: train, evaluate and benchmark the APT model on HLBD pairs.

    hlbd train [--data FILE] [--profile fast|users-baseline|PATH.yaml] [key=value ...]
    hlbd train --resume [auto|CHECKPOINT] [run_dir=DIR] [key=value ...]   (continue an interrupted run)
    hlbd train --help-config                  every config key with its default and doc
    hlbd eval RUN_OR_CHECKPOINT [--data FILE]
    hlbd generate RUN_OR_CHECKPOINT "🌧️" ["I love you" ...] [--field emoji]
    hlbd bench [--data FILE] [--stages users-loop,users-baseline,fast] [--out FILE.json]   (one GPU)
    hlbd profiles [list] | show NAME | validate [NAME|PATH]
    hlbd --version

One GPU or the CPU: the same command (hlbd train); the device is picked by device=auto.
Exit codes: 0 learned (or ran all epochs with stop_at_exact_match=0), 1 did not learn, 2 bad usage,
config or data, 130 interrupted (resume with: hlbd train --resume run_dir=DIR).
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

from trainstack.task_cli import TaskCLI

from hlbd import __version__

PINYIN_MARKS = set("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜü")

cli = TaskCLI("hlbd", version=__version__, description=__doc__, profile_dir="hlbd.profiles:profile_dir",
              config_class="hlbd.config:TrainConfig", default_profile="fast",
              # ValueError: hlbd's own refusals (nothing to resume, data changed since the checkpoint)
              usage_errors=("hlbd.data:HLBDError", FileNotFoundError, ValueError))


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


def _data_override(data: str | None) -> list[str]:
    return [f"data.path={data}"] if data else []


def _resume_cfg(args, overrides):
    """The interrupted run's own config.yaml, with any key=value overrides on top. --resume PATH names a
    checkpoint (RUN_DIR/checkpoints/step-N) or a run directory."""
    from trainstack.config import load_config

    from hlbd.config import TrainConfig

    if args.profile:
        raise ValueError("--resume takes the run's saved config.yaml; drop --profile (key=value overrides still apply)")
    checkpoint = None
    if args.resume != "auto":
        path = Path(args.resume)
        if path.parent.name == "checkpoints":
            checkpoint, run_dir = path, path.parent.parent
        else:
            run_dir = path
        overrides = [f"run_dir={run_dir}", *overrides]
    run_dir = next((o.split("=", 1)[1] for o in reversed(overrides) if o.split("=", 1)[0] == "run_dir"),
                   TrainConfig.run_dir)
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise ValueError(f"{run_dir}: nothing to resume (no config.yaml; pass run_dir=DIR of the interrupted run)")
    if checkpoint is not None and not checkpoint.is_dir():
        raise ValueError(f"--resume {checkpoint}: no such checkpoint; omit the path to resume the latest")
    return load_config(TrainConfig, saved, [*overrides, *_data_override(args.data)]), checkpoint or True


def cmd_train(args, overrides) -> int:
    from hlbd.train import latest_checkpoint, train

    if args.resume:
        cfg, resume = _resume_cfg(args, overrides)
    else:
        (cfg, _), resume = cli.load_config(args.profile, [*overrides, *_data_override(args.data)]), False
    try:
        summary = train(cfg, progress=not args.no_progress, resume=resume)
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
    import yaml

    from hlbd.data import build_pairs, read_hlbd
    from hlbd.evaluate import evaluate_pairs, load_checkpoint

    model, tok, info = load_checkpoint(args.checkpoint)

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


train = cli.add_train(cmd_train, help="train (default: recipe fast on the bundled sample)")
train.add_argument("--data", help="HLBD .txt/.json/.jsonl (default: the bundled sample)")
train.add_argument("--no-progress", action="store_true")
p = cli.add_command("eval", cmd_eval, help="greedy-decode every training target: exact match and chrF")
p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
p.add_argument("--data", help="pairs to evaluate (default: the data the run trained on)")
p = cli.add_command("generate", cmd_generate, help="greedy generation for the given inputs")
p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
p.add_argument("text", nargs="+")
p.add_argument("--field", choices=["emoji", "phrase", "english", "pinyin", "japanese", "korean", "card", "math"],
               help="the inputs' field (default: guessed from the script)")
p = cli.add_command("bench", cmd_bench, help="users' loop vs users-baseline vs fast, one GPU", overrides=True)
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


def main(argv=None) -> int:
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    return cli.main(argv)

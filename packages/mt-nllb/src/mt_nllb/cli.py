"""mt-nllb: NLLB-200 fine-tuning (zho_Hans -> eng_Latn by default) on trainstack-core.

    mt-nllb train [--profile NAME|PATH|auto] [--run-dir DIR] [--resume [auto|PATH]] [key=value ...]
    mt-nllb train --help-config                      every config key with its default and doc
    mt-nllb eval CHECKPOINT --data FILE [--num-beams 4] [--predictions FILE]
    mt-nllb translate CHECKPOINT [--batch-size 32] [--num-beams 4] < zh.txt > en.txt
    mt-nllb profiles [list] [--memory] | show NAME | validate [NAME|PATH]
    mt-nllb bench [--only users-trainer,ours,rtx4080s-16g]
    mt-nllb --version

One GPU:  mt-nllb train --profile rtx4080s-16g data.train=[wmt19,opus100] data.caps=[5000000,500000]
N GPUs:   accelerate launch -m mt_nllb train --profile h100-80g ...
CPU:      mt-nllb train --profile cpu-debug
Exit codes: 0 done, 1 the run failed, 2 bad usage, config or data (one line), 130 interrupted
(continue with the same command plus --resume).
"""

from __future__ import annotations

import sys
from pathlib import Path

from trainstack.task_cli import TaskCLI

from mt_nllb import __version__

cli = TaskCLI("mt-nllb", version=__version__, description=__doc__, profile_dir="mt_nllb.profiles:profile_dir",
              config_class="mt_nllb.config:TrainConfig", default_profile="auto",
              usage_errors=("mt_nllb.data:DataError",),
              # the spellings of earlier releases, still accepted
              command_aliases={"evaluate": "eval", "generate": "translate"}, flag_aliases={"--test": "--data"})


def cmd_train(args, overrides) -> int:
    from trainstack.config import ConfigError

    from .train import check_optimizer_available, run

    cfg, _ = cli.load_config(args.profile, overrides)
    try:
        check_optimizer_available(cfg.optim.name)
    except ImportError as e:
        raise ConfigError(str(e)) from None
    resume = "latest" if args.resume == "auto" else args.resume
    try:
        summary = run(cfg, Path(args.run_dir), resume=resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        # A second Ctrl-C means "now": no save. Saves are atomic, so the last complete checkpoint stands.
        print(f"mt-nllb train: interrupted twice: stopped without saving; the last complete checkpoint in "
              f"{Path(args.run_dir) / 'checkpoints'} (if any) continues with --resume", file=sys.stderr)
        return 130
    return 130 if summary["interrupted"] else 0


def cmd_eval(args, overrides) -> None:
    from .evaluate import run_evaluate

    run_evaluate(args)


def cmd_translate(args, overrides) -> None:
    from .evaluate import run_translate

    run_translate(args)


def cmd_bench(argv) -> int:
    from .bench import main as bench_main

    return bench_main(argv)


def print_memory_plans(args, profiles) -> None:
    if args.memory:
        from .memory import print_profile_plans

        print_profile_plans(profiles)


def _declare() -> None:
    from .evaluate import add_eval_options, add_inference_options

    p = cli.add_train(cmd_train, help="fine-tune (the profile auto picks fits this machine)")
    p.add_argument("--run-dir", default="runs/mt-nllb")
    p.add_argument("--no-progress", action="store_true")
    add_eval_options(cli.add_command("eval", cmd_eval, help="BLEU and chrF++ of a checkpoint on a test file"))
    add_inference_options(cli.add_command("translate", cmd_translate,
                                          help="translate stdin (one sentence a line) to stdout"))
    cli.add_command("bench", cmd_bench, help="users' Trainer recipe vs ours, one GPU (bench --help)", raw=True)
    cli.profiles_command().add_argument("--memory", action="store_true",
                                        help="with list: estimated peak memory per GPU profile (worst case)")
    cli.after_profiles_list = print_memory_plans


_declare()


def main(argv=None) -> int:
    return cli.main(argv)

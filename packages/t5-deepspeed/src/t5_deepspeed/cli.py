"""t5-deepspeed: run_translation.py-compatible T5 training with DeepSpeed ZeRO, plus `plan` and `bench`.

    t5-deepspeed [train] --model_name_or_path t5-small --deepspeed zero2 ...   (the job; train --help lists
                                                                              every run_translation flag)
    t5-deepspeed train --profile auto|NAME|PATH ...   a profile's settings as defaults (= --hardware_profile)
    t5-deepspeed train ... --resume [auto|PATH]       continue (= --resume_from_checkpoint latest|PATH)
    t5-deepspeed plan --model t5-3b --gpu h100-80g                            (memory per ZeRO setup)
    t5-deepspeed bench --model t5-small --deepspeed zero2 --users_fp16        (users' Trainer vs ours)
    t5-deepspeed profiles [list] | show NAME | validate [NAME|PATH] | pick    (hardware profiles)
    t5-deepspeed configs                                                      (shipped DeepSpeed configs)
    t5-deepspeed --version

Under launchers: `deepspeed --num_gpus=N --module t5_deepspeed ...`, `accelerate launch -m t5_deepspeed ...`.
Exit codes: 0 done, 1 the run failed, 2 bad usage, arguments or data (one line), 130/143 stopped by
SIGINT/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

from trainstack.task_cli import TaskCLI

from t5_deepspeed import __version__

cli = TaskCLI("t5-deepspeed", version=__version__, description=__doc__,
              profile_dir="t5_deepspeed.profiles:profile_dir", default_profile=None,
              validate_profile="t5_deepspeed.profiles:validate", default_command="train")


def cmd_train(argv) -> int:
    from .train import main as train_main

    return train_main(argv)


def cmd_plan(argv) -> int:
    from .plan import main as plan_main

    return plan_main(argv)


def cmd_bench(argv) -> int:
    from .bench import main as bench_main

    return bench_main(argv)


def cmd_configs(args, overrides) -> None:
    from .ds_config import SHIPPED_BASES, shipped_dir, shipped_names

    print(f"shipped DeepSpeed configs ({shipped_dir()}):")
    for base in SHIPPED_BASES:
        print(f"  {base:<15} -> {base}-bf16 or {base}-fp16 by the run's precision")
    for name in shipped_names():
        print(f"  {name}")


cli.add_command("train", cmd_train, help="train/evaluate/predict with run_translation.py's flags (train --help)",
                raw=True)
cli.add_command("plan", cmd_plan, help="memory per GPU of each ZeRO setup for a model and GPU", raw=True)
cli.add_command("bench", cmd_bench, help="the users' Trainer recipe vs ours", raw=True)
cli.add_command("configs", cmd_configs, help="the shipped DeepSpeed configs")


def main(argv=None) -> int:
    return cli.main(argv)

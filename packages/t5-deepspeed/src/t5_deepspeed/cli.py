"""t5-deepspeed: run_translation.py-compatible T5 training with DeepSpeed ZeRO, plus `plan` and `bench`.

    t5-deepspeed [train] --model_name_or_path t5-small --deepspeed zero2 ...   (the job; see train.py)
    t5-deepspeed plan --model t5-3b --gpu h100-80g                            (memory per ZeRO setup)
    t5-deepspeed bench --model t5-small --deepspeed zero2 --users_fp16        (users' Trainer vs ours)
    t5-deepspeed configs                                                      (shipped DeepSpeed configs)

Under launchers: `deepspeed --num_gpus=N -m t5_deepspeed ...`, `accelerate launch -m t5_deepspeed ...`.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(__doc__)
        from .args import build_parser

        build_parser().print_help()
        return 0
    command = argv[0] if argv and not argv[0].startswith("-") else "train"
    rest = argv[1:] if argv and argv[0] == command else argv
    if command == "train":
        from .train import main as train_main

        return train_main(rest)
    if command == "plan":
        from .plan import main as plan_main

        return plan_main(rest)
    if command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if command == "configs":
        from .ds_config import SHIPPED_BASES, shipped_dir, shipped_names

        print(f"shipped DeepSpeed configs ({shipped_dir()}):")
        for base in SHIPPED_BASES:
            print(f"  {base:<15} -> {base}-bf16 or {base}-fp16 by the run's precision")
        for name in shipped_names():
            print(f"  {name}")
        return 0
    print(f"t5-deepspeed: error: unknown command {command!r}; commands: train (default), plan, bench, configs",
          file=sys.stderr)
    return 2

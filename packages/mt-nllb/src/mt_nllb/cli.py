"""mt-nllb: NLLB-200 fine-tuning (zho_Hans -> eng_Latn by default) on trainstack-core.

    mt-nllb train [--profile NAME|PATH|auto] [--run-dir DIR] [--resume] [key=value ...]
    mt-nllb evaluate CHECKPOINT --test FILE [--num-beams 4] [--predictions FILE]
    mt-nllb translate CHECKPOINT [--batch-size 32] [--num-beams 4] < zh.txt > en.txt
    mt-nllb profiles [--memory]
    mt-nllb bench [--only users-trainer,ours,rtx4080s-16g]

One GPU:  mt-nllb train --profile rtx4080s-16g data.train=[wmt19,opus100] data.caps=[5000000,500000]
N GPUs:   accelerate launch -m mt_nllb train --profile h100-80g ...
CPU:      mt-nllb train --profile cpu-debug
"""

from __future__ import annotations

import sys

COMMANDS = ("train", "evaluate", "translate", "profiles", "bench")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import main as run

        return run(rest)
    if command in ("evaluate", "translate"):
        from . import evaluate

        return evaluate.main_evaluate(rest) if command == "evaluate" else evaluate.main_translate(rest)
    if command == "profiles":
        from .profiles import print_profiles

        return print_profiles(rest)
    if command == "bench":
        from .bench import main as run

        return run(rest)
    print(f"mt-nllb: error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2

"""python -m t5_deepspeed ...  (also what `deepspeed --num_gpus=N --module t5_deepspeed ...` runs)."""

import sys

from .cli import main

sys.exit(main())

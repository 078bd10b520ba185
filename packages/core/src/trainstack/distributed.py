"""Process-group defaults for multi-GPU runs: the settings that users' recipes set by hand.

    handlers, line = process_group_defaults(timeout_s=1800)
    accelerator = Accelerator(..., kwargs_handlers=handlers)   # before any process group exists
    print(line)   # "distributed: collective timeout 1800 s; NCCL shared memory on (/dev/shm 31.4 GiB free)"

A user's environment wins: NCCL_SHM_DISABLE already set is kept as it is.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

SHM_MIN_FREE_GIB = 1.0
"""Below this much free /dev/shm (a container's default is 64 MiB), NCCL's shared-memory transport
fails mid-run with a bus error; NCCL then goes through the network stack instead (slower, works)."""


def shm_free_gib(path: str = "/dev/shm") -> float | None:
    try:
        return shutil.disk_usage(path).free / 2**30
    except OSError:
        return None


def process_group_defaults(timeout_s: int, shm_free: float | None = None) -> tuple[list, str]:
    """(accelerate kwargs handlers, one line saying what was set). ``timeout_s``: how long a collective
    may wait for the slowest rank (a long evaluation or save on rank 0) before the run fails;
    torch's default is 600 s for NCCL. ``shm_free``: free /dev/shm in GiB (measured when None)."""
    from accelerate.utils import InitProcessGroupKwargs

    shm_free = shm_free_gib() if shm_free is None else shm_free
    if "NCCL_SHM_DISABLE" in os.environ:
        shm = f"NCCL_SHM_DISABLE={os.environ['NCCL_SHM_DISABLE']} (from the environment)"
    elif shm_free is not None and shm_free < SHM_MIN_FREE_GIB:
        os.environ["NCCL_SHM_DISABLE"] = "1"
        shm = (f"NCCL_SHM_DISABLE=1 (/dev/shm has {shm_free * 1024:.0f} MiB free; give the container more, "
               "e.g. docker --shm-size=8g, or set NCCL_SHM_DISABLE=0)")
    else:
        shm = "NCCL shared memory on" + (f" (/dev/shm {shm_free:.1f} GiB free)" if shm_free is not None else "")
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    return handlers, f"distributed: collective timeout {timeout_s} s; {shm}"

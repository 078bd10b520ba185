"""The compile cache on disk, and a count of compilations.

torch.compile's kernels and graphs (Inductor's FX graph cache, AOTAutograd's cache, Triton's
binaries) go under one directory, so a second identical run loads them instead of compiling:

    TRAINSTACK_CACHE_DIR   default ~/.cache/trainstack; compile artifacts in <it>/compile/
    TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR   honoured when set (they win over ours)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("TRAINSTACK_CACHE_DIR") or Path.home() / ".cache" / "trainstack")


def enable_compile_cache() -> Path:
    """Point Inductor and Triton at our cache (unless the user chose theirs) and switch the caches on.
    Call before the first compiled call. Returns the directory used."""
    root = cache_root() / "compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True
    except ImportError:  # a torch without Inductor: compile will say so itself
        pass
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).parent


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (graph breaks count each piece)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def allow_compilations(n: int) -> None:
    """Let Dynamo compile ``n`` graphs of one function (one per input shape) before it gives up and runs
    the function uncompiled (its recompile limit, 8 by default, would silently drop a step with more
    length buckets than that back to eager). Never lowers the limit."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), int(n)))

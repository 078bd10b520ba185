"""The compile cache on disk, a count of compilations, and the cold-start clock.

torch.compile's kernels and graphs (Inductor's FX graph cache, AOTAutograd's cache, Triton's
binaries) go under one directory, so a second identical run loads them instead of compiling:

    TRAINSTACK_CACHE_DIR   default ~/.cache/trainstack; compile artifacts in <it>/compile/
    TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR   honoured when set (they win over ours)

Whether a run found its graphs there shows in ``compile_cache_use()``: "cold" (every graph
compiled), "warm" (every graph loaded), "partly warm", or "unused" (nothing compiled by Inductor).
Time to the first optimizer step counts from ``process_start_clock()``, so imports, data and model
loading are in it: it is the wait a user sees.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("TRAINSTACK_CACHE_DIR") or Path.home() / ".cache" / "trainstack")


def _inductor_default_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # older torch: the same rule
        import getpass
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return default_cache_dir()


def enable_compile_cache() -> Path:
    """Point Inductor, Triton and flash-attn-4 at our cache (unless the user chose theirs) and switch the
    caches on.
    Call before the first compiled call. Returns the directory used."""
    root = cache_root() / "compile"
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Inductor writes its default (a temporary directory) into the environment the first time it asks
    # for its cache directory, which importing some libraries does: that value is not the user's choice.
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(_inductor_default_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    # flash-attn-4 compiles its CuTe kernels at their first call each process; its disk cache is off unless
    # asked for (read when flash_attn.cute is imported, which the packages do at the first attention call)
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(root / "flash_attn_cute"))
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


# Dynamo's counters for Inductor's FX graph cache and AOTAutograd's cache (a hit in either skips a compile).
_CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit", "fxgraph_cache_miss"),
                   ("aot_autograd", "autograd_cache_hit", "autograd_cache_miss"))


def compile_cache_use(since: dict | None = None) -> dict:
    """This process's compile-cache lookups (after the ``since`` reading, if given): ``{"compile_cache":
    state, "compile_cache_hits": n, "compile_cache_misses": m}``, state one of cold, warm, partly warm, unused."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        counters = {}
    hits = sum(int(counters.get(group, {}).get(hit, 0)) for group, hit, _ in _CACHE_COUNTERS)
    misses = sum(int(counters.get(group, {}).get(miss, 0)) for group, _, miss in _CACHE_COUNTERS)
    if since:
        hits -= since["compile_cache_hits"]
        misses -= since["compile_cache_misses"]
    state = ("unused" if not hits and not misses else "warm" if not misses else "cold" if not hits
             else "partly warm")
    return {"compile_cache": state, "compile_cache_hits": hits, "compile_cache_misses": misses}


def first_step_report(clock_start: float, *, cuda: bool, seconds: float | None = None,
                      cache_since: dict | None = None, loop_start: float | None = None) -> dict:
    """Call right after the first optimizer step: ``first_step_seconds`` (``seconds`` if already taken,
    else since ``clock_start``, after one device synchronization) and the compile cache's use. With
    ``loop_start`` (when the training loop began, same clock) also ``seconds_before_loop``: the start-up
    (imports, data, model, optimizer) apart from the first step's compilation and kernels."""
    if seconds is None:
        if cuda:
            import torch

            torch.cuda.synchronize()  # the step's kernels are part of the wait
        seconds = time.perf_counter() - clock_start
    report = {"first_step_seconds": round(seconds, 3)}
    if loop_start is not None:
        report["seconds_before_loop"] = round(loop_start - clock_start, 3)
    return {**report, **compile_cache_use(cache_since)}


def describe_first_step(report: dict, *notes: str) -> str:
    """One line: "first optimizer step after 84.2 s (6.1 s before the training loop); compile cache cold
    (0 hits, 66 misses)". ``notes``: more to say in the parentheses."""
    cache = report["compile_cache"]
    if "seconds_before_loop" in report:
        notes = (f"{report['seconds_before_loop']:.1f} s before the training loop", *notes)
    said = f" ({'; '.join(notes)})" if notes else ""
    return (f"first optimizer step after {report['first_step_seconds']:.1f} s{said}"
            + ("" if cache == "unused" else f"; compile cache {cache} ({report['compile_cache_hits']} hits, "
                                            f"{report['compile_cache_misses']} misses)"))


def process_start_clock() -> float:
    """This process's start on the ``time.perf_counter()`` clock (now, if the OS does not say)."""
    now_wall, now = time.time(), time.perf_counter()
    try:
        import psutil

        return now - max(0.0, now_wall - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil or no /proc: count from now
        return now


def allow_compilations(n: int) -> None:
    """Let Dynamo compile ``n`` graphs of one function (one per input shape) before it gives up and runs
    the function uncompiled (its recompile limit, 8 by default, would silently drop a step with more
    length buckets than that back to eager). Never lowers the limit."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), int(n)))

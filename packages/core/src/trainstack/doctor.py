"""`trainstack doctor`: what this machine has, what each task package would run, and what is missing.

Reports the hardware, the precision and why, the optional packages (present or not, and what each
gives), the hub's offline/cache state, free disk, and the profile each installed task package would
pick. Exits 1 when a package that a picked profile needs (its ``requires.packages``) is missing.
Nothing here imports an optional package: presence is checked with importlib's finders.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import trainstack
from trainstack.hardware import NoProfileFits, load_profiles, pick_profile

TASKS_GROUP = "trainstack.tasks"


@dataclass(frozen=True)
class OptionalPackage:
    module: str
    """Import name."""
    requirement: str
    """What to pip install."""
    gives: str


OPTIONAL_PACKAGES = (
    OptionalPackage("tensorboard", "tensorboard", "TensorBoard event files beside log.jsonl"),
    OptionalPackage("bitsandbytes", "bitsandbytes", "8-bit AdamW states (optim.name=adamw8bit)"),
    OptionalPackage("flash_attn", "flash-attn", "FlashAttention-2 kernels"),
    OptionalPackage("liger_kernel", "liger-kernel", "fused cross-entropy and norm kernels"),
    OptionalPackage("deepspeed", "deepspeed", "ZeRO-2/3 and CPU optimizer offload"),
    OptionalPackage("datasets", "datasets", "datasets named on the Hugging Face hub (wmt19, wmt16, ...)"),
    OptionalPackage("sacrebleu", "trainstack-core[metrics]", "BLEU and chrF (trainstack.metrics)"),
    OptionalPackage("matplotlib", "trainstack-core[report]", "trainstack report's plots"),
)
_REQUIREMENT = {p.module: p.requirement for p in OPTIONAL_PACKAGES}


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken module
        return False


def requirement_for(module: str) -> str:
    return _REQUIREMENT.get(module, module)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def deepspeed_ops() -> str:
    """Which DeepSpeed C++/CUDA ops come prebuilt, read from its install record without importing it
    (an import takes seconds); the others compile on first use, which needs ninja."""
    spec = importlib.util.find_spec("deepspeed")
    record = Path(spec.origin).parent / "git_version_info_installed.py" if spec and spec.origin else None
    prebuilt: list[str] = []
    if record is not None and record.exists():
        for node in ast.parse(record.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "installed_ops":
                prebuilt = sorted(k for k, v in ast.literal_eval(node.value).items() if v)
    ninja = "ninja found" if shutil.which("ninja") or has_module("ninja") else "ninja MISSING: pip install ninja"
    where = os.environ.get("TORCH_EXTENSIONS_DIR") or "~/.cache/torch_extensions"
    return (f"ops prebuilt: {', '.join(prebuilt) or 'none'}; the rest compile on first use "
            f"({ninja}; cache {where})")


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_state() -> list[str]:
    from trainstack.hub import hub_offline

    flags = [f"{v}={os.environ[v]}" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
             if os.environ.get(v)]
    mode = "offline" if hub_offline() else "online (hub names download on first use)"
    cache = _hub_cache()
    if cache.is_dir():
        entries = [p.name for p in cache.iterdir()]
        models = sum(n.startswith("models--") for n in entries)
        datasets = sum(n.startswith("datasets--") for n in entries)
        held = f"{models} model(s), {datasets} dataset(s)"
    else:
        held = "empty (not created yet)"
    return [f"hub: {mode}{' (' + ', '.join(flags) + ')' if flags else ''}", f"hub cache: {cache}: {held}"]


def free_disk(paths) -> str:
    parts = []
    for label, path in paths:
        existing = Path(path).expanduser().resolve()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        parts.append(f"{shutil.disk_usage(existing).free / 1024**3:.1f} GiB free in {label} ({existing})")
    return "disk: " + "; ".join(parts)


def task_entry_points() -> list:
    return sorted(entry_points(group=TASKS_GROUP), key=lambda ep: ep.name)


def missing_packages(profile) -> list[str]:
    return [m for m in profile.requires.packages if not has_module(m)]


def doctor(hw, precision: str = "auto", simulated: str | None = None, say=print) -> int:
    """Print the report for ``hw``; 0 when every picked profile has what it needs, else 1."""
    import torch

    from trainstack.precision import PrecisionError, resolve_precision

    say(f"trainstack-core {trainstack.__version__} | python {platform.python_version()} | torch {torch.__version__}"
        f" | CUDA {torch.version.cuda or 'none'}")
    say(f"hardware{' (simulated: ' + simulated + ')' if simulated else ''}: {hw.describe()}")
    for i, g in enumerate(hw.gpus):
        say(f"  gpu {i}: {g.name}, sm_{g.capability[0]}{g.capability[1]}, {g.memory_gib:.1f} GiB")
    try:
        p = resolve_precision(precision, hw)
        say(f"precision: {p.reason}{' | TF32 on' if p.tf32 else ''}")
    except PrecisionError as e:
        say(f"precision: error: {e}")
    say("optional packages:")
    for pkg in OPTIONAL_PACKAGES:
        if has_module(pkg.module):
            detail = deepspeed_ops() if pkg.module == "deepspeed" else pkg.gives
            say(f"  {pkg.module:<13} {_version(pkg.module):<10} {detail}")
        else:
            say(f"  {pkg.module:<13} {'-':<10} not installed: pip install {pkg.requirement} ({pkg.gives})")
    for line in hub_state():
        say(line)
    say(free_disk([("the working directory", "."), ("the hub cache", _hub_cache())]))

    eps = task_entry_points()
    if not eps:
        say(f"task packages: none installed (entry point group '{TASKS_GROUP}')")
        return 0
    say("task packages:")
    problems = []
    for ep in eps:
        dist = f" ({ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else ""
        try:
            profiles = load_profiles(ep.load()())
        except Exception as e:  # one broken package must not hide the others
            say(f"  {ep.name}{dist}: cannot load profiles: {type(e).__name__}: {e}")
            continue
        try:
            chosen = pick_profile(profiles, hw)
        except NoProfileFits as e:
            say(f"  {ep.name}{dist}: " + str(e).replace("\n", "\n    "))
            continue
        say(f"  {ep.name}{dist}: profile {chosen.name}" + (f" - {chosen.description}" if chosen.description else ""))
        for module in missing_packages(chosen):
            problems.append(f"{ep.name} profile {chosen.name} needs {module}: pip install {requirement_for(module)}")
            say(f"    MISSING {module}: pip install {requirement_for(module)}")
    for line in problems:
        say(f"problem: {line}")
    return 1 if problems else 0

"""Hardware detection and hardware profiles.

A profile is a YAML file named after the hardware it targets (``rtx4080s-16g.yaml``)::

    description: one RTX 4080 Super, 16 GB
    requires:
      min_gpu_memory_gib: 15
      min_compute_capability: "8.0"
      gpu_count: 1
      min_ram_gib: 16
      packages: [bitsandbytes]   # import names the settings need; `trainstack doctor` checks them
    settings:            # config overrides, applied over the dataclass defaults
      optim:
        lr: 3.0e-4

``pick_profile`` returns the most demanding profile the machine satisfies, so a machine with an
H100 gets the H100 profile rather than the 8 GB one that also "fits". On a machine with a GPU it never
falls back to a CPU profile: when no GPU profile fits, it names the closest one and why, and the user
asks for the CPU by naming a CPU profile (``choose_profile`` is what ``--profile NAME|PATH|auto`` calls).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainstack.config import load_yaml

GIB = 1024**3


@dataclass(frozen=True)
class GPUInfo:
    name: str
    capability: tuple[int, int]
    memory_gib: float


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPUInfo, ...]
    cpu_count: int
    ram_gib: float

    @property
    def has_gpu(self) -> bool:
        return len(self.gpus) > 0

    @property
    def gpu(self) -> GPUInfo | None:
        return self.gpus[0] if self.gpus else None

    def describe(self) -> str:
        """One line for logs and `trainstack doctor`."""
        head = f"{self.cpu_count} CPUs, {self.ram_gib:.1f} GiB RAM"
        if not self.gpus:
            return f"no GPU, {head}"
        g = self.gpus[0]
        count = f"{len(self.gpus)}x " if len(self.gpus) > 1 else ""
        return f"{count}{g.name} (sm_{g.capability[0]}{g.capability[1]}, {g.memory_gib:.1f} GiB), {head}"


def _ram_gib() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / GIB
    except ImportError:  # psutil is a dependency, but keep detection usable without it
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def detect_hardware() -> Hardware:
    import torch

    gpus: list[GPUInfo] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(GPUInfo(props.name, (props.major, props.minor), props.total_memory / GIB))
    # sched_getaffinity respects taskset/cgroup CPU limits, os.cpu_count does not.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Hardware(gpus=tuple(gpus), cpu_count=cpus, ram_gib=_ram_gib())


# Memory figures are what torch reports (a little under the marketing number), so profiles
# written for "16 GB" should ask for ~15 GiB.
_RTX2080S = GPUInfo("NVIDIA GeForce RTX 2080 SUPER", (7, 5), 7.79)
SIMULATED: dict[str, Hardware] = {
    "rtx2080s-8g": Hardware((_RTX2080S,), cpu_count=8, ram_gib=31.3),
    "rtx4080s-16g": Hardware((GPUInfo("NVIDIA GeForce RTX 4080 SUPER", (8, 9), 15.6),), 16, 62.7),
    "rtx3080-10g": Hardware((GPUInfo("NVIDIA GeForce RTX 3080", (8, 6), 9.77),), 12, 31.3),
    "a100-40g": Hardware((GPUInfo("NVIDIA A100-SXM4-40GB", (8, 0), 39.4),), 32, 251.0),
    "h100-80g": Hardware((GPUInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1),), 26, 251.0),
    "h200-141g": Hardware((GPUInfo("NVIDIA H200", (9, 0), 139.8),), 16, 125.0),
    "2x-rtx2080s-8g": Hardware((_RTX2080S, _RTX2080S), cpu_count=12, ram_gib=62.7),
    "cpu": Hardware((), cpu_count=2, ram_gib=7.8),
}


def simulated_hardware(name: str) -> Hardware:
    try:
        return SIMULATED[name]
    except KeyError:
        raise KeyError(f"unknown simulated hardware {name!r}; known: {', '.join(SIMULATED)}") from None


@dataclass(frozen=True)
class Requirements:
    min_gpu_memory_gib: float = 0
    min_compute_capability: tuple[int, int] | None = None
    gpu_count: int = 0  # 0 means a CPU profile
    min_ram_gib: float = 0
    packages: tuple[str, ...] = ()
    """Import names the profile's settings need (bitsandbytes for 8-bit AdamW, deepspeed, flash_attn).
    Not a fit criterion: `trainstack doctor` reports them missing and exits non-zero."""

    def demand(self) -> tuple:
        """Sort key: more GPUs, then more memory per GPU, then newer GPU, then more RAM."""
        cc = self.min_compute_capability or (0, 0)
        return (self.gpu_count, self.min_gpu_memory_gib, cc, self.min_ram_gib)


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    requires: Requirements
    settings: dict = field(hash=False)
    description: str = ""


class ProfileError(ValueError):
    """A profile YAML file is malformed."""


class NoProfileFits(RuntimeError):
    pass


class NoGPUProfileFits(NoProfileFits):
    """The machine has a GPU, no GPU profile fits it, and only a CPU profile would: auto stops rather
    than train on the CPU without being asked."""

    def __init__(self, message: str, closest: Profile, cpu_profile: Profile):
        super().__init__(message)
        self.closest = closest
        self.cpu_profile = cpu_profile


def parse_capability(value: Any, where: str = "min_compute_capability") -> tuple[int, int]:
    """Accept "8.0", 8.0, "sm_80", [8, 0]. YAML reads an unquoted 8.0 as a float, 7.5 too."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).strip().lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, _, minor = text.partition(".")
    elif text.isdigit() and len(text) >= 2:
        major, minor = text[:-1], text[-1]
    else:
        major, minor = text, "0"
    try:
        return int(major), int(minor)
    except ValueError:
        raise ProfileError(f"{where}: cannot read compute capability {value!r} (expected like \"8.0\")") from None


_REQUIREMENT_KEYS = ("min_gpu_memory_gib", "min_compute_capability", "gpu_count", "min_ram_gib", "packages")
_PROFILE_KEYS = ("requires", "settings", "description")


def _read_yaml_text(path) -> str:
    # Works on Path and on importlib.resources Traversable alike.
    return path.read_text(encoding="utf-8")


def load_profile(path) -> Profile:
    if isinstance(path, str):
        path = Path(path)
    name = Path(path.name).stem
    try:
        data = load_yaml(_read_yaml_text(path)) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping with 'requires:' and 'settings:'")
    unknown = sorted(set(data) - set(_PROFILE_KEYS))
    if unknown:
        raise ProfileError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: {', '.join(_PROFILE_KEYS)}")
    req = data.get("requires") or {}
    if not isinstance(req, dict):
        raise ProfileError(f"{path}: 'requires' must be a mapping")
    bad = sorted(set(req) - set(_REQUIREMENT_KEYS))
    if bad:
        raise ProfileError(f"{path}: unknown key 'requires.{bad[0]}'; allowed: {', '.join(_REQUIREMENT_KEYS)}")
    packages = req.get("packages") or []
    if not (isinstance(packages, list) and all(isinstance(x, str) for x in packages)):
        raise ProfileError(f"{path}: 'requires.packages' must be a list of import names, got {packages!r}")
    try:
        cc = req.get("min_compute_capability")
        requires = Requirements(
            min_gpu_memory_gib=float(req.get("min_gpu_memory_gib", 0)),
            min_compute_capability=None if cc is None else parse_capability(cc, f"{path}: requires.min_compute_capability"),
            gpu_count=int(req.get("gpu_count", 0)),
            min_ram_gib=float(req.get("min_ram_gib", 0)),
            packages=tuple(packages),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, ProfileError):
            raise
        raise ProfileError(f"{path}: bad value in 'requires': {e}") from None
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ProfileError(f"{path}: 'settings' must be a mapping")
    return Profile(name=name, path=Path(str(path)), requires=requires, settings=settings,
                   description=str(data.get("description") or ""))


def load_profiles(directory) -> list[Profile]:
    """Every *.yaml / *.yml in ``directory`` (a path or an importlib.resources Traversable), by name."""
    if isinstance(directory, str):
        directory = Path(directory)
    files = [p for p in directory.iterdir() if p.name.endswith((".yaml", ".yml")) and p.is_file()]
    return [load_profile(p) for p in sorted(files, key=lambda p: p.name)]


def resolve_profile(name_or_path, profiles) -> Profile:
    """A shipped profile name (``rtx4080s-16g``) or a path to a YAML file."""
    text = str(name_or_path)
    for p in profiles:
        if p.name == text:
            return p
    candidate = Path(text).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ProfileError(f"profile file not found: {candidate}")
        return load_profile(candidate)
    names = ", ".join(p.name for p in profiles) or "(none shipped)"
    raise ProfileError(f"unknown profile {text!r}; shipped: {names}; or pass a path to a .yaml file")


def why_not_fits(profile: Profile, hw: Hardware) -> list[str]:
    r = profile.requires
    reasons: list[str] = []
    if r.gpu_count > 0:
        if len(hw.gpus) < r.gpu_count:
            reasons.append(f"needs {r.gpu_count} GPU(s), found {len(hw.gpus)}")
        used = hw.gpus[: r.gpu_count]
        for i, g in enumerate(used):
            if g.memory_gib < r.min_gpu_memory_gib:
                reasons.append(f"GPU {i} has {g.memory_gib:.1f} GiB, needs {r.min_gpu_memory_gib:g} GiB")
            if r.min_compute_capability and g.capability < r.min_compute_capability:
                need = "{}.{}".format(*r.min_compute_capability)
                reasons.append(f"GPU {i} is sm_{g.capability[0]}{g.capability[1]}, needs compute capability {need}+")
    if hw.ram_gib < r.min_ram_gib:
        reasons.append(f"RAM {hw.ram_gib:.1f} GiB, needs {r.min_ram_gib:g} GiB")
    return reasons


def pick_profile(profiles, hw: Hardware) -> Profile:
    profiles = list(profiles)
    fits = [p for p in profiles if not why_not_fits(p, hw)]
    if not fits:
        lines = [f"no profile fits this machine ({hw.describe()}):"]
        for p in profiles:
            lines.append(f"  {p.name}: " + "; ".join(why_not_fits(p, hw)))
        if not profiles:
            lines.append("  (no profiles given)")
        raise NoProfileFits("\n".join(lines))
    # Ties keep the earlier (alphabetical) profile, so the choice is deterministic.
    best = max(fits, key=lambda p: p.requires.demand())
    gpu_profiles = [p for p in profiles if p.requires.gpu_count > 0]
    if hw.has_gpu and best.requires.gpu_count == 0 and gpu_profiles:
        # A GPU the profiles were not written for: training on the CPU instead would be a silent
        # 10-100x slow-down. Say which GPU profile comes closest, and how to ask for the CPU.
        closest = min(gpu_profiles, key=lambda p: (len(why_not_fits(p, hw)), p.requires.demand()))
        g = hw.gpus[0]
        raise NoGPUProfileFits(
            f"no GPU profile fits this machine's {g.name} (sm_{g.capability[0]}{g.capability[1]}, "
            f"{g.memory_gib:.1f} GiB); closest: {closest.name} ({'; '.join(why_not_fits(closest, hw))}); "
            f"to train on the CPU pass --profile {best.name}; for this GPU, edit a copy of a profile "
            f"(profiles show {closest.name}) and pass --profile PATH.yaml", closest=closest, cpu_profile=best)
    return best


def choose_profile(name_or_path, profiles, hw: Hardware | None = None) -> tuple[Profile, str]:
    """(profile, how it was chosen) for ``--profile``: a shipped name, a YAML path, or ``auto`` (the
    most demanding profile this machine fits; see ``pick_profile``)."""
    profiles = list(profiles)
    if str(name_or_path) == "auto":
        return pick_profile(profiles, hw if hw is not None else detect_hardware()), "picked for this hardware"
    return resolve_profile(name_or_path, profiles), "as asked"

"""Each package installs alone: its wheel plus trainstack-core's wheel into a fresh venv, nothing else
from the workspace, then its console scripts answer --help and a small smoke command runs.

This is what `pip install hlbd` gives a user, so it catches a dependency a package imports but does
not declare, a profile or data file left out of the wheel, or an import of another workspace package.

Torch comes first, from a CPU wheel on local disk (pip's find-links) or from TRAINSTACK_TORCH_INDEX
(e.g. https://download.pytorch.org/whl/cpu on GitHub), so `torch>=2.4` never pulls a CUDA build.
Venvs are made with uv and share its cache (hardlinks), so six venvs take about a minute warm.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import workspace  # noqa: E402

PACKAGES = workspace.packages()
# Subcommands that list what a package ships; run as a smoke test when the --help text offers one.
LISTING_SUBCOMMANDS = ("profiles", "configs")
COMMAND_TIMEOUT_S = 300
IMPORT_ALL = (
    "import importlib, pkgutil, {0}\n"
    "for m in pkgutil.walk_packages({0}.__path__, '{0}.'):\n"
    "    if not m.name.rsplit('.', 1)[-1] == '__main__':\n"
    "        importlib.import_module(m.name)\n"
)

pytestmark = pytest.mark.slow


def find_uv() -> list[str] | None:
    beside = Path(sys.executable).parent / "uv"
    if beside.exists():
        return [str(beside)]
    if shutil.which("uv"):
        return [shutil.which("uv")]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


def find_links() -> list[Path]:
    """pip's find-links directories, from the environment and pip's configuration files."""
    raw = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in config.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            raw += value.strip().strip("'\"").split()
    return [Path(p.removeprefix("file://")) for p in dict.fromkeys(raw) if Path(p.removeprefix("file://")).is_dir()]


def torch_source() -> tuple[list[str], str]:
    """The install arguments for a CPU torch, and a description; skip when none can be had safely."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in find_links():
        wheels = sorted(folder.glob(f"torch-*+cpu-{tag}-*.whl")) or sorted(folder.glob(f"torch-*-{tag}-*.whl"))
        if wheels:
            return [str(wheels[-1])], str(wheels[-1])
    index = os.environ.get("TRAINSTACK_TORCH_INDEX")
    if index:
        return ["torch", "--index-url", index], f"torch from {index}"
    pytest.skip(f"no local CPU torch wheel for {tag} in pip's find-links and TRAINSTACK_TORCH_INDEX is unset: "
                "installing torch>=2.4 from PyPI would pull a multi-GB CUDA build")


@dataclass
class Outcome:
    package: str
    steps: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


class Venv:
    def __init__(self, path: Path, uv: list[str] | None):
        self.path, self.uv = path, uv
        self.python = path / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")}
        env.update(VIRTUAL_ENV=str(self.path), PATH=f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false", PYTHONNOUSERSITE="1")
        return env

    def run(self, args: list[str], cwd: Path) -> str:
        result = subprocess.run(args, cwd=cwd, env=self.env(), capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-3000:]
            raise RuntimeError(f"`{' '.join(args)}` exited {result.returncode}:\n{tail}")
        return result.stdout + result.stderr

    def create(self, cwd: Path) -> None:
        if self.uv:
            self.run([*self.uv, "venv", "--quiet", "--python", sys.executable, str(self.path)], cwd)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True)

    def install(self, args: list[str], cwd: Path) -> None:
        if self.uv:
            self.run([*self.uv, "pip", "install", "--quiet", "--python", str(self.python), *args], cwd)
        else:
            self.run([str(self.python), "-m", "pip", "install", "-q", *args], cwd)

    def distributions(self, cwd: Path) -> set[str]:
        code = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
        return {workspace.normalize(n) for n in self.run([str(self.python), "-c", code], cwd).split()}


def build_wheels(out: Path) -> dict[str, Path]:
    """One wheel per package, built from the working tree with hatchling (no isolated env needed)."""
    wheels = {}
    for package in PACKAGES:
        before = set(out.glob("*.whl"))
        subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
                       cwd=package.path, check=True, capture_output=True, text=True)
        (wheel,) = set(out.glob("*.whl")) - before
        wheels[package.folder] = wheel
    return wheels


def check_package(package, wheels: dict[str, Path], torch_args: list[str], uv, tmp: Path) -> Outcome:
    outcome = Outcome(package.folder)
    venv = Venv(tmp / f"venv-{package.folder}", uv)
    core = next(p for p in PACKAGES if p.is_core)

    def step(name, fn):
        start = time.perf_counter()
        value = fn()
        outcome.steps.append((name, time.perf_counter() - start))
        return value

    try:
        step("venv", lambda: venv.create(tmp))
        step("torch", lambda: venv.install(torch_args, tmp))
        own = [str(wheels[core.folder])] + ([] if package.is_core else [str(wheels[package.folder])])
        step("install", lambda: venv.install(own, tmp))

        present = venv.distributions(tmp)
        others = {workspace.normalize(p.name) for p in PACKAGES} - {workspace.normalize(core.name),
                                                                     workspace.normalize(package.name)}
        assert not present & others, f"other workspace packages got installed: {sorted(present & others)}"
        assert workspace.normalize(package.name) in present

        # Run from an empty folder so nothing from the checkout can be imported by accident.
        for name in package.import_names:
            code = f"import {name}; print(getattr({name}, '__version__', ''))"
            version = step(f"import {name}", lambda c=code: venv.run([str(venv.python), "-c", c], tmp)).strip()
            if version:
                assert version.splitlines()[-1] == package.version, f"{name}.__version__ {version!r}"

        # Every module imports with only the declared dependencies (optional extras may be absent:
        # modules must guard those imports). Catches an import the pyproject does not declare.
        for name in package.import_names:
            step(f"import {name}.*", lambda n=name: venv.run([str(venv.python), "-c", IMPORT_ALL.format(n)], tmp))

        for script in package.scripts:
            exe = str(venv.path / "bin" / script)
            help_text = step(f"{script} --help", lambda e=exe: venv.run([e, "--help"], tmp))
            assert script in help_text, f"{script} --help does not name the command:\n{help_text[-1000:]}"
            for sub in LISTING_SUBCOMMANDS:
                if re.search(rf"(^|[\s{{,]){sub}([\s,}}]|$)", help_text):
                    smoke_listing(venv, exe, sub, tmp, step)
                    break

        # The core CLI sees the package through its trainstack.tasks entry point and picks a profile.
        doctor = step("trainstack doctor", lambda: venv.run([str(venv.path / "bin" / "trainstack"), "doctor"], tmp))
        for task in package.tasks:
            assert re.search(rf"^\s*{re.escape(task)}\b", doctor, re.M), f"doctor does not list {task}:\n{doctor}"
    except Exception as exc:  # reported per package by the test below
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(venv.path, ignore_errors=True)
    return outcome


def smoke_listing(venv: Venv, exe: str, sub: str, cwd: Path, step) -> None:
    """`hlbd profiles` or, when the subcommand wants an action, `esm2ae profiles list`."""
    try:
        out = step(f"{Path(exe).name} {sub}", lambda: venv.run([exe, sub], cwd))
    except RuntimeError:
        out = step(f"{Path(exe).name} {sub} list", lambda: venv.run([exe, sub, "list"], cwd))
    assert out.strip(), f"{exe} {sub} printed nothing"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    if importlib.util.find_spec("hatchling") is None:
        pytest.fail("hatchling is not installed: run `python tools/setup_dev.py` (the README's set-up)")
    torch_args, _ = torch_source()
    tmp = tmp_path_factory.mktemp("install-alone")
    wheels = build_wheels(tmp / "wheels")
    uv = find_uv()
    # Two at a time: the work is mostly waiting on disk and first imports, and CI has 2 cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {p.folder: pool.submit(check_package, p, wheels, torch_args, uv, tmp) for p in PACKAGES}
        results = {folder: f.result() for folder, f in futures.items()}
    for outcome in results.values():
        timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in outcome.steps)
        print(f"install-alone {outcome.package}: {timings}")
    return results


@pytest.mark.parametrize("folder", [p.folder for p in PACKAGES])
def test_package_installs_alone_and_runs(outcomes, folder):
    outcome = outcomes[folder]
    assert outcome.error is None, f"{folder}: {outcome.error}"
    assert any(name.endswith("--help") for name, _ in outcome.steps) or not workspace.find(folder).scripts

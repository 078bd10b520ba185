"""Install every workspace package editable, with its dev extras, into the active environment.

    python tools/setup_dev.py            # the README's set-up command
    python tools/setup_dev.py --dry-run  # print the pip commands only

Also installs tools/requirements.txt: the build backend, build and twine (release checks), uv (the
install-alone tests' fresh venvs), ruff at the version CI pins and pytest-xdist (the README's test
command runs two workers).

Torch is special: a torch that is already installed is kept (a CUDA build on a GPU machine stays).
Without one, on a machine with no NVIDIA GPU we install the CPU build `torch==2.13.0` (point pip at
a CPU wheel index or a local wheel, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, so
it never pulls the multi-GB CUDA wheels). Set TRAINSTACK_TORCH_SPEC to choose another spec, e.g. a
CUDA build on a fresh GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_TORCH_SPEC = "torch==2.13.0"


def workspace_packages() -> list[Path]:
    """Core first, so every other package resolves its range against the editable core."""
    found = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
    return sorted(found, key=lambda p: p.name != "core")


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def pip(args: list[str], dry_run: bool) -> None:
    command = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    torch_spec = os.environ.get("TRAINSTACK_TORCH_SPEC")
    if importlib.util.find_spec("torch") is not None:
        print("torch already installed: keeping it")
    elif torch_spec:
        pip([torch_spec], args.dry_run)
    elif has_nvidia_gpu():
        sys.exit("no torch installed on a GPU machine: install the CUDA build you want first, "
                 "or set TRAINSTACK_TORCH_SPEC")
    else:
        pip([CPU_TORCH_SPEC], args.dry_run)

    # Build backends preinstalled so editable installs skip per-package isolated builds; uv makes the
    # fresh venvs of tests/test_install_alone.py fast (one shared cache, hardlinked installs).
    pip(["-r", str(ROOT / "tools" / "requirements.txt")], args.dry_run)
    editable = []
    for package in workspace_packages():
        editable += ["-e", f"{package}[dev]"]
    pip(["--no-build-isolation", *editable], args.dry_run)


if __name__ == "__main__":
    main()

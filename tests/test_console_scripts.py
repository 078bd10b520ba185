"""Every console script of every workspace package installed here answers --help."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import workspace  # noqa: E402

SCRIPTS = [(p, script) for p in workspace.packages() for script in p.scripts]


def installed_version(package: workspace.Package) -> str | None:
    try:
        return importlib.metadata.version(package.name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize(("package", "script"), SCRIPTS, ids=[s for _, s in SCRIPTS])
def test_console_script_answers_help(package, script, tmp_path):
    version = installed_version(package)
    if version is None:
        pytest.skip(f"{package.name} is not installed here (run `python tools/setup_dev.py`)")
    assert version == package.version, f"installed {package.name} {version} is stale: pyproject says {package.version}"
    (entry,) = [e for e in importlib.metadata.distribution(package.name).entry_points
                if e.group == "console_scripts" and e.name == script]
    assert entry.value.replace(" ", "") == package.scripts[script].replace(" ", "")
    exe = Path(sys.executable).parent / script
    assert exe.exists(), f"{exe} missing: the console script was not installed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert script in result.stdout + result.stderr

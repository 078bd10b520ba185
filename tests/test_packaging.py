"""Every package's sdist and wheel is fit for PyPI: built from the working tree and checked as
tools/release.py checks them before a release (tools/dist_check.py), and the checker itself finds
what it is there to find (a missing LICENSE, a big file, a relative README link, a file from outside
the package's folder, metadata twine rejects)."""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import dist_check  # noqa: E402
import workspace  # noqa: E402

PACKAGES = workspace.packages()
IDS = [p.folder for p in PACKAGES]


def build(package: workspace.Package, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-d", str(out)], cwd=package.path, check=True,
                   capture_output=True, text=True)
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    for module in ("hatchling", "twine"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed: run `python tools/setup_dev.py` (the README's set-up)")
    tmp = tmp_path_factory.mktemp("dists")
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = {p.folder: pool.submit(build, p, tmp / p.folder) for p in PACKAGES}
        return {folder: future.result() for folder, future in built.items()}


@pytest.mark.parametrize("package", PACKAGES, ids=IDS)
def test_sdist_and_wheel_are_fit_to_publish(dists, package):
    wheel, sdist = dists[package.folder]
    problems = dist_check.check_dists(package, wheel, sdist)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES, ids=IDS)
def test_the_one_licence_ships_in_both_dists(dists, package):
    licence = (ROOT / "LICENSE").read_bytes()
    assert licence.startswith(b"Apache License\n") or b"Apache License" in licence[:200]
    assert b"Version 2.0, January 2004" in licence[:300]
    assert (package.path / "LICENSE").read_bytes() == licence, f"{package.folder}/LICENSE is not the root LICENSE"
    wheel, sdist = dists[package.folder]
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(name) == licence
    with tarfile.open(sdist) as tf:
        (member,) = [m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/LICENSE")]
        assert tf.extractfile(member).read() == licence


# What needs which core extra: a package using it must ask for it (core installs without them).
CORE_EXTRA_USES = {"metrics": re.compile(r"from trainstack\.metrics import[^\n]*\b(bleu|chrf)\b"),
                   "report": re.compile(r"\btrainstack\.report\b")}


@pytest.mark.parametrize("package", [p for p in PACKAGES if not p.is_core], ids=[p.folder for p in PACKAGES if not p.is_core])
def test_packages_ask_for_the_core_extras_they_use(package):
    from packaging.requirements import Requirement

    source = "\n".join(f.read_text() for f in (package.path / "src").rglob("*.py"))
    used = {extra for extra, pattern in CORE_EXTRA_USES.items() if pattern.search(source)}
    declared = Requirement(package.core_requirement).extras
    assert used <= declared, f"{package.folder} uses {sorted(used)} but asks for {package.core_requirement}"


# ---- the checker finds what it is there to find -------------------------------------------------

def rewrite_wheel(wheel: Path, out: Path, drop: str | None = None, add: dict[str, bytes] | None = None,
                  edit_metadata=None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if drop and item.filename.endswith(drop):
                continue
            data = src.read(item)
            if edit_metadata and item.filename.endswith(".dist-info/METADATA"):
                data = edit_metadata(data.decode()).encode()
            dst.writestr(item, data)
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    return out


@pytest.fixture(scope="module")
def hlbd(dists):
    package = workspace.find("hlbd")
    return package, *dists[package.folder]


def test_checker_finds_a_missing_licence_and_a_big_undeclared_file(hlbd, tmp_path):
    package, wheel, _ = hlbd
    broken = rewrite_wheel(wheel, tmp_path / "a" / wheel.name, drop="licenses/LICENSE",
                           add={"hlbd/profile.dump": b"x" * (101 * 1024), "hlbd/data/big.txt": b"y" * (200 * 1024)})
    problems = dist_check.wheel_problems(broken, package)
    assert any("no LICENSE" in p for p in problems), problems
    assert any("hlbd/profile.dump is 101 KB" in p for p in problems), problems
    assert not any("big.txt" in p for p in problems), "files under <import>/data/ are declared data"


def test_checker_finds_relative_readme_links_and_missing_urls(hlbd, tmp_path):
    package, wheel, _ = hlbd

    def break_metadata(text: str) -> str:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("Project-URL: Issues"))
        return text + "\nSee [the numbers](BENCHMARKS.md) and ![plot](docs/plot.png).\n"

    broken = rewrite_wheel(wheel, tmp_path / "b" / wheel.name, edit_metadata=break_metadata)
    problems = dist_check.wheel_problems(broken, package)
    assert any("['BENCHMARKS.md', 'docs/plot.png'] are relative" in p for p in problems), problems
    assert any("Project-URL Issues is None" in p for p in problems), problems


def test_checker_finds_a_file_from_outside_the_package_folder(hlbd, tmp_path):
    package, _, sdist = hlbd
    broken = tmp_path / "c" / sdist.name
    broken.parent.mkdir()
    with tarfile.open(sdist) as src, tarfile.open(broken, "w:gz") as dst:
        prefix = src.getmembers()[0].name.split("/")[0]
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo(f"{prefix}/conftest.py")  # the repository root's, not the package's
        data = (ROOT / "conftest.py").read_bytes()
        extra.size = len(data)
        dst.addfile(extra, io.BytesIO(data))
    problems = dist_check.sdist_problems(broken, package)
    assert problems == ["hlbd-0.1.0.tar.gz: conftest.py is not a file of packages/hlbd/ (outside the package's folder)"
                        .replace("0.1.0", package.version)], problems


def test_twine_check_failure_is_reported(hlbd, tmp_path):
    _, wheel, _ = hlbd
    broken = rewrite_wheel(wheel, tmp_path / "d" / wheel.name,
                           edit_metadata=lambda t: t.replace("Description-Content-Type: text/markdown",
                                                             "Description-Content-Type: text/x-rst"))
    problems = dist_check.twine_problems([broken])
    assert len(problems) == 1 and "twine check --strict failed" in problems[0], problems


def test_tools_requirements_pin_ruff_and_carry_the_release_tools():
    lines = [line.split("#")[0].strip() for line in (ROOT / "tools" / "requirements.txt").read_text().splitlines()]
    names = {line.split(";")[0].split("=")[0].split(">")[0].strip() for line in lines if line}
    assert {"build", "twine", "hatchling", "packaging", "tomli"} <= names
    assert "pytest-xdist" in names, "the README's test command (-n 2) needs pytest-xdist from the set-up"
    assert any(line.startswith("ruff==") for line in lines), "ruff must be pinned (ruff==X.Y.Z) so lint is reproducible"
    assert any(line.startswith("tomli") and "python_version < \"3.11\"" in line for line in lines)
    assert shutil.which("ruff") or importlib.util.find_spec("ruff"), "ruff not installed: run tools/setup_dev.py"

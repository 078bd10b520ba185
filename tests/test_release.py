"""tools/release.py in a temporary clone: dry run, --write (bump, build, wheel installs), refusals."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import release  # noqa: E402
import workspace  # noqa: E402

DATE = "2030-01-02"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def run_release(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "tools" / "release.py"), *args, "--date", DATE],
                          cwd=repo, capture_output=True, text=True)


@pytest.fixture(params=["hlbd", "core"])
def clone(request, tmp_path: Path) -> tuple[Path, workspace.Package]:
    """A clone of the committed repo with this working tree's tools/, and the package to release.

    hlbd first (the issue's example); core too, so the test means something before hlbd lands."""
    repo = tmp_path / "repo"
    git(ROOT, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(repo))
    if not (repo / "packages" / request.param / "pyproject.toml").is_file():
        pytest.skip(f"packages/{request.param} is not committed yet")
    for script in (ROOT / "tools").glob("*.py"):  # test the tools as they are now, committed or not
        shutil.copy(script, repo / "tools" / script.name)
    package = workspace.find(request.param, repo)
    changelog = package.path / "CHANGELOG.md"
    if not release.UNRELEASED.search(changelog.read_text()) or not release.UNRELEASED.search(
            changelog.read_text()).group(1).strip():
        changelog.write_text("## Unreleased\n\n- An entry for the release test.\n\n" + changelog.read_text())
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "test: current tools")
    return repo, package


def minor(version: str) -> str:
    major, minor_, _ = (int(x) for x in version.split("."))
    return f"{major}.{minor_ + 1}.0"


def test_dry_run_prints_version_changelog_diff_and_tag_and_changes_nothing(clone):
    repo, package = clone
    new = minor(package.version)
    result = run_release(repo, package.folder, "minor")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{package.name}: {package.version} -> {new} (minor), dry run" in out
    assert f"+## {new} - {DATE}" in out and "--- a/" + str((package.path / "CHANGELOG.md").relative_to(repo)) in out
    assert f'+version = "{new}"' in out
    assert f"tag: {package.name}-v{new}" in out
    assert git(repo, "status", "--porcelain") == ""


def test_write_bumps_builds_and_the_wheel_installs_with_the_new_version(clone, tmp_path):
    repo, package = clone
    new = minor(package.version)
    result = run_release(repo, package.folder, "minor", "--write", "--skip-tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"git tag -a {package.name}-v{new}" in result.stdout
    assert f'version = "{new}"' in (package.path / "pyproject.toml").read_text()
    changelog = (package.path / "CHANGELOG.md").read_text()
    assert re.search(rf"^## Unreleased\n\n## {re.escape(new)} - {DATE}\n\n\S", changelog, re.M), changelog
    assert release.UNRELEASED.search(changelog).group(1).strip() == ""

    (wheel,) = (repo / "dist" / f"{package.folder}-{new}").glob("*.whl")
    venv = tmp_path / "venv"
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "--quiet", "--no-deps", "--python", str(venv / "bin" / "python"),
                        str(wheel)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    module = package.import_names[0]
    code = (f"import importlib.metadata as m, {module}; "
            f"print(m.version({package.name!r}), getattr({module}, '__version__', m.version({package.name!r})))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == [new, new]


def test_refuses_a_dirty_package_folder(clone):
    repo, package = clone
    with (package.path / "pyproject.toml").open("a") as f:
        f.write("\n")
    result = run_release(repo, package.folder, "minor")
    assert result.returncode == 1 and "uncommitted changes" in result.stderr


def test_refuses_a_version_already_tagged(clone):
    repo, package = clone
    git(repo, "tag", f"{package.name}-v{minor(package.version)}")
    result = run_release(repo, package.folder, "minor")
    assert result.returncode == 1 and "already exists" in result.stderr


def test_refuses_a_core_range_that_excludes_the_tree_core(clone):
    repo, package = clone
    task = package if not package.is_core else next((p for p in workspace.packages(repo) if not p.is_core), None)
    if task is None:
        pytest.skip("no task package committed yet")
    pyproject = repo / "packages" / "core" / "pyproject.toml"
    pyproject.write_text(re.sub(r'^version = "[^"]+"', 'version = "9.0.0"', pyproject.read_text(), count=1, flags=re.M))
    git(repo, "commit", "--quiet", "-am", "core 9")
    result = run_release(repo, task.folder, "patch")
    assert result.returncode == 1 and "trainstack-core 9.0.0" in result.stderr, result.stderr


def test_write_failure_restores_the_files(clone):
    repo, package = clone
    # A syntax error in one test file makes the package's tests fail; release must put the files back.
    broken = package.path / "tests" / "test_zz_release_broken.py"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text("def test_broken():\n    assert False, 'release must stop here'\n")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "broken test")
    before = (package.path / "pyproject.toml").read_text()
    result = subprocess.run([sys.executable, str(repo / "tools" / "release.py"), package.folder, "patch", "--write",
                             "--date", DATE], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PYTEST_ADDOPTS": "-x -p no:cacheprovider -k test_zz_release_broken"})
    assert result.returncode == 1 and "tests failed" in result.stderr, result.stdout[-2000:] + result.stderr
    assert (package.path / "pyproject.toml").read_text() == before
    assert git(repo, "status", "--porcelain", "--", str(package.path.relative_to(repo))) == ""


@pytest.mark.parametrize(("version", "part", "expected"), [
    ("0.1.0", "patch", "0.1.1"), ("0.1.9", "minor", "0.2.0"), ("1.4.2", "major", "2.0.0")])
def test_bump(version, part, expected):
    assert release.bump(version, part) == expected


def test_bump_refuses_a_prerelease():
    with pytest.raises(release.Refused):
        release.bump("0.2.0rc1", "patch")


def make_package(root: Path, folder: str, name: str, deps: list[str], scripts: dict[str, str]) -> Path:
    module = name.replace("-", "_")
    src = root / "packages" / folder / "src" / module
    (src / "profiles").mkdir(parents=True)
    (src / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (src / "cli.py").write_text("def main():\n    pass\n")
    (src / "profiles" / "cpu.yaml").write_text("requires: {}\n")
    script_lines = "".join(f'{k} = "{v}"\n' for k, v in scripts.items())
    (src.parents[1] / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "0.1.0"\ndependencies = {deps!r}\n'
        f"[project.scripts]\n{script_lines}"
        f'[tool.hatch.build.targets.wheel]\npackages = ["src/{module}"]\n'.replace("'", '"'))
    return src.parents[1]


def test_check_wheel_finds_a_missing_profile_and_a_bad_core_range(tmp_path):
    make_package(tmp_path, "core", "trainstack-core", [], {"trainstack": "trainstack_core.cli:main"})
    path = make_package(tmp_path, "demo", "demo", ["trainstack-core>=0.1,<0.2"], {"demo": "demo.cli:main"})
    core, demo = workspace.find("core", tmp_path), workspace.find("demo", tmp_path)
    wheel, _ = release.build(demo, tmp_path / "dist")
    assert release.check_wheel(wheel, demo, "0.1.0", core) == []

    stripped = tmp_path / "stripped" / wheel.name
    stripped.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("cpu.yaml"):
                dst.writestr(item, src.read(item))
    assert "demo/profiles/cpu.yaml is not in the wheel" in release.check_wheel(stripped, demo, "0.1.0", core)
    assert any("metadata Version" in p for p in release.check_wheel(wheel, demo, "0.2.0", core))

    core.version = "0.2.0"  # the tree's core moved past the wheel's range
    assert any("excludes trainstack-core 0.2.0" in p for p in release.check_wheel(wheel, demo, "0.1.0", core))
    assert path.is_dir()

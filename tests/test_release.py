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


# ---- core's version policy, tags, release notes, the lowest core -----------------------------------

@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clone of the committed repo with this working tree's tools/, committed; no tags."""
    repo = tmp_path / "repo"
    git(ROOT, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(repo))
    for script in (ROOT / "tools").iterdir():
        if script.is_file():
            shutil.copy(script, repo / "tools" / script.name)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "test: current tools")
    return repo


def core_range_excluded(repo: Path, version: str) -> list[str]:
    from packaging.requirements import Requirement

    return [p.folder for p in workspace.packages(repo) if not p.is_core
            and not Requirement(p.core_requirement).specifier.contains(version, prereleases=True)]


def next_core_minor(repo: Path) -> tuple[str, list[str]]:
    """Core's next minor version and the packages whose range excludes it (skips when none does)."""
    new = minor(workspace.find("core", repo).version)
    excluded = core_range_excluded(repo, new)
    if not excluded:
        pytest.skip(f"every package's range already allows core {new}")
    return new, excluded


def test_core_minor_widens_the_ranges_it_would_leave(repo):
    new, excluded = next_core_minor(repo)
    dry = run_release(repo, "core", "minor")
    assert dry.returncode == 0, dry.stderr
    for folder in excluded:
        assert f"+++ b/packages/{folder}/pyproject.toml" in dry.stdout
        assert f"release it next: python tools/release.py {folder} patch" in dry.stdout
    assert git(repo, "status", "--porcelain") == ""

    result = run_release(repo, "core", "minor", "--write", "--skip-tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert core_range_excluded(repo, new) == [], "a package's range still excludes the new core"
    for folder in excluded:
        package = workspace.find(folder, repo)
        assert package.core_requirement.endswith(f",<{release.next_breaking(new)}")
        unreleased = release.UNRELEASED.search((package.path / "CHANGELOG.md").read_text()).group(1)
        assert f"Allows trainstack-core {new}" in unreleased
        assert f"packages/{folder}" in result.stdout.split("git commit", 1)[1].splitlines()[0]


def test_core_minor_with_keep_ranges_only_names_them(repo):
    _, excluded = next_core_minor(repo)
    result = run_release(repo, "core", "minor", "--keep-ranges")
    assert result.returncode == 0, result.stderr
    for folder in excluded:
        assert f"note: {workspace.find(folder, repo).name} needs" in result.stdout
        assert f"b/packages/{folder}/pyproject.toml" not in result.stdout


@pytest.mark.parametrize(("line", "core", "expected"), [
    ("trainstack-core[metrics]>=0.1,<0.2", "0.2.0", "trainstack-core[metrics]>=0.1,<0.3"),
    ("trainstack-core~=0.1.0", "0.2.0", "trainstack-core>=0.1.0,<0.3"),
    ("trainstack-core>=0.9,<0.10", "1.0.0", "trainstack-core>=0.9,<2"),
    ("trainstack-core>=1.2,!=1.3.0,<2", "2.0.0", "trainstack-core>=1.2,!=1.3.0,<3"),
])
def test_widened_core_requirement_keeps_the_lower_bound(line, core, expected):
    assert release.widened_core_requirement(line, core) == expected


def test_tag_check_refuses_a_tag_that_is_not_the_version_and_builds_one_that_is(repo, tmp_path):
    hlbd = workspace.find("hlbd", repo)
    wrong = run_release(repo, "--tag", f"hlbd-v{minor(hlbd.version)}", "--check")
    assert wrong.returncode == 1 and f"has version {hlbd.version}" in wrong.stderr
    unknown = run_release(repo, "--tag", "nothing-v1.0.0", "--check")
    assert unknown.returncode == 1 and "names no package" in unknown.stderr
    out = tmp_path / "github_output"
    ok = run_release(repo, "--tag", f"hlbd-v{hlbd.version}", "--check", "--github-output", str(out))
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr
    fields = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert fields == {"folder": "hlbd", "name": "hlbd", "version": hlbd.version, "prerelease": "false",
                      "dist": f"dist/hlbd-{hlbd.version}"}
    assert sorted(p.suffix for p in (repo / fields["dist"]).iterdir()) == [".gz", ".whl"]


@pytest.mark.parametrize(("version", "expected"), [
    ("0.2.0", False), ("0.2.0a1", True), ("0.2.0b2", True), ("0.2.0rc1", True), ("0.2.0.dev3", True),
    ("1.0.0.post1", False)])
def test_prereleases_go_to_testpypi(version, expected):
    assert release.is_prerelease(version) is expected


def test_release_notes_are_the_versions_changelog_section(repo):
    notes = [sys.executable, str(repo / "tools" / "release_notes.py")]
    hlbd = workspace.find("hlbd", repo)
    changelog = hlbd.path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## Unreleased\n\n- Tomorrow's change.\n\n## 0.1.0 - 2030-01-01\n\n"
                         "- First release.\n  Two lines.\n\n## 0.0.1 - 2029-01-01\n\n- Older.\n")
    out = subprocess.run([*notes, "--tag", "hlbd-v0.1.0"], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("- First release.\n  Two lines.\n\nFull changelog: ")
    assert "Older" not in out.stdout and "Tomorrow" not in out.stdout
    missing = subprocess.run([*notes, "hlbd", "0.9.0"], capture_output=True, text=True, cwd=repo)
    assert missing.returncode == 1 and "no '## 0.9.0' section" in missing.stderr


def test_lowest_core_is_the_oldest_release_the_range_allows(repo, tmp_path):
    script = [sys.executable, str(repo / "tools" / "lowest_core.py")]
    core = workspace.find("core", repo)
    first = subprocess.run([*script, "hlbd"], capture_output=True, text=True, cwd=repo)
    assert first.returncode == 0 and f"lowest core {core.version} (the tree's core)" in first.stdout

    git(repo, "tag", f"trainstack-core-v{core.version}")
    new = minor(core.version)
    bumped = run_release(repo, "core", "minor", "--write", "--skip-tests")
    assert bumped.returncode == 0, bumped.stdout[-2000:] + bumped.stderr
    git(repo, "commit", "--quiet", "-am", f"core {new}")
    out = tmp_path / "github_output"
    lowest = subprocess.run([*script, "hlbd", "--extract", str(tmp_path / "lowest"), "--github-output", str(out)],
                            capture_output=True, text=True, cwd=repo)
    assert lowest.returncode == 0, lowest.stderr
    fields = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert fields["version"] == core.version and fields["in_tree"] == "false"
    extracted = workspace.load(Path(fields["path"]), repo)
    assert extracted.name == "trainstack-core" and extracted.version == core.version

"""tools/ci_matrix.py: the packages a change asks CI to test, from a real git history."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "ci_matrix.py"
FOLDERS = {"core": "trainstack-core", "hlbd": "hlbd", "mt-nllb": "mt-nllb"}


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                           env=env).stdout.strip()


def run_matrix(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small workspace: root config, core, two task packages, tools, docs; one commit on main."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ws"\nversion = "0"\n')
    (tmp_path / "README.md").write_text("# ws\n")
    (tmp_path / "conftest.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "core-api.md").write_text("api\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "release.py").write_text("")
    (tmp_path / "tools" / "setup_dev.py").write_text("")
    for folder, name in FOLDERS.items():
        src = tmp_path / "packages" / folder / "src" / name.replace("-", "_")
        src.mkdir(parents=True)
        (src / "__init__.py").write_text("")
        (src.parents[1] / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1.0"\n')
        (src.parents[1] / "README.md").write_text(f"# {name}\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def change(repo: Path, *paths: str) -> list[str]:
    """Commit a change to these paths on a branch; the matrix of that branch against main."""
    git(repo, "checkout", "-q", "-b", "work")
    for path in paths:
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as f:
            f.write("# changed\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "change")
    return run_matrix("--root", str(repo), "--base", "main")


def test_change_under_one_package_tests_only_that_package(repo):
    assert change(repo, "packages/hlbd/src/hlbd/__init__.py") == ["hlbd"]


def test_change_under_core_tests_every_package(repo):
    assert change(repo, "packages/core/src/trainstack_core/__init__.py") == ["core", "hlbd", "mt-nllb", "tools"]


def test_dependency_change_also_runs_the_install_alone_tests(repo):
    assert change(repo, "packages/hlbd/pyproject.toml") == ["hlbd", "tools"]


def test_readme_only_tests_nothing(repo):
    assert change(repo, "README.md", "docs/core-api.md", "packages/hlbd/README.md") == []


def test_tools_only_tests_the_tools(repo):
    assert change(repo, "tools/release.py", "tests/test_release.py") == ["tools"]


@pytest.mark.parametrize("path", ["pyproject.toml", "conftest.py", "tools/setup_dev.py", ".ci/run",
                                  ".github/workflows/ci.yml"])
def test_root_config_tests_everything(repo, path):
    assert change(repo, path) == ["core", "hlbd", "mt-nllb", "tools"]


def test_two_packages_and_docs(repo):
    assert change(repo, "packages/mt-nllb/src/mt_nllb/x.py", "packages/hlbd/tests/test_x.py",
                  "README.md") == ["hlbd", "mt-nllb"]


def test_working_tree_counts_uncommitted_and_untracked(repo):
    (repo / "packages" / "mt-nllb" / "src" / "mt_nllb" / "new.py").write_text("")
    assert run_matrix("--root", str(repo), "--base", "HEAD") == []
    assert run_matrix("--root", str(repo), "--base", "HEAD", "--working-tree") == ["mt-nllb"]


def test_no_base_tests_everything(repo):
    everything = ["core", "hlbd", "mt-nllb", "tools"]
    assert run_matrix("--root", str(repo), "--base", "0" * 40) == everything


def test_files_injection_and_github_output_on_the_real_workspace(tmp_path):
    folders = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))
    some = next(f for f in folders if f != "core")
    out = tmp_path / "github_output"
    assert run_matrix("--files", f"packages/{some}/README.md", f"packages/{some}/src/x.py",
                      "--github-output", str(out)) == [some]
    assert out.read_text() == f'packages=["{some}"]\n'
    assert run_matrix("--files", f"packages/{some}/pyproject.toml") == [some, "tools"]
    everything = run_matrix("--files", "packages/core/pyproject.toml")
    assert everything[0] == "core" and everything[-1] == "tools"
    assert sorted(everything[:-1]) == folders

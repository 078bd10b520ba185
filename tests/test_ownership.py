"""Each package is owned and releasable alone: a CODEOWNERS line, an "Owners and release" README section."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import workspace  # noqa: E402

PACKAGES = workspace.packages()


@pytest.mark.parametrize("package", PACKAGES, ids=[p.folder for p in PACKAGES])
def test_codeowners_names_one_team_for_the_folder(package):
    lines = [line.split() for line in (ROOT / "CODEOWNERS").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    owners = [rest for path, *rest in lines if path.strip("/") == f"packages/{package.folder}"]
    assert len(owners) == 1 and len(owners[0]) == 1, f"CODEOWNERS: want one line, one team for packages/{package.folder}/"


@pytest.mark.parametrize("package", PACKAGES, ids=[p.folder for p in PACKAGES])
def test_readme_says_owners_and_release(package):
    readme = (package.path / "README.md").read_text()
    assert "## Owners and release" in readme, f"{package.folder}/README.md lacks an 'Owners and release' section"


@pytest.mark.parametrize("package", PACKAGES, ids=[p.folder for p in PACKAGES])
def test_package_is_versioned_for_release_alone(package):
    assert (package.path / "CHANGELOG.md").read_text().lstrip().count("## Unreleased") == 1
    if not package.is_core:
        assert package.core_requirement, f"{package.folder}: no range on {workspace.CORE_DIST}"
        assert any(ch in package.core_requirement for ch in "<~="), f"{package.folder}: core must be a range"


def codeowner(path: str) -> list[str]:
    """The owners GitHub gives ``path`` (the last matching line wins) for the patterns CODEOWNERS uses:
    "*", "/dir/" anchored at the root, "dir/" anywhere."""
    owners: list[str] = []
    for line in (ROOT / "CODEOWNERS").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, *names = line.split()
        if pattern == "*":
            matched = True
        elif pattern.startswith("/") and pattern.endswith("/"):
            matched = path.startswith(pattern[1:])
        elif pattern.endswith("/"):
            matched = f"/{pattern}" in f"/{path}"
        else:
            matched = path == pattern.lstrip("/")
        if matched:
            owners = names
    return owners


@pytest.mark.parametrize("path", [".github/workflows/publish.yml", ".ci/run", "pyproject.toml", "README.md",
                                  "LICENSE", "conftest.py", "tools/release.py"])
def test_root_files_ci_and_workflows_have_an_owner(path):
    assert codeowner(path) == ["@trainstack/core"], f"CODEOWNERS gives {path} to {codeowner(path)}"


def test_package_folders_keep_their_own_team():
    for package in PACKAGES:
        assert codeowner(f"packages/{package.folder}/pyproject.toml") == [f"@trainstack/{package.folder}"]

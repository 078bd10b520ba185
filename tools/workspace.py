"""The workspace's packages as data, read from packages/*/pyproject.toml (shared by tools/ and tests/).

Nothing here imports a workspace package: it only reads files, so it works before anything is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_DIR = ROOT / "packages"
CORE_FOLDER = "core"
CORE_DIST = "trainstack-core"
REPOSITORY_URL = "https://github.com/trainstack/trainstack"


@dataclass
class Package:
    folder: str  # packages/<folder>
    path: Path
    name: str  # distribution name
    version: str
    import_names: list[str]
    scripts: dict[str, str]  # console script -> "module:function"
    tasks: dict[str, str] = field(default_factory=dict)  # trainstack.tasks entry points
    dependencies: list[str] = field(default_factory=list)

    @property
    def is_core(self) -> bool:
        return self.name == CORE_DIST

    @property
    def core_requirement(self) -> str | None:
        """The dependency line on trainstack-core, e.g. "trainstack-core>=0.1,<0.2", or None."""
        for line in self.dependencies:
            if normalize(re.split(r"[\s<>=!~;\[(]", line, maxsplit=1)[0]) == CORE_DIST:
                return line
        return None

    @property
    def tag_prefix(self) -> str:
        return f"{self.name}-v"

    def init_files(self) -> list[Path]:
        return [f for name in self.import_names if (f := self.path / "src" / name / "__init__.py").is_file()]


def normalize(name: str) -> str:
    """PEP 503 name normalization: trainstack_core, Trainstack.Core -> trainstack-core."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load(path: Path, root: Path = ROOT) -> Package:
    data = tomllib.loads((path / "pyproject.toml").read_text())
    project = data["project"]
    if "version" not in project:
        raise ValueError(f"{path / 'pyproject.toml'}: [project] version must be static")
    wheel = data.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    imports = [Path(p).name for p in wheel.get("packages", [])] or [project["name"].replace("-", "_")]
    return Package(
        folder=path.name,
        path=path,
        name=project["name"],
        version=project["version"],
        import_names=imports,
        scripts=dict(project.get("scripts", {})),
        tasks=dict(project.get("entry-points", {}).get("trainstack.tasks", {})),
        dependencies=list(project.get("dependencies", [])),
    )


def packages(root: Path = ROOT) -> list[Package]:
    """Every package under packages/ that has a pyproject.toml; core first, then by folder."""
    found = [load(p.parent, root) for p in sorted((root / "packages").glob("*/pyproject.toml"))]
    return sorted(found, key=lambda p: (not p.is_core, p.folder))


def find(name: str, root: Path = ROOT) -> Package:
    """A package by folder name (mt-nllb) or distribution name (trainstack-core, mt_nllb)."""
    all_packages = packages(root)
    for package in all_packages:
        if name == package.folder or normalize(name) == normalize(package.name):
            return package
    known = ", ".join(f"{p.folder} ({p.name})" for p in all_packages)
    raise SystemExit(f"no package {name!r} under {root / 'packages'}; known: {known}")

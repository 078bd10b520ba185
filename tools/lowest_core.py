"""The lowest trainstack-core a package's range allows, so CI can test the package against it too.

    python tools/lowest_core.py hlbd                          # prints e.g. "0.1.0 (tag trainstack-core-v0.1.0)"
    python tools/lowest_core.py hlbd --extract DIR --github-output "$GITHUB_OUTPUT"

The candidates are the released cores (git tags trainstack-core-vX.Y.Z) and the core in the tree;
the lowest one inside the package's range wins. When that is the tree's core, the ordinary test job
already covers it (in_tree=true). Otherwise --extract writes that tag's packages/core into DIR
(git archive) and prints its path, for `pip install DIR` in place of the tree's core. The package's
range must allow the tree's core (tools/release.py refuses a release otherwise), so there always is one.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workspace  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import InvalidVersion, Version  # noqa: E402

CORE_TAG_PREFIX = f"{workspace.CORE_DIST}-v"


def released_cores(root: Path) -> dict[Version, str]:
    """Released core versions from the repository's tags: version -> tag."""
    out = subprocess.run(["git", "-C", str(root), "tag", "--list", f"{CORE_TAG_PREFIX}*"],
                         check=True, capture_output=True, text=True).stdout
    found = {}
    for tag in out.split():
        try:
            found[Version(tag[len(CORE_TAG_PREFIX):])] = tag
        except InvalidVersion:
            continue  # not a release tag
    return found


def lowest_core(package: workspace.Package, root: Path) -> tuple[Version, str | None]:
    """(version, tag), tag None when the lowest allowed core is the one in the tree."""
    line = package.core_requirement
    if line is None:
        raise SystemExit(f"{package.folder}: no dependency on {workspace.CORE_DIST}")
    spec = Requirement(line).specifier
    tree = Version(workspace.find(workspace.CORE_FOLDER, root).version)
    candidates: dict[Version, str | None] = {v: tag for v, tag in released_cores(root).items() if v != tree}
    candidates[tree] = None
    allowed = sorted(v for v in candidates if spec.contains(v, prereleases=True))
    if not allowed:
        raise SystemExit(f"{package.folder}: {line} allows neither the tree's core {tree} nor a released one")
    return allowed[0], candidates[allowed[0]]


def extract_core(tag: str, root: Path, dest: Path) -> Path:
    """packages/core as of ``tag``, written under ``dest``; the path to pip install."""
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", tag, f"packages/{workspace.CORE_FOLDER}"],
                             check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        # The "data" filter (no absolute paths, links out, devices) where this Python has it (3.10.12+).
        tf.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest / "packages" / workspace.CORE_FOLDER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="folder under packages/ or distribution name")
    parser.add_argument("--extract", type=Path, help="write that core's source here when it is not the tree's")
    parser.add_argument("--github-output", type=Path, help="append version=, in_tree= and path= to this file")
    parser.add_argument("--root", type=Path, default=workspace.ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    package = workspace.find(args.package, root)
    version, tag = lowest_core(package, root)
    path = root / "packages" / workspace.CORE_FOLDER
    if tag is not None and args.extract:
        path = extract_core(tag, root, args.extract.resolve())
    where = "the tree's core" if tag is None else f"tag {tag}"
    print(f"{package.name} ({package.core_requirement}): lowest core {version} ({where}), source {path}")
    if args.github_output:
        with args.github_output.open("a") as f:
            f.write(f"version={version}\nin_tree={str(tag is None).lower()}\npath={path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

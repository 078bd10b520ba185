"""Which packages a change needs tested, as a JSON list for a CI matrix.

    python tools/ci_matrix.py                        # changes on this branch since origin/main (or HEAD~1)
    python tools/ci_matrix.py --base "$BASE_SHA"     # git diff BASE...HEAD
    python tools/ci_matrix.py --working-tree         # ... plus uncommitted and untracked files
    python tools/ci_matrix.py --files packages/hlbd/src/hlbd/cli.py README.md
    python tools/ci_matrix.py --github-output "$GITHUB_OUTPUT"   # also writes packages=<json>

Rules, per changed file (the result is the union):
- packages/core/** (code, not docs), root config (pyproject.toml, conftest.py, .ci/, .github/,
  tools/setup_dev.py, tools/workspace.py) or an unknown root file: every package, plus "tools".
- packages/<folder>/** : that package; packages/<folder>/pyproject.toml (its dependencies) also
  "tools", whose tests/ install every package alone from its wheel (tests/test_install_alone.py).
- *.md anywhere, docs/, CODEOWNERS, .gitignore: nothing (docs-only changes test none).
- tools/** and tests/** (cross-package tests): "tools", the job that runs tests/.
Output: a JSON list such as ["hlbd"], core first, "tools" last; [] means nothing to test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workspace  # noqa: E402

TOOLS = "tools"
# Root files whose change can break every package's set-up or tests.
ALL_TRIGGERS = {"pyproject.toml", "conftest.py", "tools/setup_dev.py", "tools/workspace.py"}
ALL_TRIGGER_DIRS = (".ci/", ".github/")
DOCS_ONLY = {"CODEOWNERS", ".gitignore", "LICENSE"}


def git(root: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def rev_exists(root: Path, rev: str) -> bool:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True).returncode == 0


def default_base(root: Path) -> str | None:
    for rev in ("origin/main", "HEAD~1"):
        if rev_exists(root, rev):
            return rev
    return None


def changed_files(root: Path, base: str | None, working_tree: bool) -> list[str] | None:
    """Changed paths relative to the repo root; None when there is no base to compare with."""
    if base is None or set(base) == {"0"} or not rev_exists(root, base):
        return None  # a new branch, a first commit or a shallow clone: test everything
    files = git(root, "diff", "--name-only", f"{base}...HEAD")
    if working_tree:
        files += git(root, "diff", "--name-only", "HEAD")
        files += git(root, "ls-files", "--others", "--exclude-standard")
    return sorted(set(files))


def classify(path: str, folders: set[str]) -> set[str] | str:
    """"all", or the set of matrix entries one changed file asks for."""
    p = PurePosixPath(path)
    if p.suffix.lower() in {".md", ".rst"} or p.parts[0] == "docs" or path in DOCS_ONLY:
        return set()
    if path in ALL_TRIGGERS or path.startswith(ALL_TRIGGER_DIRS):
        return "all"
    if p.parts[0] == "packages" and len(p.parts) >= 2:
        folder = p.parts[1]
        if folder == workspace.CORE_FOLDER:
            return "all"
        if folder not in folders:
            return set()  # a removed package has nothing to test
        # A dependency change can break `pip install <package>` alone: run the install-alone tests too.
        return {folder, TOOLS} if p.parts[2:] == ("pyproject.toml",) else {folder}
    if p.parts[0] in ("tools", "tests"):
        return {TOOLS}
    if len(p.parts) > 1 and p.parts[0].startswith("."):
        return set()  # tool caches and local folders (.whl/, .hatch/) are not shipped
    return "all"  # an unknown root file: be safe


def matrix(files: list[str] | None, root: Path = workspace.ROOT) -> list[str]:
    folders = [p.folder for p in workspace.packages(root)]
    wanted: set[str] = set()
    for path in files if files is not None else ["pyproject.toml"]:
        entries = classify(path, set(folders))
        if entries == "all":
            return [*folders, TOOLS]
        wanted |= entries
    return [f for f in folders if f in wanted] + ([TOOLS] if TOOLS in wanted else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="compare BASE...HEAD (default: origin/main, else HEAD~1)")
    parser.add_argument("--working-tree", action="store_true", help="also count uncommitted and untracked files")
    parser.add_argument("--files", nargs="*", help="use these paths instead of asking git")
    parser.add_argument("--root", type=Path, default=workspace.ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--github-output", type=Path, help="append packages=<json> to this file")
    parser.add_argument("--verbose", action="store_true", help="print the changed files on stderr")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    if args.files is not None:
        files = args.files
    else:
        files = changed_files(root, args.base or default_base(root), args.working_tree)
    if args.verbose:
        print("changed files:", "(no base: testing everything)" if files is None else files, file=sys.stderr)
    result = json.dumps(matrix(files, root))
    print(result)
    if args.github_output:
        with args.github_output.open("a") as out:
            out.write(f"packages={result}\n")


if __name__ == "__main__":
    main()

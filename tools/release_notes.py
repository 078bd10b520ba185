"""A release's notes: the package's CHANGELOG section for that version, as markdown on stdout.

    python tools/release_notes.py hlbd 0.2.0             # the "## 0.2.0 - DATE" section of packages/hlbd/CHANGELOG.md
    python tools/release_notes.py --tag hlbd-v0.2.0      # the same, from the tag the publish workflow runs on

Exits 1 with one line when the CHANGELOG has no section for the version (tools/release.py --write
turns the Unreleased section into it), so a release is never published without its notes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workspace  # noqa: E402


def section(changelog: str, version: str) -> str | None:
    """The body under "## VERSION" or "## VERSION - DATE", up to the next "## " heading; None if absent."""
    heading = re.compile(rf"^## {re.escape(version)}(?:[ \t]+-[ \t]+\S.*)?[ \t]*\n", re.M)
    match = heading.search(changelog)
    if match is None:
        return None
    end = re.compile(r"^## ", re.M).search(changelog, match.end())
    return changelog[match.end():end.start() if end else len(changelog)].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", help="folder under packages/ or distribution name")
    parser.add_argument("version", nargs="?")
    parser.add_argument("--tag", help="NAME-vX.Y.Z instead of PACKAGE VERSION")
    parser.add_argument("--root", type=Path, default=workspace.ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.tag:
        if args.package or args.version:
            parser.error("give --tag or PACKAGE VERSION, not both")
        match = [p for p in workspace.packages(root) if args.tag.startswith(p.tag_prefix)]
        if not match:
            print(f"error: tag {args.tag} names no package (tags look like NAME-vX.Y.Z)", file=sys.stderr)
            return 1
        package, version = match[0], args.tag[len(match[0].tag_prefix):]
    elif args.package and args.version:
        package, version = workspace.find(args.package, root), args.version
    else:
        parser.error("give PACKAGE VERSION or --tag NAME-vX.Y.Z")
    changelog = package.path / "CHANGELOG.md"
    body = section(changelog.read_text(encoding="utf-8"), version) if changelog.is_file() else None
    if not body:
        print(f"error: {changelog.relative_to(root)} has no '## {version}' section with entries "
              f"(python tools/release.py {package.folder} ... --write dates the Unreleased section)", file=sys.stderr)
        return 1
    url = f"{workspace.REPOSITORY_URL}/blob/{package.tag_prefix}{version}/packages/{package.folder}/CHANGELOG.md"
    print(f"{body}\n\nFull changelog: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

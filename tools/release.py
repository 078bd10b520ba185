"""Release one package: bump its version, date its changelog, test, build, check the wheel, print the tag.

    python tools/release.py hlbd minor            # dry run: planned version, changelog diff, tag
    python tools/release.py hlbd minor --write    # change files, run tests, build sdist + wheel, check
    python tools/release.py trainstack-core patch --write
    python tools/release.py hlbd --check          # CI: build the current version and check the wheel only

PACKAGE is the folder under packages/ (core, hlbd, mt-nllb...) or the distribution name. Refuses a
package folder with uncommitted changes, a version that is already tagged, an empty Unreleased
section, and a package whose range on trainstack-core excludes the core version in the tree.
It never commits, tags or pushes: with --write it prints those commands for you to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workspace  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

PARTS = ("major", "minor", "patch")
UNRELEASED = re.compile(r"^## Unreleased[ \t]*\n(.*?)(?=^## |\Z)", re.M | re.S)
PROJECT_VERSION = re.compile(r'^(version\s*=\s*)"([^"]+)"', re.M)
INIT_VERSION = re.compile(r'^(__version__\s*=\s*)["\']([^"\']+)["\']', re.M)


class Refused(Exception):
    """A reason not to release, printed as one line."""


def bump(version: str, part: str) -> str:
    v = Version(version)
    if v.pre or v.post or v.dev or v.local or len(v.release) != 3:
        raise Refused(f"version {version} is not plain X.Y.Z; set it by hand")
    major, minor, patch = v.release
    return {"major": f"{major + 1}.0.0", "minor": f"{major}.{minor + 1}.0", "patch": f"{major}.{minor}.{patch + 1}"}[part]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def new_changelog(text: str, version: str, date: str, path: Path) -> str:
    match = UNRELEASED.search(text)
    if not match:
        raise Refused(f"{path}: no '## Unreleased' section")
    body = match.group(1).strip("\n")
    if not body.strip():
        raise Refused(f"{path}: the Unreleased section is empty: nothing to release")
    rest = text[match.end():]
    released = f"## Unreleased\n\n## {version} - {date}\n\n{body}\n" + ("\n" if rest else "")
    return text[: match.start()] + released + rest


def replace_version(text: str, pattern: re.Pattern, version: str, path: Path) -> str:
    new, count = pattern.subn(lambda m: f'{m.group(1)}"{version}"', text, count=1)
    if count != 1:
        raise Refused(f"{path}: no static version line to bump")
    return new


def core_check(package: workspace.Package, core: workspace.Package, root: Path) -> str:
    """The package's range on core, which must include the core version in the tree."""
    line = package.core_requirement
    if line is None:
        raise Refused(f"{package.path.relative_to(root)}/pyproject.toml: no dependency on {workspace.CORE_DIST}")
    spec = Requirement(line).specifier
    if not str(spec):
        raise Refused(f"{package.name}: {workspace.CORE_DIST} has no version range (write e.g. '>=0.1,<0.2')")
    if not spec.contains(core.version, prereleases=True):
        raise Refused(f"{package.name} needs {line} but the tree has {workspace.CORE_DIST} {core.version}")
    return line


def plan(package: workspace.Package, part: str, date: str, root: Path) -> tuple[str, dict[Path, tuple[str, str]]]:
    """The new version and, per file to change, (old text, new text); raises Refused."""
    rel = package.path.relative_to(root)
    dirty = git(root, "status", "--porcelain", "--", str(rel))
    if dirty.strip():
        raise Refused(f"{rel} has uncommitted changes; commit or stash them first:\n{dirty.rstrip()}")
    version = bump(package.version, part)
    tag = f"{package.tag_prefix}{version}"
    if git(root, "tag", "--list", tag).strip():
        raise Refused(f"tag {tag} already exists")
    changes: dict[Path, tuple[str, str]] = {}
    pyproject = package.path / "pyproject.toml"
    text = pyproject.read_text()
    changes[pyproject] = (text, replace_version(text, PROJECT_VERSION, version, pyproject))
    for init in package.init_files():
        text = init.read_text()
        if INIT_VERSION.search(text):
            changes[init] = (text, replace_version(text, INIT_VERSION, version, init))
    changelog = package.path / "CHANGELOG.md"
    if not changelog.is_file():
        raise Refused(f"{changelog.relative_to(root)} is missing")
    text = changelog.read_text()
    changes[changelog] = (text, new_changelog(text, version, date, changelog.relative_to(root)))
    return version, changes


def diff(changes: dict[Path, tuple[str, str]], root: Path) -> str:
    out = []
    for path, (old, new) in changes.items():
        rel = str(path.relative_to(root))
        out += difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                    f"a/{rel}", f"b/{rel}")
    return "".join(out)


def build(package: workspace.Package, out: Path) -> tuple[Path, Path]:
    """sdist and wheel with hatchling in this environment (offline; the build backend is a dev dependency)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if importlib.util.find_spec("hatchling") is not None:
        command = [sys.executable, "-m", "hatchling", "build", "-d", str(out)]
    elif shutil.which("hatch"):
        command = ["hatch", "build", str(out)]
    else:
        raise Refused("neither hatchling nor hatch is installed: run `python tools/setup_dev.py`")
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=package.path, check=True)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise Refused(f"expected one wheel and one sdist in {out}, found {[p.name for p in out.iterdir()]}")
    return wheels[0], sdists[0]


def check_wheel(wheel: Path, package: workspace.Package, version: str, core: workspace.Package) -> list[str]:
    """What the wheel must hold; returns the findings, one line each (empty when all is well)."""
    problems = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in names else ""
    fields: dict[str, list[str]] = {}
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if workspace.normalize(fields.get("Name", [""])[0]) != workspace.normalize(package.name):
        problems.append(f"metadata Name is {fields.get('Name')}, expected {package.name}")
    if fields.get("Version", [""])[0] != version:
        problems.append(f"metadata Version is {fields.get('Version')}, expected {version}")
    if not package.is_core:
        core_reqs = [Requirement(r) for r in fields.get("Requires-Dist", [])
                     if workspace.normalize(Requirement(r).name) == workspace.CORE_DIST and not Requirement(r).marker]
        if not core_reqs:
            problems.append(f"Requires-Dist has no {workspace.CORE_DIST}")
        elif not all(str(r.specifier) and r.specifier.contains(core.version, prereleases=True) for r in core_reqs):
            problems.append(f"Requires-Dist {[str(r) for r in core_reqs]} excludes {workspace.CORE_DIST} {core.version}")
    for script, target in package.scripts.items():
        if not re.search(rf"^{re.escape(script)}\s*=\s*{re.escape(target)}\s*$", entry_points, re.M):
            problems.append(f"console script {script} = {target} missing from entry_points.txt")
    # Every file under src/<import>/ ships: profiles, configs, data samples, not only Python.
    for name in package.import_names:
        src = package.path / "src" / name
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                inside = f"{name}/{path.relative_to(src).as_posix()}"
                if inside not in names:
                    problems.append(f"{inside} is not in the wheel")
        if not any(n.startswith(f"{name}/") and n.endswith((".yaml", ".yml", ".json")) for n in names) and (
                package.tasks or any(src.rglob("*.yaml"))):
            problems.append(f"no profile or config file under {name}/ in the wheel")
    return problems


def check_current(package: workspace.Package, core: workspace.Package, root: Path) -> int:
    try:
        wheel, sdist = build(package, root / "dist" / f"{package.folder}-{package.version}")
        problems = check_wheel(wheel, package, package.version, core)
    except (Refused, subprocess.CalledProcessError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"{wheel.name} is not releasable:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"wheel checked: {wheel.relative_to(root)} and {sdist.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="folder under packages/ or distribution name")
    parser.add_argument("part", nargs="?", choices=PARTS, default="patch", help="which part to bump (patch)")
    parser.add_argument("--write", action="store_true", help="change files, test, build and check (default: dry run)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the package's tests (not for a real release)")
    parser.add_argument("--check", action="store_true",
                        help="build and check the current version only: no bump, no tests, no tree checks")
    parser.add_argument("--date", help="release date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--root", type=Path, default=workspace.ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    root = args.root.resolve()
    date = args.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    package = workspace.find(args.package, root)
    core = workspace.find(workspace.CORE_FOLDER, root)
    rel = package.path.relative_to(root)
    if args.check:
        return check_current(package, core, root)
    try:
        if not package.is_core:
            core_line = core_check(package, core, root)
            print(f"core range: {core_line} includes {workspace.CORE_DIST} {core.version} in the tree")
        version, changes = plan(package, args.part, date, root)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    tag = f"{package.tag_prefix}{version}"
    test_command = [sys.executable, "-m", "pytest", "-q", str(rel / "tests")]

    print(f"{package.name}: {package.version} -> {version} ({args.part}), {'WRITE' if args.write else 'dry run'}")
    print(diff(changes, root), end="")
    if package.is_core:
        for other in workspace.packages(root):
            line = other.core_requirement
            if line and not Requirement(line).specifier.contains(version, prereleases=True):
                print(f"note: {other.name} needs {line}, which excludes the new core {version}: "
                      f"release it with a widened range after this one")
    if not args.write:
        print(f"would run: {' '.join(test_command)}" + (" (skipped: --skip-tests)" if args.skip_tests else ""))
        print(f"would build: sdist + wheel into {(root / 'dist' / f'{package.folder}-{version}').relative_to(root)}/")
        print(f"tag: {tag}")
        print("dry run: nothing changed (add --write)")
        return 0

    for path, (_, new) in changes.items():
        path.write_text(new)
    try:
        if args.skip_tests:
            print("tests skipped (--skip-tests)")
        else:
            print("+", " ".join(test_command), flush=True)
            if subprocess.run(test_command, cwd=root).returncode != 0:
                raise Refused(f"{rel} tests failed")
        bumped = workspace.load(package.path, root)
        wheel, sdist = build(bumped, root / "dist" / f"{package.folder}-{version}")
        problems = check_wheel(wheel, bumped, version, core)
        if problems:
            raise Refused("the wheel is not releasable:\n  " + "\n  ".join(problems))
    except (Refused, subprocess.CalledProcessError) as exc:
        for path, (old, _) in changes.items():
            path.write_text(old)
        print(f"refused: {exc}; files restored", file=sys.stderr)
        return 1
    print(f"built: {wheel.relative_to(root)}\nbuilt: {sdist.relative_to(root)}")
    print(f"wheel checked: {package.name} {version}, core range, console scripts, shipped files")
    print(f"tag: {tag}")
    print("next, by hand:")
    print(f'  git commit -m "{package.name} {version}" -- {rel}')
    print(f'  git tag -a {tag} -m "{package.name} {version}"')
    print(f"  git push origin {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

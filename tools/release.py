"""Release one package: bump its version, date its changelog, test, build, check the dists, print the tag.

    python tools/release.py hlbd minor            # dry run: planned version, changelog diff, tag
    python tools/release.py hlbd minor --write    # change files, run tests, build sdist + wheel, check
    python tools/release.py trainstack-core minor --write   # also widens the packages' core ranges
    python tools/release.py hlbd --check          # CI: build the current version and check the dists only
    python tools/release.py --tag hlbd-v0.2.0 --check --github-output "$GITHUB_OUTPUT"   # the publish job

PACKAGE is the folder under packages/ (core, hlbd, mt-nllb...) or the distribution name. Refuses a
package folder with uncommitted changes, a version that is already tagged, an empty Unreleased
section, and a package whose range on trainstack-core excludes the core version in the tree.
Checks (tools/dist_check.py): the wheel's entry points, shipped files and core range; LICENSE,
complete metadata, sizes and contents of both dists; `twine check --strict`.

Core's version policy: a package pins a range (`trainstack-core>=0.1,<0.2`). Releasing core to a
version outside a package's range (0.1.x -> 0.2.0) widens that range's upper bound in the same change
(`>=0.1,<0.3`: the lower bound stays, and CI tests each package against the lowest core its range
allows, tools/lowest_core.py) and adds a line to the package's Unreleased changelog; `--keep-ranges`
only lists those packages instead (the workspace set-up then refuses the new core until they move).
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
import dist_check  # noqa: E402
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


def next_breaking(version: str) -> str:
    """The first version a range written for ``version`` excludes: 0.2.0 -> 0.3, 1.4.0 -> 2."""
    major, minor = Version(version).release[:2]
    return f"0.{minor + 1}" if major == 0 else f"{major + 1}"


def widened_core_requirement(line: str, core_version: str) -> str:
    """The dependency line with its upper bound moved to include ``core_version``; lower bounds kept.

    "trainstack-core[metrics]>=0.1,<0.2" with core 0.2.0 -> "trainstack-core[metrics]>=0.1,<0.3"."""
    req = Requirement(line)
    kept = {str(s) for s in req.specifier if s.operator in (">=", ">", "!=")}
    kept |= {f">={s.version}" for s in req.specifier if s.operator == "~="}  # ~=0.1.0 means >=0.1.0,<0.2
    spec = ",".join([*sorted(kept, key=lambda s: (not s.startswith(">"), s)), f"<{next_breaking(core_version)}"])
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}{spec}{marker}"


def changelog_with_entry(text: str, entry: str, path) -> str:
    match = UNRELEASED.search(text)
    if not match:
        raise Refused(f"{path}: no '## Unreleased' section")
    body, rest = match.group(1).strip("\n"), text[match.end(1):]
    section = f"\n- {entry}\n" + (f"{body}\n" if body else "") + ("\n" if rest else "")
    return text[:match.start(1)] + section + rest


def widen_dependents(core_version: str, root: Path) -> tuple[list[workspace.Package], dict[Path, tuple[str, str]]]:
    """The packages whose core range excludes ``core_version``, and their widened pyproject and changelog."""
    excluded, changes = [], {}
    for package in workspace.packages(root):
        line = package.core_requirement
        if package.is_core or not line or Requirement(line).specifier.contains(core_version, prereleases=True):
            continue
        excluded.append(package)
        new_line = widened_core_requirement(line, core_version)
        pyproject = package.path / "pyproject.toml"
        text = pyproject.read_text()
        if text.count(f'"{line}"') != 1:
            raise Refused(f"{pyproject.relative_to(root)}: cannot find the dependency line \"{line}\" to widen")
        changes[pyproject] = (text, text.replace(f'"{line}"', f'"{new_line}"'))
        changelog = package.path / "CHANGELOG.md"
        text = changelog.read_text()
        entry = (f"Allows {workspace.CORE_DIST} {core_version}: the range on core is now "
                 f"`{new_line.split(';')[0]}` (was `{line}`).")
        changes[changelog] = (text, changelog_with_entry(text, entry, changelog.relative_to(root)))
    return excluded, changes


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


def check_current(package: workspace.Package, core: workspace.Package, root: Path) -> tuple[int, Path | None]:
    """Build the version in the tree and check both dists: (exit status, the folder they are in)."""
    out = root / "dist" / f"{package.folder}-{package.version}"
    try:
        wheel, sdist = build(package, out)
        problems = check_wheel(wheel, package, package.version, core) + dist_check.check_dists(package, wheel, sdist)
    except (Refused, subprocess.CalledProcessError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1, None
    if problems:
        print(f"{package.name} {package.version} is not releasable:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1, None
    print(f"checked: {wheel.relative_to(root)} and {sdist.name} (metadata, LICENSE, contents, twine check)")
    return 0, out


def is_prerelease(version: str) -> bool:
    """a/b/rc/dev versions go to TestPyPI, not PyPI."""
    return Version(version).is_prerelease


def package_for_tag(tag: str, root: Path) -> workspace.Package:
    """The package a tag NAME-vX.Y.Z releases; refuses a tag whose version is not the package's."""
    for package in workspace.packages(root):
        if tag.startswith(package.tag_prefix):
            version = tag[len(package.tag_prefix):]
            if version != package.version:
                raise Refused(f"tag {tag} says {package.name} {version}, but "
                              f"{package.path.relative_to(root)}/pyproject.toml has version {package.version}")
            return package
    known = ", ".join(f"{p.tag_prefix}X.Y.Z" for p in workspace.packages(root))
    raise Refused(f"tag {tag} names no package; tags look like {known}")


def check_tag(tag: str, core: workspace.Package, root: Path, github_output: Path | None) -> int:
    try:
        package = package_for_tag(tag, root)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    status, out = check_current(package, core, root)
    if status == 0:
        prerelease = is_prerelease(package.version)
        print(f"{tag}: {package.name} {package.version} -> {'TestPyPI (pre-release)' if prerelease else 'PyPI'}")
        if github_output:
            with github_output.open("a") as f:
                f.write(f"folder={package.folder}\nname={package.name}\nversion={package.version}\n"
                        f"prerelease={str(prerelease).lower()}\ndist={out.relative_to(root)}\n")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", help="folder under packages/ or distribution name")
    parser.add_argument("part", nargs="?", choices=PARTS, default="patch", help="which part to bump (patch)")
    parser.add_argument("--write", action="store_true", help="change files, test, build and check (default: dry run)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the package's tests (not for a real release)")
    parser.add_argument("--check", action="store_true",
                        help="build and check the current version only: no bump, no tests, no tree checks")
    parser.add_argument("--tag", help="with --check: the package a tag NAME-vX.Y.Z names; refuses a tag that is "
                                      "not the package's version")
    parser.add_argument("--github-output", type=Path, help="with --tag: append folder, name, version, prerelease, dist")
    parser.add_argument("--keep-ranges", action="store_true",
                        help="core release: list the packages whose range excludes the new core, do not widen them")
    parser.add_argument("--date", help="release date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--root", type=Path, default=workspace.ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.package is None) == (args.tag is None):
        parser.error("give a PACKAGE, or --tag with --check")
    if args.tag and not args.check:
        parser.error("--tag only goes with --check")

    root = args.root.resolve()
    date = args.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    core = workspace.find(workspace.CORE_FOLDER, root)
    if args.tag:
        return check_tag(args.tag, core, root, args.github_output)
    package = workspace.find(args.package, root)
    rel = package.path.relative_to(root)
    if args.check:
        return check_current(package, core, root)[0]
    try:
        if not package.is_core:
            core_line = core_check(package, core, root)
            print(f"core range: {core_line} includes {workspace.CORE_DIST} {core.version} in the tree")
        version, changes = plan(package, args.part, date, root)
        dependents: list[workspace.Package] = []
        if package.is_core:
            dependents, widened = widen_dependents(version, root)
            for other in dependents:
                dirty = git(root, "status", "--porcelain", "--", str(other.path.relative_to(root)))
                if dirty.strip() and not args.keep_ranges:
                    raise Refused(f"{other.path.relative_to(root)} has uncommitted changes and its core range "
                                  f"must widen; commit or stash them first:\n{dirty.rstrip()}")
            if not args.keep_ranges:
                changes.update(widened)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    tag = f"{package.tag_prefix}{version}"
    test_command = [sys.executable, "-m", "pytest", "-q", str(rel / "tests")]

    print(f"{package.name}: {package.version} -> {version} ({args.part}), {'WRITE' if args.write else 'dry run'}")
    print(diff(changes, root), end="")
    for other in dependents:
        if args.keep_ranges:
            print(f"note: {other.name} needs {other.core_requirement}, which excludes the new core {version}: "
                  f"widen it (or release without --keep-ranges) before the workspace can install {version}")
        else:
            print(f"widened: {other.name} {other.core_requirement} -> "
                  f"{widened_core_requirement(other.core_requirement, version)}; CI tests it against the lowest "
                  f"core that range allows; release it next: python tools/release.py {other.folder} patch")
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
        problems = check_wheel(wheel, bumped, version, core) + dist_check.check_dists(bumped, wheel, sdist)
        if problems:
            raise Refused("the dists are not releasable:\n  " + "\n  ".join(problems))
    except (Refused, subprocess.CalledProcessError) as exc:
        for path, (old, _) in changes.items():
            path.write_text(old)
        print(f"refused: {exc}; files restored", file=sys.stderr)
        return 1
    paths = " ".join(str(p) for p in [rel, *(o.path.relative_to(root) for o in dependents if not args.keep_ranges)])
    print(f"built: {wheel.relative_to(root)}\nbuilt: {sdist.relative_to(root)}")
    print(f"checked: {package.name} {version}, core range, console scripts, shipped files, metadata, LICENSE, twine")
    print(f"tag: {tag}")
    print("next, by hand:")
    print(f'  git commit -m "{package.name} {version}" -- {paths}')
    print(f'  git tag -a {tag} -m "{package.name} {version}"')
    print(f"  git push origin {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

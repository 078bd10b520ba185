"""What a package's sdist and wheel must be before they go to PyPI; one line per finding.

    python tools/dist_check.py hlbd dist/hlbd-0.1.0/*     # check built files (exit 1 on findings)

Used by tools/release.py (--check, --write, --tag) and tests/test_packaging.py:
- the LICENSE (Apache-2.0, the root LICENSE's text) is in both, and the metadata names it
  (License-Expression, License-File);
- the metadata is complete: authors, keywords, classifiers, Requires-Python, the project URLs
  (Homepage, Repository, Issues, Changelog) on the project's GitHub, a markdown description whose
  links are absolute (relative links break on PyPI);
- no file over 100 KB unless it is declared data (under ``<import>/data/``);
- the sdist holds files of the package's folder only, the wheel its import packages only;
- `twine check --strict` passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workspace  # noqa: E402

LICENSE_EXPRESSION = "Apache-2.0"
AUTHOR = "trainstack developers"
REPOSITORY_URL = workspace.REPOSITORY_URL
PROJECT_URL_LABELS = ("Homepage", "Repository", "Issues", "Changelog")
PYTHON_CLASSIFIERS = tuple(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12))
MAX_UNDECLARED_BYTES = 100 * 1024
# Files hatchling writes into an sdist that have no source file of the same name in the folder.
SDIST_GENERATED = {"PKG-INFO"}
# A markdown link or image target: [text](target) / ![alt](target).
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")
ABSOLUTE_LINK = re.compile(r"^(https?://|mailto:|#)")


def metadata_fields(text: str) -> dict[str, list[str]]:
    """Core metadata (METADATA / PKG-INFO) as field -> values; the description under "Description"."""
    message = HeaderParser().parsestr(text)
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    fields["Description"] = [message.get_payload() or ""]
    return fields


def relative_links(markdown: str) -> list[str]:
    return [target for target in MARKDOWN_LINK.findall(markdown) if not ABSOLUTE_LINK.match(target)]


def metadata_problems(fields: dict[str, list[str]], package: workspace.Package, where: str) -> list[str]:
    def first(key: str) -> str:
        return (fields.get(key) or [""])[0]

    problems = []
    if workspace.normalize(first("Name")) != workspace.normalize(package.name):
        problems.append(f"{where}: Name is {first('Name')!r}, expected {package.name!r}")
    if first("Version") != package.version:
        problems.append(f"{where}: Version is {first('Version')!r}, expected {package.version!r}")
    if first("License-Expression") != LICENSE_EXPRESSION:
        problems.append(f"{where}: License-Expression is {first('License-Expression')!r}, expected {LICENSE_EXPRESSION!r}")
    if "LICENSE" not in fields.get("License-File", []):
        problems.append(f"{where}: no License-File: LICENSE (pyproject: license-files = [\"LICENSE\"])")
    if AUTHOR not in first("Author") + first("Author-email"):
        problems.append(f"{where}: authors do not name {AUTHOR!r}")
    if not first("Summary"):
        problems.append(f"{where}: no Summary (pyproject: description)")
    if not first("Keywords"):
        problems.append(f"{where}: no Keywords")
    if not first("Requires-Python"):
        problems.append(f"{where}: no Requires-Python")
    missing = [c for c in PYTHON_CLASSIFIERS if c not in fields.get("Classifier", [])]
    if missing:
        problems.append(f"{where}: classifiers lack {missing}")
    urls = dict(url.split(", ", 1) for url in fields.get("Project-URL", []) if ", " in url)
    for label in PROJECT_URL_LABELS:
        if not urls.get(label, "").startswith(REPOSITORY_URL):
            problems.append(f"{where}: Project-URL {label} is {urls.get(label)!r}, expected one under {REPOSITORY_URL}")
    if first("Description-Content-Type") != "text/markdown":
        problems.append(f"{where}: Description-Content-Type is {first('Description-Content-Type')!r}, expected text/markdown")
    links = relative_links(first("Description"))
    if links:
        problems.append(f"{where}: README links {links} are relative: they break on PyPI; use {REPOSITORY_URL}/blob/main/...")
    return problems


def size_problems(sizes: dict[str, int], declared_data: tuple[str, ...], where: str) -> list[str]:
    return [f"{where}: {name} is {size / 1024:.0f} KB, over {MAX_UNDECLARED_BYTES // 1024} KB and not declared data "
            f"(ship large data under src/<import>/data/)"
            for name, size in sorted(sizes.items())
            if size > MAX_UNDECLARED_BYTES and not name.startswith(declared_data)]


def license_problems(text: bytes | None, package: workspace.Package, where: str) -> list[str]:
    if text is None:
        return [f"{where}: no LICENSE"]
    if text != (package.path / "LICENSE").read_bytes():
        return [f"{where}: LICENSE differs from {package.folder}/LICENSE"]
    return []


def wheel_problems(wheel: Path, package: workspace.Package) -> list[str]:
    where = wheel.name
    with zipfile.ZipFile(wheel) as zf:
        sizes = {info.filename: info.file_size for info in zf.infolist() if not info.is_dir()}
        dist_info = next((n.split("/")[0] for n in sizes if n.split("/")[0].endswith(".dist-info")), None)
        if dist_info is None:
            return [f"{where}: no .dist-info directory"]
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        licence_name = f"{dist_info}/licenses/LICENSE"
        licence = zf.read(licence_name) if licence_name in sizes else None
    problems = metadata_problems(metadata_fields(metadata), package, where)
    problems += license_problems(licence, package, where)
    imports = tuple(f"{name}/" for name in package.import_names)
    problems += [f"{where}: {name} is outside the package's import packages {list(package.import_names)}"
                 for name in sorted(sizes) if not name.startswith((*imports, f"{dist_info}/"))]
    problems += size_problems(sizes, tuple(f"{name}/data/" for name in package.import_names), where)
    return problems


def sdist_problems(sdist: Path, package: workspace.Package) -> list[str]:
    where = sdist.name
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        prefix = members[0].name.split("/")[0] + "/" if members else ""
        files = {m.name: m for m in members}
        pkg_info = tf.extractfile(files[f"{prefix}PKG-INFO"]).read().decode() if f"{prefix}PKG-INFO" in files else ""
        licence_member = files.get(f"{prefix}LICENSE")
        licence = tf.extractfile(licence_member).read() if licence_member else None
    problems = [f"{where}: no PKG-INFO"] if not pkg_info else metadata_problems(metadata_fields(pkg_info), package, where)
    problems += license_problems(licence, package, where)
    sizes = {}
    for name, member in files.items():
        inside = PurePosixPath(name)
        if not name.startswith(prefix) or ".." in inside.parts:
            problems.append(f"{where}: {name} is not under {prefix}")
            continue
        relative = name[len(prefix):]
        sizes[relative] = member.size
        if relative not in SDIST_GENERATED and not (package.path / relative).is_file():
            problems.append(f"{where}: {relative} is not a file of packages/{package.folder}/ (outside the package's folder)")
    problems += size_problems(sizes, tuple(f"src/{name}/data/" for name in package.import_names), where)
    return problems


def twine_problems(paths: list[Path]) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, paths)],
                            capture_output=True, text=True)
    if result.returncode == 0:
        return []
    if "No module named twine" in result.stderr:
        return ["twine is not installed: run `python tools/setup_dev.py` (it installs tools/requirements.txt)"]
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr).strip()
    return ["twine check --strict failed:\n    " + output.replace("\n", "\n    ")]


def check_dists(package: workspace.Package, wheel: Path, sdist: Path) -> list[str]:
    """Every finding for one package's wheel and sdist, one line each (empty when both are fit to publish)."""
    return wheel_problems(wheel, package) + sdist_problems(sdist, package) + twine_problems([wheel, sdist])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="folder under packages/ or distribution name")
    parser.add_argument("files", nargs="+", type=Path, help="the built .whl and .tar.gz")
    args = parser.parse_args(argv)
    package = workspace.find(args.package)
    wheels = [f for f in args.files if f.suffix == ".whl"]
    sdists = [f for f in args.files if f.name.endswith(".tar.gz")]
    if len(wheels) != 1 or len(sdists) != 1:
        parser.error(f"give one .whl and one .tar.gz, got {[f.name for f in args.files]}")
    problems = check_dists(package, wheels[0], sdists[0])
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"fit to publish: {wheels[0].name}, {sdists[0].name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

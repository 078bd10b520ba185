"""The repository speaks of the project only: no tracked file names an absolute path of one machine
or the tools of the place it was developed in. Docs, scripts and tests say how anyone runs them (a
GPU host, `torchrun` / `accelerate launch`, paths as arguments or environment variables)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()  # it has to name the patterns

# Absolute paths are allowed under the folders every Linux host has, in URLs, as placeholders
# (/path/to, /no/such, /nonexistent) and as repository-rooted CODEOWNERS patterns (/packages/...); any
# other absolute path names one machine's layout. Text gives paths as arguments or relative ones.
SYSTEM_FOLDERS = "usr|dev|tmp|etc|proc|opt|bin|sbin|sys|var|lib|lib64|mnt|run|srv|nix"
PLACEHOLDERS = "path/to|no/such|nonexistent|packages"

FORBIDDEN = {
    "an absolute path of one machine": (rf"(?<![\w.~:/$}}…-])/(?!(?:{SYSTEM_FOLDERS})/|(?:{PLACEHOLDERS})\b)"
                                        r"[a-z][\w.-]*/[\w.-]+|bash_jobs"),
    "a data folder outside the repository": r"\.\./shared\b",
    "a hidden folder beside the repository": r"\.\./\.(?!mt-nllb-cache\b)[A-Za-z]",  # (mt-nllb's own data cache)
    "a multi-GPU machine kind": r"\bnvidia-[a-z][0-9]+-x[0-9]+\b",
    "a remote-run tool's arguments": r"\bdevice (tool|call|kind|machine)s?\b|`device` tool|\bcarry *[=:] *\[|\brun\(kind=",
}


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and name != THIS_FILE]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    texts = {}
    for name in tracked_text_files():
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        texts[name] = data.decode("utf-8", errors="replace")
    return texts


def test_git_lists_the_repository(files):
    assert "README.md" in files and any(name.startswith("packages/") for name in files)


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_no_tracked_file_names(files, what):
    pattern = re.compile(FORBIDDEN[what], re.M)
    hits = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
            for name, text in files.items() for m in pattern.finditer(text)]
    assert hits == [], f"{what}:\n  " + "\n  ".join(hits[:30])


@pytest.mark.parametrize(("what", "sample"), [
    ("an absolute path of one machine", "see /data/alice/trainstack/packages"),
    ("a data folder outside the repository", "--data ../shared/data/hlbd/x.txt"),
    ("a hidden folder beside the repository", "read ../.tools/README.md"),
    ("a multi-GPU machine kind", "kind nvidia-a1-x4"),
    ("a remote-run tool's arguments", "one device call, carry [\".whl\"]"),
])
def test_patterns_catch_what_they_name(what, sample):
    assert re.search(FORBIDDEN[what], sample, re.M), (what, sample)


def test_patterns_leave_ordinary_text_alone():
    ordinary = ("the model moves to its device; OUT_DIR=${1:-results}; NVIDIA H200; shared memory; "
                "https://github.com/trainstack/trainstack; runs/hlbd; python3 -m torch.distributed.run; "
                "/dev/shm; /tmp/run; /usr/local/cuda/bin; tokens/s; packages/core/src; ${ROOT}/packages/x")
    assert [what for what, pattern in FORBIDDEN.items() if re.search(pattern, ordinary, re.M)] == []


def test_no_profiler_dump_or_large_blob_is_tracked(files):
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    names = [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]
    big = [f"{name} ({(ROOT / name).stat().st_size // 1024} KB)" for name in names
           if (ROOT / name).stat().st_size > 1024 * 1024]
    assert big == [], f"tracked files over 1 MB: {big}"
    dumps = [name for name in names if re.search(r"(^|/)pe$|\.(prof|pstats|nsys-rep|ncu-rep)$|\.pt\.trace\.json$", name)]
    assert dumps == [], f"profiler dumps are tracked: {dumps}"


def _variables_read_but_never_set(script: str) -> set[str]:
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)\b(?!:-)", script))
    set_here = set(re.findall(r"(?:^|[\s;(])(?:export\s+|local\s+)?([A-Z][A-Z0-9_]*)=", script, re.M))
    set_here |= set(re.findall(r"\bfor\s+([A-Z][A-Z0-9_]*)\s+in\b", script))
    with_default = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", script))
    shell = {"HOME", "PATH", "PWD", "PYTHONPATH", "BASH_SOURCE", "SECONDS", "PIPESTATUS", "RANDOM", "LINENO"}
    return read - set_here - with_default - shell


def test_scripts_read_only_what_they_set_or_default(files):
    """A script that reads a variable it neither sets nor defaults works only where someone exported
    it (one machine's habit): outputs and inputs come as arguments or variables with defaults."""
    bad = {name: sorted(found) for name, text in files.items()
           if name.endswith(".sh") and (found := _variables_read_but_never_set(text))}
    assert bad == {}


def test_the_script_check_catches_an_undefined_output_variable():
    assert _variables_read_but_never_set('mkdir -p "$RESULTS"; cp a "${RESULTS}/b"') == {"RESULTS"}
    assert _variables_read_but_never_set('RESULTS="${1:-out}"; cp a "$RESULTS/b"; echo ${N:-3}') == set()

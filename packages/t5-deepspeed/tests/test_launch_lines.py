"""Every `deepspeed ...` launch line the package shows (docstrings, profiles, README, docs) is one the
DeepSpeed launcher accepts, and runs this package as a module (`--module t5_deepspeed`; the launcher
has no `-m`, so `deepspeed --num_gpus=1 -m t5_deepspeed` fails with "unrecognized arguments: -m")."""

import re
import shlex
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
FILES = [*sorted((PACKAGE / "src").rglob("*.py")), *sorted((PACKAGE / "src").rglob("*.yaml")), PACKAGE / "README.md",
         *sorted((PACKAGE / "docs").glob("*.md"))]
LAUNCH = re.compile(r"\bdeepspeed (--num_gpus[ =]\S+[^`\n]*?t5_deepspeed)")


def _launch_lines():
    found = []
    for path in FILES:
        for match in LAUNCH.finditer(path.read_text(encoding="utf-8")):
            found.append((f"{path.relative_to(PACKAGE)}: deepspeed {match.group(1)}", match.group(1)))
    return found


LINES = _launch_lines()


def test_the_package_shows_launch_lines():
    assert len(LINES) >= 6, LINES


@pytest.mark.parametrize(("where", "args"), LINES, ids=[w for w, _ in LINES])
def test_launch_line_parses_with_the_deepspeed_launcher(where, args):
    pytest.importorskip("deepspeed")
    from deepspeed.launcher.runner import parse_args

    parsed = parse_args(shlex.split(args.replace("=N ", "=2 ")))  # N: the placeholder for a GPU count
    assert parsed.module and parsed.user_script == "t5_deepspeed", where

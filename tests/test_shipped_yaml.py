"""Every YAML file shipped inside a package loads: profiles through trainstack.hardware.load_profile
(the same path `trainstack doctor` and each package's --profile use), other YAML at least parses."""

from pathlib import Path

import pytest
from trainstack.config import load_yaml
from trainstack.hardware import load_profile

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p for pattern in ("packages/*/src/**/*.yaml", "packages/*/src/**/*.yml") for p in REPO.glob(pattern)
)


def _is_profile(path: Path) -> bool:
    return "profiles" in path.relative_to(REPO).parts[:-1]


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_yaml_loads(path):
    if _is_profile(path):
        profile = load_profile(path)
        assert profile.name == path.stem
        assert isinstance(profile.settings, dict)
    else:
        load_yaml(path.read_text(encoding="utf-8"))


def test_profile_names_say_the_hardware():
    # rtx4080s-16g.yaml, 2x-rtx2080s-8g.yaml, cpu.yaml...: lower-case, no spaces, so `--profile NAME` works
    for path in SHIPPED:
        if _is_profile(path):
            assert path.stem == path.stem.lower() and " " not in path.stem, path

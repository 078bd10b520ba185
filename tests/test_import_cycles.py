"""No module of a package imports, directly or through others, a module that imports it back (a CLI
that its training module imports again is the usual one): shared argument parsing lives in config.py
or in core. Imports inside functions count too: they only postpone the circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in REPO.glob("packages/*/src/*") if (p / "__init__.py").is_file())


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, known: dict) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - (node.level - (path.name == "__init__.py"))]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize("root", PACKAGES, ids=[p.name for p in PACKAGES])
def test_no_import_circle(root):
    mods = _modules(root)
    graph = {m: _imports(m, f, mods) for m, f in mods.items()}
    # A package's __init__ is imported by every submodule anyway; only edges between submodules count.
    graph = {m: {n for n in deps if n != root.name} for m, deps in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_check_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("def main():\n    from pkg.train import run\n")
    (pkg / "train.py").write_text("from . import bench\n")
    (pkg / "bench.py").write_text("def f():\n    from .cli import main\n")
    mods = _modules(pkg)
    assert _cycle({m: _imports(m, f, mods) for m, f in mods.items()}) == ["pkg.bench", "pkg.cli", "pkg.train",
                                                                          "pkg.bench"]

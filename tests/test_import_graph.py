"""The repository's import graph has no cycle, between modules or between top-level packages.

Every `import` / `from ... import` in every source file counts, also those inside functions or under
`if TYPE_CHECKING:` (a lazy import hides a cycle, it does not remove it). Tests are not part of the graph.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", ".venv", "venv", ".git", "build", "dist"}


def repo_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the repository (a package is its __init__)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in SKIP or any(p.startswith(".") for p in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the repository modules it imports.

    A package's ``__init__`` that runs because one of its submodules is imported is not an edge: with it,
    every ``__init__`` that re-exports its submodules would be a cycle.
    """
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None: depth-first search with three colours."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    modules = repo_modules()
    assert {"model.transformer", "data.records", "common.io", "train"} <= set(modules)
    edges = import_edges(modules)
    assert "model.config" in edges["model.transformer"] and "common.io" in edges["data.records"]
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_no_import_cycle_between_top_level_packages():
    edges = import_edges(repo_modules())
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        top = module.split(".")[0]
        packages.setdefault(top, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != top)
    assert find_cycle(packages) is None, " -> ".join(find_cycle(packages))

"""No import cycles: the import graph of the repository's modules, read with ast (imports inside
functions count too: they only postpone a cycle), has no strongly connected component of more than one
module among the packages listed. A package's own __init__ importing its submodules is not a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("sampling", "training", "train", "bench")  # add a package here once its cycles are gone


def module_files(root: Path) -> dict[str, Path]:
    modules = {}
    for file in root.rglob("*.py"):
        rel = file.relative_to(root)
        if rel.parts[0] == "tests" or any(part.startswith(".") for part in rel.parts):
            continue
        parts = rel.with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the repository modules it imports (`from a import b`: a.b when that is a module, else a)."""
    modules = module_files(root)
    graph = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:  # a submodule, or a name defined in the module `base`
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        edges = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", CHECKED)
def test_no_import_cycle_touches_the_package(package):
    touching = [c for c in cycles(import_graph(ROOT)) if any(m == package or m.startswith(package + ".") for m in c)]
    assert touching == []


def test_the_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.a import f\n")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import g\n\ndef f():\n    return g()\n")
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    from . import c\n    return c.h()\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n\ndef h():\n    return 1\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg import a\n")  # a leaf: no cycle
    assert cycles(import_graph(tmp_path)) == [["pkg.a", "pkg.b", "pkg.c"]]

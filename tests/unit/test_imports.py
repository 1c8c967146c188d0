"""No module of the project imports itself through others, not even from inside a function.

An import placed in a function to dodge a cycle still makes one: the modules can no longer be
read (or loaded) one after the other, and the cycle shows up as an ImportError the day some
caller imports them in another order. The test reads every module's source with :mod:`ast`
(nothing is imported, so it is fast and needs no Tango, Qt or Sardana), builds the graph of
imports between the project's own modules, and fails naming every cycle it finds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: package name as imported -> folder in the tree (controllers and macros are installed renamed)
PACKAGES = {
    "deviceservers": "deviceservers",
    "datawriter": "datawriter",
    "tango_db": "tango_db",
    "taurus_gui": "taurus_gui",
    "tangodaq_controllers": "controllers",
    "tangodaq_macros": "macros",
}


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (itself, or its nearest enclosing package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (module level, functions,
    ``if TYPE_CHECKING`` blocks excluded: they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one, else a name of pkg
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                       for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edges_within(graph: dict[str, set[str]], group: list[str]) -> str:
    members = set(group)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in group)


def test_the_cycle_finder_sees_function_level_imports(tmp_path) -> None:
    """The checker itself: a cycle closed by an import inside a function is reported."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    modules = {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py", "p.c": tmp_path / "c.py"}
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert cycles(graph) == [["p.a", "p.b"]]


def test_every_package_is_walked() -> None:
    modules = project_modules()
    for package in PACKAGES:
        assert package in modules, f"{package} has no __init__.py: not walked"
    assert "tango_db.config" in modules and "tangodaq_controllers" in modules
    graph = import_graph()
    # an absolute import, a relative one and one inside a function are all edges
    assert "deviceservers.common.device" in graph["deviceservers.Esp300.device"]
    assert "datawriter.component" in graph["datawriter.device"]
    assert "tango_db.roles" in graph["datawriter.device"]  # imported in manifest_devices_from_roles


def test_no_import_cycle_among_the_project_modules() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (module -> the modules of its cycle it imports):\n" + "\n".join(
        _edges_within(graph, group) for group in found)

"""No import circle between the package's modules, counting every import statement: those at
module level, under `if TYPE_CHECKING:` and inside functions (a lazy import still ties modules)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"layerpolicy": ROOT / "layerpolicy", "layerpolicy.cli": ROOT / "cli"}


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the package (cli/ is layerpolicy.cli)."""
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file (`from x import y` counts as
    x.y when that is a module, else x)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return {t for t in targets if t in modules and t != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    files = module_files()
    graph = {name: imported(name, path, set(files)) for name, path in files.items()}
    assert cycles(graph) == []


def test_the_check_finds_a_circle_under_type_checking(tmp_path, monkeypatch):
    package = tmp_path / "layerpolicy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
    )
    (package / "c.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setitem(PACKAGES, "layerpolicy", package)
    monkeypatch.setitem(PACKAGES, "layerpolicy.cli", tmp_path / "none")
    files = module_files()
    graph = {name: imported(name, path, set(files)) for name, path in files.items()}
    assert graph["layerpolicy.c"] == {"layerpolicy.a"}
    assert cycles(graph) == [["layerpolicy.a", "layerpolicy.b"]]

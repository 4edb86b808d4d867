"""The package's import graph: layers point down, so it has no cycle.

Every ``import`` of every module counts, those inside functions too (an import moved into a
function still makes the loop; it only hides it), except those under ``if TYPE_CHECKING:``,
which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dialogue_tts

PACKAGE_DIR = Path(dialogue_tts.__file__).parent
COMMAND_LINE_IMPORTERS = {"dialogue_tts.__main__", "dialogue_tts.bundled"}
"""The only modules that may import the command line (``dialogue_tts.cli``)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, is_package: bool, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports when it runs."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from . import x
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # Importing a.b.c runs package a.b first: count it, except packages the importer is in
    # (they are already running when it is imported).
    ancestors = {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
    for name in list(found):
        found.update(name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1))
    return {name for name in found - ancestors if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``dialogue_tts.x`` names)."""
    paths = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    known = set(paths)
    return {
        name: _imported(name, path.name == "__init__.py", ast.parse(path.read_text()), known)
        for name, path in paths.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert graph.get("dialogue_tts.server"), "graph not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_entry_points_import_the_command_line() -> None:
    graph = import_graph()
    importers = {name for name, targets in graph.items() if "dialogue_tts.cli" in targets}
    assert importers == COMMAND_LINE_IMPORTERS


def test_find_cycle_finds_one() -> None:
    """The checker itself: a loop hidden two modules deep is found and named."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import a\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from .c import g\n"
        "from ..top import x\n"
    )
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.top", "pkg.other"}
    found = _imported("pkg.sub.m", False, ast.parse(source), known)
    assert found == {"pkg.sub.a", "pkg.sub.c", "pkg.top"}
    found = _imported("pkg.top", False, ast.parse("from .sub.a import f\n"), known)
    assert found == {"pkg.sub", "pkg.sub.a"}  # the package runs before its module

"""Architecture rules checked on the source (STYLE.md "For this project" 9 and 10).

- No import cycle between the modules of gateway/ and webui/. Every `import` / `from ... import`
  of a project module counts, at module level or inside a function or class; only imports under
  `if TYPE_CHECKING:` do not. Relative imports are resolved, and `from pkg import name` is an
  import of the module pkg.name when there is one (else of pkg). A module's imports of its own
  parent packages are not edges (Python runs them first anyway; archcheck.py does the same).
- gateway.commands (the CLI's subcommands) is imported only by gateway/commands/ itself and
  gateway/cli.py: library code and the web UI never depend on the command line.
- One vocabulary: no module but gateway/vocabulary.py defines a class named Direction, Mode or
  Action, and gateway/vocabulary.py imports nothing of the project.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
PACKAGES: Final = ("gateway", "webui")
VOCABULARY: Final = "gateway.vocabulary"
VOCABULARY_TYPES: Final = frozenset({"Direction", "Mode", "Action"})
CLI_MODULES: Final = ("gateway.cli", "gateway.commands")  # may import gateway.commands

Graph = dict[str, set[str]]


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under `root`."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = f
    return mods


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of every node under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) block."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """`name`, or its longest prefix that is a project module; None outside the project."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(
    name: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]
) -> set[str]:
    """The project modules one import statement of module `name` imports."""
    if isinstance(node, ast.Import):
        found = {_known(alias.name, mods) for alias in node.names}
        return {m for m in found if m is not None}
    base = node.module or ""
    if node.level:
        parts = name.split(".")
        keep = len(parts) - node.level + (1 if mods[name].name == "__init__.py" else 0)
        base = ".".join([*parts[:keep], *([base] if base else [])])
    out: set[str] = set()
    for alias in node.names:
        target = f"{base}.{alias.name}"
        found = target if target in mods else _known(base, mods)
        if found is not None:
            out.add(found)
    return out


def import_edges(name: str, path: Path, mods: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file that counts."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            for target in imported_modules(name, node, mods):
                if target != name and not name.startswith(target + "."):
                    yield target, node.lineno


def import_graph(mods: dict[str, Path]) -> Graph:
    return {name: {t for t, _ in import_edges(name, path, mods)} for name, path in mods.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module: [a, b, ..., a]."""
    members = set(component)
    start = component[0]
    parent = {start: start}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    return component


def _describe(graph: Graph, component: list[str]) -> str:
    return " -> ".join(cycle_path(graph, component)) + f"  (cycle of {len(component)} modules)"


# ------------------------------------------------------------------------------------ tests


def test_no_import_cycles() -> None:
    graph = import_graph(project_modules(ROOT))
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_describe(graph, c) for c in found)


def test_gateway_commands_is_imported_only_by_the_cli() -> None:
    mods = project_modules(ROOT)
    bad = []
    for name, path in mods.items():
        if name in CLI_MODULES or name.startswith("gateway.commands."):
            continue
        for target, line in import_edges(name, path, mods):
            is_cli = target == "gateway.commands" or target.startswith("gateway.commands.")
            if is_cli:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "library code or the web UI imports the CLI:\n" + "\n".join(bad)


def test_vocabulary_types_are_defined_only_in_the_vocabulary() -> None:
    copies = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in (*PACKAGES, "tests", "bench") or rel == Path(
            "gateway/vocabulary.py"
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.name in VOCABULARY_TYPES:
                copies.append(f"{rel}:{node.lineno} class {node.name}")
    assert not copies, "use gateway.vocabulary instead of a copy:\n" + "\n".join(copies)


def test_vocabulary_imports_nothing_of_the_project() -> None:
    mods = project_modules(ROOT)
    assert list(import_edges(VOCABULARY, mods[VOCABULARY], mods)) == []


# ----------------------------------------------------- the checker itself, on a made-up tree

FIXTURE: Final = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from pkg import b\n",
    "pkg/b.py": "def f():\n    from .c import g\n",  # hidden in a function: still an edge
    "pkg/c.py": "import pkg.a\n\ndef g(): ...\n",
    "pkg/d.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n"),
    "pkg/e.py": "from pkg.d import x\n",
    "pkg/sub/__init__.py": "from . import leaf\n",
    "pkg/sub/leaf.py": "from .. import a\nimport os\n",
}


@pytest.fixture
def fixture_tree(tmp_path: Path) -> dict[str, Path]:
    for rel, text in FIXTURE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return project_modules(tmp_path, ("pkg",))


def test_checker_resolves_imports_and_finds_hidden_cycles(fixture_tree: dict[str, Path]) -> None:
    graph = import_graph(fixture_tree)
    assert graph["pkg.a"] == {"pkg.b"}  # `from pkg import b` is the module pkg.b
    assert graph["pkg.b"] == {"pkg.c"}  # relative, inside a function
    assert graph["pkg.d"] == set()  # TYPE_CHECKING only
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.a"}  # `from .. import a`; os is not the project's
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycle_path(graph, ["pkg.a", "pkg.b", "pkg.c"]) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]

"""No import circles between the modules of ``src/pacsnode``.

The graph is built from the source with ``ast``, nothing is imported.  An
edge is any import statement of one pacsnode module by another: at module
level, inside a function, or under ``if TYPE_CHECKING``.  All three count
because each says that one module needs the other to be read or run: a
circle closed by an import inside a function (what ``serve`` had with
``dimse/worker.py``) or under TYPE_CHECKING (what ``remote/errors.py`` had
with ``remote/peer.py``) is still two modules that cannot be understood,
moved or tested one without the other; it only moves the failure from
import time to run time or to the type checker.

Not counted: the package ``__init__`` that Python runs before a submodule
(``import pacsnode.index.db`` runs ``pacsnode/index/__init__.py``): every
module would otherwise close a circle with ``pacsnode/__init__.py``, which
imports the public API.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: Circles known and being removed elsewhere; each entry is the set of
#: modules of one strongly connected component.  Keep it minimal: the lead
#: empties it when the branch that removes the circle is merged.
ALLOWED: list[frozenset[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name → (file, whether it is a package's ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted((SRC / "pacsnode").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        out[".".join(parts)] = (path, package)
    return out


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module ``name`` is, or the closest enclosing one (``a.b.NAME``
    where NAME is an attribute of module ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


Edges = dict[str, dict[str, int]]


def import_graph() -> Edges:
    """Module → {imported module: line of the first such import}."""
    modules = _modules()
    graph: Edges = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        targets: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                # ``from pkg import sub`` imports the module pkg.sub; ``from
                # mod import name`` the module mod.
                found = [f"{full}.{alias.name}" if f"{full}.{alias.name}" in modules else full
                         for alias in node.names]
            for target in found:
                if not target.startswith("pacsnode"):
                    continue
                module = _known(target, modules)
                if module and module != name:
                    targets.setdefault(module, node.lineno)
        graph[name] = targets
    return graph


def circles(graph: Edges) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph: Edges, component: frozenset[str]) -> str:
    """One circle through the component: ``a (line N) → b (line M) → a``,
    where line N of module a imports b."""
    start = min(component)
    # Breadth first from start back to start, inside the component.
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in component:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                path.reverse()
                path.append(start)
                return " → ".join(f"{a} (line {graph[a][b]})"
                                  for a, b in zip(path, path[1:])) + f" → {start}"
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    return ", ".join(sorted(component))  # unreachable for a real component


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "pacsnode.node" in graph["pacsnode.web.app"]  # module level, relative
    assert "pacsnode.serve" in graph["pacsnode.archive_commands"]  # inside a function
    assert "pacsnode.node" in graph["pacsnode.cluster"]  # under TYPE_CHECKING
    assert "pacsnode.web.errors" in graph["pacsnode.web.app"]  # from . import errors
    assert "pacsnode.index.schema" in graph["pacsnode.index.db"]


def test_no_import_circles() -> None:
    graph = import_graph()
    found = [c for c in circles(graph) if c not in ALLOWED]
    assert not found, "import circles:\n" + "\n".join(
        "  " + _one_cycle(graph, c) for c in found)


def test_the_allowed_circles_still_exist() -> None:
    """An allowed circle that is gone leaves the list: it must stay minimal."""
    live = circles(import_graph())
    gone = [sorted(c) for c in ALLOWED if c not in live]
    assert not gone, f"no longer circles, remove them from ALLOWED: {gone}"


#: Files allowed an ``except ImportError`` (or ModuleNotFoundError) until
#: their owner's branch lands; keep it minimal.
OPTIONAL_IMPORT_ALLOWED: set[str] = set()


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
               for n in names)


def test_no_piece_of_the_node_is_silently_optional() -> None:
    """Every module of the node is part of the package: an import that fails
    must stop what needs it loudly, never drop a route or a service."""
    found = []
    for path in sorted((SRC / "pacsnode").rglob("*.py")):
        name = str(path.relative_to(SRC))
        if name in OPTIONAL_IMPORT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.ExceptHandler) and _catches_import_error(node):
                found.append(f"{name}:{node.lineno}")
    assert not found, f"imports treated as optional: {found}"

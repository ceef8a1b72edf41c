"""The DIMSE package's layers (docs/ARCHITECTURE.md): the service handlers
see an association only through ``dimse/handle.py``, so they neither import
the association machinery nor reach into its private state, and within
``dimse/`` nothing imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pacsnode.dimse

DIMSE = Path(pacsnode.dimse.__file__).parent
HANDLERS = ["echo", "store", "find", "move_get", "commitment", "responses"]
MACHINERY = {"association", "server", "scp", "worker", "pool", "limit"}


def _imports(module: str) -> set[str]:
    """The dimse modules ``module`` imports (relative imports of this package)."""
    tree = ast.parse((DIMSE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_handlers_use_the_handle_not_the_association() -> None:
    for name in HANDLERS:
        imported = _imports(name)
        assert not imported & MACHINERY, (name, imported & MACHINERY)
        tree = ast.parse((DIMSE / f"{name}.py").read_text())
        private = sorted({f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
                          if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                          and not node.attr.startswith("__")
                          and isinstance(node.value, ast.Name)
                          and node.value.id in ("assoc", "sub", "server")})
        assert private == [], (name, private)


def test_no_import_circle_inside_dimse() -> None:
    modules = sorted(p.stem for p in DIMSE.glob("*.py") if p.stem != "__init__")
    graph = {name: _imports(name) & set(modules) for name in modules}
    assert "association" in graph["server"] and "store" in graph["association"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = [name for name in modules if reaches(name, name, {name})]
    assert circles == []

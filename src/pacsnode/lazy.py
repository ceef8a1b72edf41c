"""Lazy public names (PEP 562): a package's names imported from their
modules on first use, so that importing the package loads none of them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(namespace: MutableMapping[str, Any], names: Mapping[str, str]
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the package whose
    globals are ``namespace``: ``names`` maps each public name to the
    submodule that defines it; a name is kept in ``namespace`` once loaded."""
    package = str(namespace["__name__"])

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__

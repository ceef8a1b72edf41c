"""Queries as data: typed constraints per PS3.4 C.2.2.2 matching type."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dicom.catalogue import Level

__all__ = ["Constraint", "SingleValue", "ListOfUID", "Wildcard", "Range", "Sequence",
           "Fuzzy", "Query", "ReturnKey"]


@dataclass(frozen=True)
class Constraint:
    keyword: str


@dataclass(frozen=True)
class SingleValue(Constraint):
    """C.2.2.2.1 single value matching."""
    value: str


@dataclass(frozen=True)
class ListOfUID(Constraint):
    """C.2.2.2.2 list of UID matching."""
    uids: tuple[str, ...]


@dataclass(frozen=True)
class Wildcard(Constraint):
    """C.2.2.2.4 wildcard matching: ``*`` any run, ``?`` one character."""
    pattern: str


@dataclass(frozen=True)
class Range(Constraint):
    """C.2.2.2.5 range matching; bounds already normalised, ``None`` = open."""
    low: str | None
    high: str | None


@dataclass(frozen=True)
class Sequence(Constraint):
    """C.2.2.2.6 sequence matching: all item constraints hold in one item."""
    items: tuple[Constraint, ...]


@dataclass(frozen=True)
class Fuzzy(Constraint):
    """PS3.18 fuzzy PN matching: case- and accent-insensitive prefix of any
    name component."""
    value: str


@dataclass(frozen=True)
class ReturnKey:
    tag: int
    keyword: str


@dataclass
class Query:
    level: Level
    constraints: list[Constraint] = field(default_factory=list)
    return_keys: list[ReturnKey] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0

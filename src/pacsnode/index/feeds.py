"""Reading a table in the order of its sequence numbers, as a feed that
never skips a row: the change feed (``web/changes.py``) and the audit
trail's reader (``audit.py``).

On PostgreSQL a transaction that took sequence number 10 can commit after
one that took 11; a reader that handed out 11 would then skip 10 for good.
So a gap stops a page unless the row after it was written more than a
grace period ago (the gap is then a rolled-back transaction; the hosts'
clocks must agree to within it).  SQLite serialises writers, so there are
no such gaps there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["settled"]


def settled(rows: Iterable[Any], since: int, now: float, *, written_at: str,
            grace: float) -> list[Any]:
    """The ``rows`` (in ``seq`` order, all after ``since``) up to the first
    gap in ``seq`` that may still fill: one whose next row's ``written_at``
    attribute (epoch seconds) is less than ``grace`` seconds before ``now``."""
    out = []
    expected = since + 1
    for row in rows:
        if row.seq != expected and now - float(getattr(row, written_at)) < grace:
            break
        out.append(row)
        expected = int(row.seq) + 1
    return out

"""Bring an index made by an earlier release up to date: columns added
since, and one-time rewrites of what earlier versions stored.

``metadata.create_all`` creates missing tables but never alters one that
exists: ``add_missing_columns`` adds a column that a table gained since
(``ALTER TABLE … ADD COLUMN``; only nullable columns or ones with a scalar
default qualify, so old rows stay valid).  It is idempotent and safe when
several processes start together.

Each migration has a name and a function; ``run_migrations`` runs those not
yet recorded in ``index_migrations`` and records them, when a ``Database``
is opened (``serve``, ``import``, every command).  A recorded migration
costs one small SELECT at start-up.  Every migration is idempotent and
works in batches of short write transactions, so it may be interrupted
(it runs again at the next start) and may run in two processes at once
(both write the same result; the record is inserted once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import (Column, Connection, Engine, Float, MetaData, String, Table, bindparam,
                        insert, inspect, select, text, update)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from ..dicom.header import GROUP_LENGTH_MARK, json_text, without_group_lengths
from .schema import instances, metadata

__all__ = ["MIGRATIONS", "migrations_table", "run_migrations", "drop_group_lengths",
           "classify_series", "add_missing_columns"]

log = logging.getLogger("pacsnode.index")


class Transactions(Protocol):
    """What a migration needs of the ``index.db.Database`` that runs it (a
    Protocol, so that this module does not import db.py back)."""

    def read(self) -> AbstractContextManager[Connection]: ...

    def write(self) -> AbstractContextManager[Connection]: ...


migrations_table = Table(
    "index_migrations", metadata,
    Column("name", String(64), primary_key=True),
    Column("done_at", Float, nullable=False),
)

#: Rows rewritten per write transaction: short enough that ingest running
#: beside a migration waits milliseconds, not the whole migration.
BATCH = 500


def drop_group_lengths(db: Transactions) -> int:
    """Remove Group Length elements (gggg,0000) from the stored header JSON
    of every instance (PS3.18 F.2.2 leaves them out of the DICOM JSON model;
    versions before this one kept them when the file held them).  Rows are
    found by the text every such element leaves (``GROUP_LENGTH_MARK``);
    returns how many were rewritten."""
    last, changed = 0, 0
    rewrite = update(instances).where(instances.c.id == bindparam("row_id")) \
        .values(meta_json=bindparam("new_json"))
    while True:
        with db.write() as conn:
            rows = conn.execute(
                select(instances.c.id, instances.c.meta_json)
                .where(instances.c.id > last, instances.c.meta_json.contains(GROUP_LENGTH_MARK))
                .order_by(instances.c.id).limit(BATCH)).all()
            if not rows:
                return changed
            conn.execute(rewrite, [
                {"row_id": row.id, "new_json": json_text(without_group_lengths(
                    json.loads(row.meta_json)))} for row in rows])
            last = rows[-1].id
            changed += len(rows)


def classify_series(db: Transactions) -> int:
    """Classify, with the built-in rules, every series an index made before
    series classes existed holds (``pacsnode reclassify`` applies a site's
    ``classification_rules`` afterwards); returns how many."""
    from ..classes import reclassify_all
    from ..classify import load_rules
    return reclassify_all(db, load_rules(None), only_missing=True)[""]


#: (name, function) in the order they run.  Never rename or reorder one
#: that has shipped; add new ones at the end.
MIGRATIONS: tuple[tuple[str, Callable[[Transactions], int]], ...] = (
    ("drop-group-lengths", drop_group_lengths),
    ("classify-series", classify_series),
)


def run_migrations(db: Transactions) -> list[str]:
    """Run the migrations not yet recorded; the names of those run now."""
    with db.read() as conn:
        done = set(conn.execute(select(migrations_table.c.name)).scalars())
    ran: list[str] = []
    for name, migrate in MIGRATIONS:
        if name in done:
            continue
        started = time.monotonic()
        count = migrate(db)
        try:
            with db.write() as conn:
                conn.execute(insert(migrations_table).values(name=name, done_at=time.time()))
        except IntegrityError:
            pass  # another process ran it at the same time and recorded it first
        log.info("index migration %s: %d row(s) rewritten in %.1f s", name, count,
                 time.monotonic() - started)
        ran.append(name)
    return ran


def _column_ddl(engine: Engine, column: Column[Any]) -> str:
    kind = column.type.compile(dialect=engine.dialect)
    ddl = f'ADD COLUMN "{column.name}" {kind}'
    # Only a plain value can be written as a DDL literal (not a Python
    # callable, not a SQL expression).
    default = column.default.arg if isinstance(column.default, ScalarElementColumnDefault) \
        else None
    if default is not None:
        if isinstance(default, bool):
            literal = ("1" if default else "0") if engine.dialect.name == "sqlite" else \
                ("true" if default else "false")
        elif isinstance(default, (int, float)):
            literal = repr(default)
        else:
            literal = "'" + str(default).replace("'", "''") + "'"
        ddl += f" DEFAULT {literal}"
        if not column.nullable:
            ddl += " NOT NULL"
    elif not column.nullable:
        raise ValueError(f"column {column.table.name}.{column.name} is NOT NULL without a "
                         "default: it cannot be added to a table that has rows")
    return ddl


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add each column of ``metadata`` missing from its existing table;
    returns ``table.column`` of those added."""
    added: list[str] = []
    existing = inspect(engine)
    present_tables = set(existing.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in present_tables:
            continue
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            try:
                with engine.begin() as conn:
                    conn.execute(text(f'ALTER TABLE "{table.name}" '
                                      + _column_ddl(engine, column)))
            except DBAPIError:
                # Another process may have added it a moment ago.
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue
            added.append(f"{table.name}.{column.name}")
            log.info("index: added column %s.%s", table.name, column.name)
    return added

"""Bring an index made by an earlier release up to the current tables.

``metadata.create_all`` creates missing tables but never alters one that
exists.  A column added to an existing table since is added here, at
start-up, by ``ALTER TABLE … ADD COLUMN`` — only columns that are nullable
or have a scalar default qualify, so the old rows stay valid.  Idempotent,
and safe when several processes start together (a column another process
added meanwhile is not an error).
"""

from __future__ import annotations

import logging

from sqlalchemy import Column, Engine, MetaData, inspect, text
from sqlalchemy.exc import DBAPIError

__all__ = ["add_missing_columns"]

log = logging.getLogger("pacsnode.index")


def _column_ddl(engine: Engine, column: Column) -> str:
    kind = column.type.compile(dialect=engine.dialect)
    ddl = f'ADD COLUMN "{column.name}" {kind}'
    default = column.default.arg if column.default is not None else None
    if default is not None and not callable(default):
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

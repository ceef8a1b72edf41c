"""Database engine set-up for SQLite (default, WAL) and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from .schema import metadata

__all__ = ["Database"]


class Database:
    """An engine plus the write discipline of its dialect.

    SQLite allows one writer: writers in this process queue on a lock and
    start with ``BEGIN IMMEDIATE`` so a writer in another process (``pacsnode
    import`` beside ``serve``) makes us wait (busy timeout) instead of failing
    half-way.  PostgreSQL needs neither.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs.update(pool_size=8, max_overflow=24, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            self._setup_sqlite()
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._create_tables()

    def _create_tables(self) -> None:
        """CREATE … IF NOT EXISTS; two processes starting together on a fresh
        PostgreSQL database can collide in its catalogue, so try again."""
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                return
            except DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _setup_sqlite(self) -> None:
        # WAL with synchronous=NORMAL: a commit survives a crash of the
        # process; a power failure may lose the last commits, but never a
        # blob (each is fsynced before its row is written), and `pacsnode
        # check --repair` re-indexes blobs without rows.
        sync = "NORMAL"

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("sqlite_immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends without error."""
        lock = self._write_lock or nullcontext()
        with lock:
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()

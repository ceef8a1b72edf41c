"""Database engine set-up for SQLite (default, WAL) and PostgreSQL."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from .migrations import add_missing_columns, run_migrations
from .schema import metadata

__all__ = ["Database", "RawStatement", "WriteBusy", "inserted_id"]

log = logging.getLogger("pacsnode.index")

#: Seconds between background WAL checkpoints while there are writes.
CHECKPOINT_SECONDS = 1.0
#: WAL pages after which SQLite checkpoints by itself (~40 MB).
AUTOCHECKPOINT_PAGES = 10000
#: The query planner's statistics are taken again when the instances table
#: has grown this many times since they were last taken ...
STATS_GROWTH = 2
#: ... and not before it holds this many rows.
STATS_MIN_ROWS = 100
#: Index entries ANALYZE reads per index (PRAGMA analysis_limit): a sampled
#: analysis takes a few ms at 100k instances.
ANALYSIS_LIMIT = 1000


class WriteBusy(Exception):
    """The write lock is held by another writer (``write_lock(wait=False)``)."""


class Database:
    """An engine plus the write discipline of its dialect.

    SQLite allows one writer: writers in this process queue on a lock, and
    writers of all processes (``serve``'s DIMSE workers, ``pacsnode import``
    beside ``serve``) on an exclusive ``flock`` of ``<index>.writelock``:
    the kernel hands the lock over the moment it is released, where SQLite's
    busy handler would poll with sleeps of up to 100 ms.  Transactions still
    start with ``BEGIN IMMEDIATE`` (a writer that does not take the file lock
    makes us wait on the busy timeout instead of failing half-way).
    PostgreSQL needs none of this.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
            # The connection used last is handed out next: each SQLite
            # connection has its own page cache, which another connection's
            # commit invalidates; taken in turn (the default), every ingest
            # re-read about ten pages written by the one before.
            kwargs["pool_use_lifo"] = True
        else:
            kwargs.update(pool_size=8, max_overflow=24, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            self._setup_sqlite()
        self._write_lock = threading.RLock() if self.is_sqlite else None
        self._write_depth = 0  # nested write_lock() of the thread holding it
        self._lock_path = _sqlite_lock_path(url) if self.is_sqlite else None
        self._lock_fd: int | None = None
        self._wrote = threading.Event()
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._create_tables()
        run_migrations(self)

    def _create_tables(self) -> None:
        """CREATE … IF NOT EXISTS; two processes starting together on a fresh
        PostgreSQL database can collide in its catalogue, so try again."""
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                add_missing_columns(self.engine, metadata)
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
            # Checkpoints run on a thread of their own (see _checkpoints);
            # this is only the backstop of a process that writes without one.
            cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("sqlite_immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    @contextmanager
    def write_lock(self, wait: bool = True) -> Iterator[None]:
        """Held around every write transaction (SQLite; a no-op on PostgreSQL).
        Re-entrant within a thread.  ``wait=False``: raise WriteBusy at once
        instead of queueing behind another writer (of this process or any
        other)."""
        lock = self._write_lock
        if lock is None:
            yield
            return
        if not lock.acquire(blocking=wait):
            raise WriteBusy("another writer of this process holds the index")
        try:
            self._write_depth += 1
            fd = self._lock_file() if self._write_depth == 1 else None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise WriteBusy("another process is writing the index") from None
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    self._wrote.set()
                    if self._checkpointer is None or self._lock_pid != self._checkpointer_pid:
                        self._start_checkpointer()
        finally:
            self._write_depth -= 1
            lock.release()

    def _start_checkpointer(self) -> None:
        self._checkpointer_pid = os.getpid()
        self._checkpointer = threading.Thread(target=self._checkpoints, daemon=True,
                                              name="pacsnode-checkpoint")
        self._checkpointer.start()

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database file, off the writers' path.

        With SQLite's automatic checkpoint, every few dozen commits one paid
        for writing back and fsyncing the pages of all the others; here a
        passive checkpoint (it never blocks a writer) runs about once a
        second while there are writes, each page written once however often
        it changed."""
        while not self._closing.wait(CHECKPOINT_SECONDS):
            if not self._wrote.is_set():
                continue
            self._wrote.clear()
            try:
                raw = self.engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    raw.close()
            except Exception as exc:  # the next one will try again
                log.debug("checkpoint: %s", exc)
            self.refresh_statistics()

    def refresh_statistics(self) -> bool:
        """Take the query planner's statistics (a sampled ANALYZE) when the
        index has none yet or has grown STATS_GROWTH times since; whether it
        did.  SQLite, on its own; PostgreSQL's autovacuum analyses by itself.

        Without statistics SQLite's planner walks a table in id order to
        spare itself a sort: a SERIES query on PatientName=DOE* scanned every
        series (a time growing with the archive) instead of going from the
        name's index to the few matching series.
        Called by ``serve`` when it starts and after writes; skipped, not
        waited for, while another writer holds the index.  The size they
        were taken at is read from ``sqlite_stat1``, so processes and
        restarts share it."""
        if not self.is_sqlite:
            return False
        try:
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                # The rowid b-tree's last entry: a cheap measure of growth.
                rows = cur.execute("SELECT max(id) FROM instances").fetchone()[0] or 0
                if rows < max(STATS_MIN_ROWS, _analysed_rows(cur) * STATS_GROWTH):
                    return False
                with self.write_lock(wait=False):
                    cur.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
                    cur.execute("ANALYZE")
                log.info("query planner statistics taken at %d instances", rows)
                return True
            finally:
                raw.close()
        except WriteBusy:
            return False
        except Exception as exc:  # the next write will try again
            log.debug("statistics: %s", exc)
            return False

    def _lock_file(self) -> int | None:
        """The lock file's descriptor, opened on first use (and again in a
        forked child, which must not share its parent's lock)."""
        if self._lock_path is None:
            return None
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o644)
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends without error."""
        with self.write_lock():
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn

    @contextmanager
    def raw_write(self) -> Iterator[Any]:
        """A DBAPI cursor in a write transaction, for the ingest's hot path
        (SQLAlchemy's Connection costs more per statement than SQLite's
        work); committed when the block ends without error."""
        with self.write_lock():
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                if self.is_sqlite:
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    if self.is_sqlite:
                        cur.execute("ROLLBACK")
                    else:
                        raw.rollback()
                    raise
                if self.is_sqlite:
                    cur.execute("COMMIT")
                else:
                    raw.commit()
                cur.close()
            finally:
                raw.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self._closing.set()
        if self._checkpointer is not None and self._checkpointer_pid == os.getpid():
            self._checkpointer.join(timeout=30)
        self.engine.dispose()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None

    _lock_pid = 0
    _checkpointer_pid = 0


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT of one row added."""
    key = result.inserted_primary_key
    if key is None:
        raise ValueError("the statement inserted no row with a primary key")
    return int(key[0])


def _analysed_rows(cur: DBAPICursor) -> int:
    """Rows of ``instances`` when its statistics were taken (the first number
    of its sqlite_stat1 entries); 0 when there are none."""
    try:
        row = cur.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = 'instances' "
                          "LIMIT 1").fetchone()
    except Exception:  # no sqlite_stat1 before the first ANALYZE
        return 0
    return int(row[0].split()[0]) if row else 0


def _sqlite_lock_path(url: str) -> str | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + ".writelock"


class RawStatement:
    """A SQLAlchemy statement compiled once for a dialect, executed on a DBAPI
    cursor with parameters taken from a mapping by name."""

    def __init__(self, stmt: ClauseElement, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        if not isinstance(compiled, SQLCompiler):  # DDL compiles otherwise
            raise TypeError(f"not a SQL statement: {stmt}")
        self.sql = compiled.string
        self.names: Sequence[str] | None = (list(compiled.positiontup or [])
                                            if engine.dialect.positional else None)
        self.returning = bool(getattr(compiled, "returning", None))
        # Values the statement carries itself (literals in a WHERE or SET).
        self.fixed = {name: bind.effective_value for name, bind in compiled.binds.items()
                      if not bind.required}

    def params(self, values: Mapping[str, Any]) -> Any:
        if self.fixed:
            values = {**self.fixed, **values}
        if self.names is None:
            return values
        return tuple([values[name] for name in self.names])

    def execute(self, cur: DBAPICursor, values: Mapping[str, Any]) -> DBAPICursor:
        cur.execute(self.sql, self.params(values))
        return cur

    def insert(self, cur: DBAPICursor, values: Mapping[str, Any]) -> int:
        """Run an INSERT; the new row's primary key."""
        cur.execute(self.sql, self.params(values))
        if self.returning:
            row = cur.fetchone()
            if row is None:
                raise ValueError("the INSERT … RETURNING returned no row")
            return int(row[0])
        return int(cur.lastrowid)

    def insert_many(self, cur: DBAPICursor, rows: Sequence[Mapping[str, Any]]) -> None:
        cur.executemany(self.sql, [self.params(row) for row in rows])

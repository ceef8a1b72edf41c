"""The blob store: where instance files live.

``FileStore`` is the one backend: files under ``data_dir``, written to a
temp file in ``incoming/`` and renamed into place once synced.  The
readers (``retrieve.py``, WADO-RS, C-GET/C-MOVE) open the files by path,
so another backend (an object store) would need more than these methods.
Keys are ``studies/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` — browsable by a
person.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

if TYPE_CHECKING:
    import asyncio

__all__ = ["FileStore", "InFlight", "SubmitFsync", "Syncing", "blob_key",
           "fsync_started", "start_writeback"]

#: A started fsync: the fsync threads' future, or an event loop's (AIO).
Syncing = Union["Future[None]", "asyncio.Future[None]"]
#: Starts fsync(fd) some other way (an event loop's AIO, see aiosync.py;
#: ``fsync_started``): a future that is done when the fsync is, the
#: descriptor then closed; or None, the descriptor still the caller's, to
#: use the fsync threads.
SubmitFsync = Callable[[int], "Syncing | None"]

_TEMP_NUMBERS = itertools.count()
#: In-flight file names: ``in-<writer>-<n>.part``.
_IN_FLIGHT = re.compile(r"in-([0-9a-f]+)-\d+\.part")
#: Folder (under the blob root) of the writers' lock files.
WRITERS = ".writers"
#: A writer's lock file still under its first name, younger than this, may
#: be one being made (``_Writers.token``): left alone.
_NEW_WRITER_AGE = 600.0
#: Write buffer of a temp file: a small instance arriving in 16 KiB PDVs is
#: one write() at the end instead of one per fragment.
TEMP_BUFFER = 64 * 1024
_SYNCER: ThreadPoolExecutor | None = None
_SYNCER_PID = 0
_SYNCER_LOCK = threading.Lock()


def _syncer() -> ThreadPoolExecutor:
    """The process's fsync threads (made again in a forked child)."""
    global _SYNCER, _SYNCER_PID
    with _SYNCER_LOCK:
        if _SYNCER is None or _SYNCER_PID != os.getpid():
            _SYNCER = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pacsnode-fsync")
            _SYNCER_PID = os.getpid()
        return _SYNCER


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a file's dirty range back, without
    waiting (POSIX_FADV_DONTNEED starts the writeback of dirty pages and
    leaves them cached; it can block on the disk queue, so it runs on the
    fsync threads, on a duplicate of ``fd`` that the caller may close)."""
    dup = os.dup(fd)
    try:
        _syncer().submit(_writeback_and_close, dup, offset, length)
    except BaseException:
        os.close(dup)
        raise


def _writeback_and_close(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_started(fd: int) -> "Future[None]":
    """A SubmitFsync that hands fsync(fd) to the fsync threads and returns
    once one of them has it (a thread switch, tens of µs), so that the
    fsync runs now, beside the caller's next steps, and not only when the
    caller next lets go of the GIL.  For a caller whose next steps hold the
    GIL (the header walk) and that has a CPU to spare: Linux AIO's fsync
    runs on a kernel worker of the submitting CPU, in the caller's way (see
    ``durability.IngestScheduler``)."""
    taken = threading.Lock()
    taken.acquire()
    future = _syncer().submit(_fsync_and_close, fd, taken)
    taken.acquire(timeout=0.01)  # every thread busy: it runs when one is free
    return future


def _fsync_and_close(fd: int, taken: threading.Lock | None = None) -> None:
    if taken is not None:
        taken.release()
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class InFlight:
    """A file in ``incoming/``; ``held``: its writer (a process of this node,
    here or on another host sharing the blob root) is alive, so the file is
    being written or ingested and is nobody else's to touch."""
    path: Path
    held: bool


class _Writers:
    """The in-flight files of a process belong to it (DESIGN.md §12).

    Each process that writes under a blob root makes, once, a lock file
    ``<root>/.writers/<token>.lock`` and holds an exclusive flock on it for
    as long as it lives; its in-flight files are named
    ``incoming/in-<token>-<n>.part``.  A file is therefore held while its
    writer lives — through the writing, the fsync, the header walk and the
    index transaction — and free once the writer is gone (flock locks go
    with the process, ``kill -9`` included, and are seen across hosts on a
    shared file system that supports them, as NFSv4 does).  One lock per
    process and root, not per file: nothing is added to an instance's cost,
    and no descriptor has to outlive the writer's file object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: root → (pid, token, lock file descriptor)
        self._tokens: dict[Path, tuple[int, str, int]] = {}

    def token(self, root: Path) -> str:
        """This process's token under ``root`` (made again in a forked
        child)."""
        entry = self._tokens.get(root)
        pid = os.getpid()
        if entry is not None and entry[0] == pid:
            return entry[1]
        with self._lock:
            entry = self._tokens.get(root)
            if entry is not None and entry[0] == pid:
                return entry[1]
            folder = root / WRITERS
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                token = secrets.token_hex(8)
                # Locked under a first name and then renamed, so that a
                # cleaner never finds the final name unlocked while it lives.
                new = folder / f"{token}.new"
                fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    os.rename(new, folder / f"{token}.lock")
                except FileNotFoundError:
                    os.close(fd)
                    continue
                self._tokens[root] = (pid, token, fd)
                return token

    def held(self, root: Path, token: str) -> bool:
        """Whether the writer ``token`` under ``root`` is alive."""
        entry = self._tokens.get(root)
        if entry is not None and entry[0] == os.getpid() and entry[1] == token:
            return True
        try:
            fd = os.open(root / WRITERS / f"{token}.lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the probe's lock, if it got it
        return False


_WRITERS = _Writers()


def blob_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    # UIDs are validated before they get here (digits and dots only), so they
    # cannot climb out of the root.
    return f"studies/{study_uid}/{series_uid}/{sop_uid}.dcm"


class FileStore:
    """Files under a root folder, written atomically.

    New data goes to a temporary file under ``<root>/incoming`` (the same
    filesystem as its destination), is fsynced (by the ingest path, before
    any lock), then renamed into place.  The folders are not fsynced: the
    blob's bytes are durable before the rename, and a rename lost to a power
    failure leaves a complete file in ``incoming/`` that ``pacsnode check
    --repair`` ingests (see docs/ARCHITECTURE.md, "Durability").
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        (self.root / "studies").mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def new_temp(self) -> tuple[BinaryIO, Path]:
        # Names from this writer's token (see _Writers: the file is held while
        # this process lives) and a counter, cheaper than tempfile's random
        # ones; O_EXCL guards all the same.
        token = _WRITERS.token(self.root)
        while True:
            name = str(self.incoming / f"in-{token}-{next(_TEMP_NUMBERS)}.part")
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            return os.fdopen(fd, "w+b", buffering=TEMP_BUFFER), Path(name)

    def sync_temp(self, temp: Path, submit: SubmitFsync | None = None) -> Syncing | None:
        """Start making a temp file's bytes durable (before it is renamed into
        place); the caller waits on the returned future (concurrent, or
        asyncio's from ``submit``).  The fsync runs beside the caller, so
        that the ingest parses the header meanwhile (the two took about as
        long as each other for a small instance): by ``submit`` when given
        and it takes it, else on a thread of its own."""
        if not self.fsync:
            return None
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if submit is not None:
                started = submit(fd)
                if started is not None:
                    return started
            return _syncer().submit(_fsync_and_close, fd)
        except BaseException:
            os.close(fd)
            raise

    def commit_temp(self, temp: Path, key: str) -> None:
        """Rename a (synced) temp file to its key, atomically."""
        dest = self.path(key)
        try:
            os.replace(temp, dest)
        except FileNotFoundError:
            if not temp.exists():
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, dest)

    def uncommit_temp(self, key: str, temp: Path) -> None:
        """Move a blob back to its temp file (its index rows were rolled back)."""
        os.replace(self.path(key), temp)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # Tidy empty series/study folders so the tree stays browsable.
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def keys(self) -> Iterator[str]:
        studies = self.root / "studies"
        for dirpath, _dirs, files in os.walk(studies):
            for name in files:
                if name.endswith(".dcm"):
                    yield os.path.relpath(os.path.join(dirpath, name), self.root)

    def in_flight(self) -> list[InFlight]:
        """The files in ``incoming/``, each with whether a live writer holds
        it (any other name there is nobody's)."""
        out: list[InFlight] = []
        alive: dict[str, bool] = {}
        for path in sorted(self.incoming.iterdir()):
            if not path.is_file():
                continue
            match = _IN_FLIGHT.fullmatch(path.name)
            held = False
            if match is not None:
                token = match.group(1)
                if token not in alive:
                    alive[token] = _WRITERS.held(self.root, token)
                held = alive[token]
            out.append(InFlight(path, held))
        return out

    def claim(self, path: Path) -> Path | None:
        """Make an in-flight file nobody holds this process's (a rename to a
        name of its own), so that of several processes cleaning at once
        one alone ingests or removes it; None when another took it first."""
        token = _WRITERS.token(self.root)
        while True:
            name = self.incoming / f"in-{token}-{next(_TEMP_NUMBERS)}.part"
            if name.exists():
                continue
            try:
                os.rename(path, name)
            except FileNotFoundError:
                return None
            return name

    def forget_writers(self) -> int:
        """Remove the lock files of writers that are gone and hold no
        in-flight file any more; how many."""
        folder = self.root / WRITERS
        if not folder.is_dir():
            return 0
        tokens = {m.group(1) for p in self.incoming.iterdir()
                  if (m := _IN_FLIGHT.fullmatch(p.name)) is not None}
        removed = 0
        now = time.time()
        for lock in folder.iterdir():
            token, kind = lock.stem, lock.suffix
            if token in tokens or kind not in (".lock", ".new"):
                continue
            try:
                if kind == ".new" and now - lock.stat().st_mtime < _NEW_WRITER_AGE:
                    continue
            except FileNotFoundError:
                continue
            if kind == ".lock" and _WRITERS.held(self.root, token):
                continue
            lock.unlink(missing_ok=True)
            removed += 1
        return removed


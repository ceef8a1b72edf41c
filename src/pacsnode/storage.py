"""The blob store: where instance files live.

A small protocol (put / open / path / delete / keys) so that an object-store
backend can follow the filesystem one (STYLE.md habit 8).  Keys are
``studies/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` — browsable by a person.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Union

if TYPE_CHECKING:
    import asyncio

__all__ = ["BlobStore", "FileStore", "SubmitFsync", "Syncing", "blob_key", "fsync_started",
           "start_writeback"]

#: A started fsync: the fsync threads' future, or an event loop's (AIO).
Syncing = Union["Future[None]", "asyncio.Future[None]"]
#: Starts fsync(fd) some other way (an event loop's AIO, see aiosync.py;
#: ``fsync_started``): a future that is done when the fsync is, the
#: descriptor then closed; or None, the descriptor still the caller's, to
#: use the fsync threads.
SubmitFsync = Callable[[int], "Syncing | None"]

_TEMP_NUMBERS = itertools.count()
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
    ``Association._ingest``)."""
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


def blob_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    # UIDs are validated before they get here (digits and dots only), so they
    # cannot climb out of the root.
    return f"studies/{study_uid}/{series_uid}/{sop_uid}.dcm"


class BlobStore(Protocol):
    def new_temp(self) -> tuple[BinaryIO, Path]: ...
    def sync_temp(self, temp: Path, submit: SubmitFsync | None = None) -> Syncing | None: ...
    def commit_temp(self, temp: Path, key: str) -> None: ...
    def uncommit_temp(self, key: str, temp: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def path(self, key: str) -> Path: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> Iterator[str]: ...


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
        # Names from a per-process counter, cheaper than tempfile's random
        # ones; O_EXCL still guards against a name left over by an earlier
        # process with the same pid.
        while True:
            name = str(self.incoming / f"in-{os.getpid()}-{next(_TEMP_NUMBERS)}.part")
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

    def temp_files(self) -> list[Path]:
        return sorted(self.incoming.glob("in-*.part"))


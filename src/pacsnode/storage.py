"""The blob store: where instance files live.

A small protocol (put / open / path / delete / keys) so that an object-store
backend can follow the filesystem one (STYLE.md habit 8).  Keys are
``studies/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` — browsable by a person.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["BlobStore", "FileStore", "blob_key"]


def blob_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    # UIDs are validated before they get here (digits and dots only), so they
    # cannot climb out of the root.
    return f"studies/{study_uid}/{series_uid}/{sop_uid}.dcm"


class BlobStore(Protocol):
    def new_temp(self) -> tuple[BinaryIO, Path]: ...
    def commit_temp(self, temp: Path, key: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def path(self, key: str) -> Path: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> Iterator[str]: ...


class FileStore:
    """Files under a root folder, written atomically.

    New data goes to a temporary file under ``<root>/incoming`` (the same
    filesystem as its destination), is fsynced, then renamed into place and
    the destination folder fsynced.  A crash leaves either the old file, the
    new file, or an orphan temp file that ``pacsnode check`` clears.
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        (self.root / "studies").mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def new_temp(self) -> tuple[BinaryIO, Path]:
        fd, name = tempfile.mkstemp(prefix="in-", suffix=".part", dir=self.incoming)
        return os.fdopen(fd, "w+b"), Path(name)

    def commit_temp(self, temp: Path, key: str) -> None:
        dest = self.path(key)
        folder = dest.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_dir(folder.parent)
        if self.fsync:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temp, dest)
        if self.fsync:
            _fsync_dir(folder)

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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

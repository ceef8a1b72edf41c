"""The only writer: every instance, whatever brought it (C-STORE, STOW-RS,
``pacsnode import``, a retrieve job), is stored by ``Ingestor.ingest_temp``.

Order of a store (two phases, events after commit):
  1. the bytes are in a temp file under the blob root (same filesystem);
  2. the header is read once (``dicom/read.py``: up to Pixel Data, the fast
     reader, else pydicom) and validated, while the temp file is fsynced
     beside it;
  3. the instance joins a group commit: in one write transaction with the
     instances that arrived meanwhile, duplicate check, index rows, and the
     rename into ``studies/<Study>/<Series>/<SOP>.dcm`` as the last step;
  4. commit — only now is the instance acknowledged — then the event.
A crash before 4 leaves at worst a file with no index row, which
``pacsnode check --repair`` indexes; never an index row without its file.

``ingest_temp``/``ingest_temps`` take those steps on the caller's thread and
return once the instance is durable and indexed.  A caller that must not
block (the DIMSE event loop) takes them one at a time — ``check``, ``staged``,
``commit_now`` — as ``durability.IngestScheduler`` decides.
"""

from __future__ import annotations

import enum
import logging
import mmap
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypedDict, cast

from pydicom.filebase import DicomIO
from pydicom.filewriter import write_file_meta_info
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from .dicom.catalogue import Level
from .dicom.header import ParsedHeader, valid_uid
from .dicom.read import NeedsPydicom, read_instance
from .dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_meta
from .dicom.wholeness import Incomplete, file_layout
from .errors import (ConflictingInstance, DuplicateRefused, InvalidInstance, InvalidUID,
                     PacsnodeError, SOPMismatch, StorageFailure, StudyMismatch)
from .events import Event, EventBus, Origin
from .index.db import Database, RawStatement, WriteBusy
from .index.schema import changes, instances, item_attrs, patients, series, studies
from .index.extra_index import record_extra_tags
from .storage import FileStore, Syncing, blob_key

log = logging.getLogger("pacsnode.ingest")

__all__ = ["Outcome", "IngestResult", "Ingestor", "Staged", "same_data_set", "tally",
           "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION"]

IMPLEMENTATION_VERSION = IMPLEMENTATION_VERSION_NAME


#: Attempts at one instance's transaction (on PostgreSQL, writers of other
#: processes creating the same patient/study/series, or a deadlock between two
#: batches, make one fail and the next succeed).
ATTEMPTS = 8


class _Statements:
    """The ingest's SQL, compiled once for the database's dialect and run on a
    DBAPI cursor: building and executing through SQLAlchemy's Connection cost
    several times SQLite's own work per instance."""

    def __init__(self, db: Database) -> None:
        engine = db.engine
        returning = not db.is_sqlite

        def raw(stmt: Any) -> RawStatement:
            return RawStatement(stmt, engine)

        def inserting(table: Any) -> RawStatement:
            cols = [c for c in table.c if not (c.primary_key and c.autoincrement)]
            stmt = insert(table).values({c.name: bindparam(c.name) for c in cols})
            if returning:
                stmt = stmt.returning(*[c for c in table.c if c.primary_key])
            return raw(stmt)

        self.existing = raw(
            select(instances.c.id, instances.c.blob_key, studies.c.studyinstanceuid,
                   series.c.seriesinstanceuid)
            .join(series, series.c.id == instances.c.series_fk)
            .join(studies, studies.c.id == instances.c.study_fk)
            .where(instances.c.sopinstanceuid == bindparam("uid")))
        self.series = raw(
            select(series.c.id, series.c.study_fk, studies.c.studyinstanceuid)
            .join(studies, studies.c.id == series.c.study_fk)
            .where(series.c.seriesinstanceuid == bindparam("uid")))
        self.study = raw(select(studies.c.id)
                         .where(studies.c.studyinstanceuid == bindparam("uid")))
        self.patient = raw(select(patients.c.id).where(
            patients.c.patientid == bindparam("pid"),
            patients.c.issuerofpatientid == bindparam("issuer")))
        self.insert = {t.name: inserting(t) for t in (patients, studies, series, instances,
                                                      changes)}
        self.insert_items = inserting(item_attrs)
        # Column defaults, so a row needs only the values it has.
        self.defaults = {t.name: {c.name: c.default.arg for c in t.c
                                  if isinstance(c.default, ScalarElementColumnDefault)}
                         for t in (patients, studies, series, instances, changes)}

    def add(self, cur: Any, table: str, values: dict[str, Any]) -> int:
        row = dict(self.defaults[table])
        row.update(values)
        return self.insert[table].insert(cur, row)


@dataclass(eq=False)
class _Pending:
    """One instance on its way into the index, in a group commit's batch."""
    temp: Path
    key: str
    size: int
    parsed: ParsedHeader
    origin: Origin
    outcome: Outcome | None = None
    seq: int = 0
    kept: bool = False
    renamed: bool = False
    error: BaseException | None = None
    done: bool = False
    #: A thread's fsync still under way, waited for in the transaction
    #: before the rename (``commit_now``).
    syncing: Future[None] | None = None


@dataclass(eq=False)
class Staged:
    """An instance parsed and validated with its fsync under way
    (``Ingestor.stage``): what is left is to wait for the fsync and write
    the index (``Ingestor.commit``)."""
    pending: _Pending
    syncing: Syncing | None
    error: BaseException | None = None

    def wait(self) -> None:
        """Wait for the fsync; a failure is kept for ``commit`` to report."""
        if self.syncing is not None:
            try:
                self.syncing.result()
            except Exception as exc:
                self.error = exc
            self.syncing = None


class _NotDurable(Exception):
    """An instance's fsync failed inside its transaction (``commit_now``
    of an instance whose fsync was under way)."""

    def __init__(self, item: _Pending, error: BaseException) -> None:
        super().__init__(str(error))
        self.item, self.error = item, error


class Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    REPLACED = "replaced"
    REFUSED = "refused"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self in (Outcome.STORED, Outcome.ALREADY_STORED, Outcome.REPLACED)


def tally(counts: Mapping[str, int]) -> str:
    """``"1998 stored, 2 refused"``: how many instances had each outcome
    (keys: ``Outcome`` values), those that happened, in the enum's order;
    empty when none did."""
    return ", ".join(f"{counts[o.value]} {o.value}" for o in Outcome if counts.get(o.value))


@dataclass
class IngestResult:
    outcome: Outcome
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    error: PacsnodeError | None = None
    #: True when an existing, different instance was kept (policy "keep").
    kept_existing: bool = False

    @property
    def reason(self) -> str:
        return self.error.reason if self.error else ""


class Ingestor:
    def __init__(self, db: Database, store: FileStore, bus: EventBus | None = None,
                 duplicate_policy: str = "replace") -> None:
        self.db = db
        self.store = store
        self.bus = bus or EventBus()
        self.duplicate_policy = duplicate_policy
        self._sql = _Statements(db)
        # Group commit: instances arriving while a transaction runs wait for
        # the next one, which writes all of them (one BEGIN/COMMIT, one WAL
        # write); the first to arrive leads it.
        self._group = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False

    # -- entry points: each gets the bytes into a temp file, then ingest_temp

    def ingest_path(self, path: str | os.PathLike[str], origin: Origin, **kw: Any) -> IngestResult:
        """Copy a file into the store's temp area and ingest it."""
        fh, temp = self.store.new_temp()
        try:
            with fh, open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1024 * 1024)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            return IngestResult(Outcome.FAILED, error=StorageFailure(f"cannot read {path}: {exc}"))
        return self.ingest_temp(temp, origin, **kw)

    def ingest_chunks(self, chunks: Iterable[bytes], origin: Origin, **kw: Any) -> IngestResult:
        fh, temp = self.store.new_temp()
        try:
            with fh:
                for chunk in chunks:
                    fh.write(chunk)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            return IngestResult(Outcome.FAILED, error=StorageFailure(f"cannot write: {exc}"))
        return self.ingest_temp(temp, origin, **kw)

    def ingest_dataset(self, dataset_bytes: bytes | BinaryIO, transfer_syntax: str,
                       sop_class_uid: str, sop_instance_uid: str, origin: Origin) -> IngestResult:
        """A C-STORE data set as received (no file meta): wrap it in Part 10 and
        ingest, checking it against the command's SOP Class/Instance UIDs."""
        fh, temp = self.store.new_temp()
        try:
            with fh:
                fh.write(b"\x00" * 128 + b"DICM")
                # pydicom only calls fp.write (it encodes into its own buffer)
                write_file_meta_info(cast(DicomIO, fh),
                                     file_meta(sop_class_uid, sop_instance_uid,
                                               transfer_syntax), enforce_standard=True)
                if isinstance(dataset_bytes, (bytes, bytearray, memoryview)):
                    fh.write(dataset_bytes)
                else:
                    shutil.copyfileobj(dataset_bytes, fh, 1024 * 1024)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            return IngestResult(Outcome.FAILED, error=StorageFailure(f"cannot write: {exc}"))
        return self.ingest_temp(temp, origin, expected_sop=(sop_class_uid, sop_instance_uid))

    # -- the one path

    def ingest_temp(self, temp: Path, origin: Origin, *, expected_study: str | None = None,
                    expected_sop: tuple[str, str] | None = None) -> IngestResult:
        """Ingest a Part 10 (or bare data set) file that sits in the store's
        temp area.  The temp file is always consumed."""
        return self.ingest_temps([temp], origin, expected_study=expected_study,
                                 expected_sop=expected_sop)[0]

    def ingest_temps(self, temps: list[Path], origin: Origin, *,
                     expected_study: str | None = None,
                     expected_sop: tuple[str, str] | None = None) -> list[IngestResult]:
        """Ingest several temp files (a STOW-RS request's parts) together:
        their fsyncs run side by side while the headers are parsed, and their
        rows go into the index in the given order, in shared transactions.
        One result per file, in order; every temp file is consumed."""
        staged = [self.stage(temp, origin, expected_study=expected_study,
                             expected_sop=expected_sop) for temp in temps]
        for item in staged:
            if isinstance(item, Staged):
                item.wait()
        return self.commit(staged)

    def stage(self, temp: Path, origin: Origin, *, expected_study: str | None = None,
              expected_sop: tuple[str, str] | None = None) -> Staged | IngestResult:
        """Steps 1-2 of a store, which take no lock: start the temp file's
        fsync (on the fsync threads) and meanwhile read and validate its
        header.  A refusal comes back as an IngestResult (the temp file
        removed)."""
        try:
            syncing = self.store.sync_temp(temp)
        except Exception as exc:
            return self.failed(temp, origin, exc, None)
        checked = self.check(temp, origin, expected_study=expected_study,
                             expected_sop=expected_sop)
        if isinstance(checked, IngestResult):
            return checked
        assert checked is not None
        return self.staged(temp, origin, *checked, syncing)

    def check(self, temp: Path, origin: Origin, *, expected_study: str | None = None,
              expected_sop: tuple[str, str] | None = None, head: bytes | None = None,
              size: int = 0, fast_only: bool = False
              ) -> tuple[ParsedHeader, int] | IngestResult | None:
        """Step 2 alone: the header read (``dicom.read.read_instance``) and
        validated, and the file's size; a refusal as an IngestResult (the
        temp file removed).  ``head``/``size``: the file's first bytes and
        length, known to a caller that just wrote it.  ``fast_only``: None,
        with nothing done, when the header needs pydicom's reader (which can
        read a whole file)."""
        parsed = None
        try:
            parsed, size = read_instance(temp, fast_only=fast_only, head=head, size=size,
                                         data_set=expected_sop is not None)
            self._validate(parsed, expected_study, expected_sop)
        except NeedsPydicom:
            return None
        except Exception as exc:
            return self.failed(temp, origin, exc, parsed)
        return parsed, size

    @staticmethod
    def staged(temp: Path, origin: Origin, parsed: ParsedHeader, size: int,
               syncing: Syncing | None) -> Staged:
        """A checked instance whose fsync is under way (``syncing``), to commit."""
        key = blob_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid)
        return Staged(_Pending(temp, key, size, parsed, origin), syncing)

    def commit(self, staged: list[Staged | IngestResult]) -> list[IngestResult]:
        """Steps 3-4 for instances whose fsync is done (``Staged.wait``):
        index rows and blobs in place, in order, in a group commit; then the
        log lines and events.  One result per item."""
        results = self._commit(staged, True, None, None)
        assert results is not None
        return results

    def commit_now(self, staged: list[Staged | IngestResult], *,
                   emit: Callable[[Event], None] | None = None,
                   announce: list[Callable[[], None]] | None = None
                   ) -> list[IngestResult] | None:
        """``commit`` without waiting for the index: on SQLite, None with
        nothing done when the write lock is not free at once (another batch
        of this process, or another process, is writing); on PostgreSQL
        always None.  Events go through ``emit`` (by default the bus's) —
        or, given ``announce``, the log lines and events are appended to it,
        for the caller to run once it has answered the sender.

        An instance whose fsync (on the fsync threads) is still under way
        has its rows written meanwhile, and its blob renamed into place only
        once that fsync is done (a failed one fails that instance alone), so
        the order stays fsync, rename, commit.  When None comes back the
        fsyncs are still the caller's to wait for."""
        return self._commit(staged, False, emit, announce)

    def _commit(self, staged: list[Staged | IngestResult], wait: bool,
                emit: Callable[[Event], None] | None,
                announce: list[Callable[[], None]] | None) -> list[IngestResult] | None:
        results: list[IngestResult | None] = [None] * len(staged)
        pendings: list[tuple[int, _Pending]] = []
        for n, item in enumerate(staged):
            if isinstance(item, IngestResult):
                results[n] = item
            elif item.error is not None:
                results[n] = self.failed(item.pending.temp, item.pending.origin, item.error,
                                         item.pending.parsed)
            else:
                if item.syncing is not None:
                    assert not wait, "fsync not waited for"
                    assert isinstance(item.syncing, Future), "an AIO fsync is awaited first"
                item.pending.syncing = item.syncing
                pendings.append((n, item.pending))
        if pendings:
            batch = [pending for _, pending in pendings]
            try:
                if wait:
                    self._index(batch)
                elif not self._index_now(batch):
                    return None
            except Exception as exc:
                for pending in batch:
                    pending.error = pending.error or exc
        for n, pending in pendings:
            results[n] = (self.failed(pending.temp, pending.origin, pending.error,
                                      pending.parsed)
                          if pending.error is not None else
                          self._finish(pending, emit or self.bus.emit, announce))
        return [r for r in results if r is not None]

    def failed(self, temp: Path, origin: Origin, exc: BaseException,
               parsed: ParsedHeader | None) -> IngestResult:
        """A refusal (PacsnodeError) or a failure (disk, database: never the
        caller's problem); the temp file is removed."""
        temp.unlink(missing_ok=True)
        if isinstance(exc, PacsnodeError):
            log.warning("refused instance from %s: %s", origin.describe(), exc.reason)
            return IngestResult(Outcome.REFUSED if not isinstance(exc, StorageFailure)
                                else Outcome.FAILED, error=exc, **_uids_or_empty(parsed))
        log.error("failed to store instance from %s", origin.describe(), exc_info=exc)
        return IngestResult(Outcome.FAILED, error=StorageFailure(f"storage failed: {exc}"),
                            **_uids_or_empty(parsed))

    def _finish(self, pending: _Pending, emit: Callable[[Event], None],
                announce: list[Callable[[], None]] | None = None) -> IngestResult:
        """After the commit: the log line and the event (see ``commit``)."""
        p, outcome = pending.parsed, pending.outcome
        assert outcome is not None
        uids = _uids_or_empty(p)
        if outcome is Outcome.ALREADY_STORED:
            pending.temp.unlink(missing_ok=True)
            return IngestResult(outcome, kept_existing=pending.kept, **uids)

        def tell() -> None:
            # A replacement changes what is stored: logged at INFO.  A new
            # instance is logged at DEBUG: the association or request that
            # brought it logs how many it stored (a line per instance cost
            # a small instance's C-STORE ~7% of its CPU, and said nothing
            # the change feed does not), as storescp and Orthanc do at
            # their default levels.
            level = logging.INFO if outcome is Outcome.REPLACED else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "%s instance %s (study %s) from %s", outcome.value,
                        p.sop_instance_uid, p.study_uid, pending.origin.describe())
            emit(Event("stored" if outcome is Outcome.STORED else "replaced", "instance",
                       p.study_uid, p.series_uid, p.sop_instance_uid, origin=pending.origin,
                       patient_id=p.rows[Level.PATIENT].get("patientid", ""),
                       seq=pending.seq))

        if announce is None:
            tell()
        else:
            announce.append(tell)
        return IngestResult(outcome, **uids)

    def _validate(self, p: ParsedHeader, expected_study: str | None,
                  expected_sop: tuple[str, str] | None) -> None:
        for name, uid in (("SOP Class UID", p.sop_class_uid),
                          ("SOP Instance UID", p.sop_instance_uid),
                          ("Study Instance UID", p.study_uid),
                          ("Series Instance UID", p.series_uid)):
            if not uid:
                raise InvalidInstance(f"cannot understand the data: {name} is missing")
            if not valid_uid(uid):
                raise InvalidUID(f"{name} {uid[:80]!r} is not a valid UID "
                                 "(1-64 characters of digits and dots)")
        if expected_sop is not None:
            sop_class, sop_uid = expected_sop
            if sop_uid and sop_uid != p.sop_instance_uid:
                raise SOPMismatch(f"data set SOP Instance UID {p.sop_instance_uid} differs from "
                                  f"the command's Affected SOP Instance UID {sop_uid}")
            if sop_class and sop_class != p.sop_class_uid:
                raise SOPMismatch(f"data set SOP Class UID {p.sop_class_uid} differs from "
                                  f"the command's Affected SOP Class UID {sop_class}")
        if expected_study is not None and expected_study != p.study_uid:
            raise StudyMismatch(f"instance {p.sop_instance_uid} belongs to study {p.study_uid}, "
                                f"not to {expected_study}")

    # -- group commit

    def _index(self, pendings: list[_Pending]) -> None:
        """Write the instances' rows and move their blobs into place, in
        order, in a transaction shared with whatever other instances are
        waiting; returns once it has committed (or failed)."""
        group = self._group
        with group:
            self._queue.extend(pendings)
            while not pendings[-1].done:  # a call's instances go in one batch
                if self._leading:
                    group.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                group.release()
                try:
                    self._write_batch(batch)
                finally:
                    group.acquire()
                    self._leading = False
                    for item in batch:
                        item.done = True
                    group.notify_all()

    def _index_now(self, batch: list[_Pending]) -> bool:
        """``_index`` without waiting: False, with nothing done, when another
        batch of this process is under way or queued, or the database's
        write lock is held (always False on PostgreSQL, where a transaction
        waits on the network)."""
        if not self.db.is_sqlite:
            return False
        group = self._group
        with group:
            if self._leading or self._queue:
                return False
            self._leading = True
        done = False
        try:
            with self.db.write_lock(wait=False):
                self._write_batch(batch)
            done = True
        except WriteBusy:
            pass
        finally:
            with group:
                self._leading = False
                if done:
                    for item in batch:
                        item.done = True
                group.notify_all()
        return done

    def _write_batch(self, batch: list[_Pending]) -> None:
        """One transaction for the batch.  If it fails (a concurrent writer on
        PostgreSQL created the same patient/study/series, a disk error on one
        rename), each instance is tried in a transaction of its own, up to
        ``ATTEMPTS`` times.  An instance whose fsync failed in the transaction
        (``_NotDurable``) fails alone, and the others are written again
        without it."""
        for attempt in range(ATTEMPTS):
            try:
                self._transaction(batch)
                return
            except BaseException as exc:
                # No file without a row: the blobs moved into place go back
                # to their temp files (latest first), ready for the retry.
                for item in reversed(batch):
                    if item.renamed:
                        self._unrename(item)
                    item.renamed, item.outcome, item.error = False, None, None
                if isinstance(exc, _NotDurable):
                    exc.item.error = exc.error
                    rest = [item for item in batch if item is not exc.item]
                    if rest:
                        self._write_batch(rest)
                    return
                if not isinstance(exc, Exception):
                    raise
                log.debug("index write retry after %s", exc)
                if len(batch) > 1:
                    break
                if attempt == ATTEMPTS - 1:
                    cause = getattr(exc, "orig", None) or exc
                    batch[0].error = StorageFailure(f"index write failed: {cause}")
                    return
                time.sleep(0.01 * (attempt + 1) * (1 + random.random()))
        for item in batch:
            self._write_batch([item])

    def _unrename(self, item: _Pending) -> None:
        try:
            self.store.uncommit_temp(item.key, item.temp)
        except OSError as exc:  # e.g. a later instance of the batch replaced it
            log.debug("cannot move %s back: %s", item.key, exc)
            if item.outcome is Outcome.STORED:
                self.store.delete(item.key)

    def _transaction(self, batch: list[_Pending]) -> None:
        with self.db.raw_write() as cur:
            # Blob key → the item of this batch whose rows hold it, its file
            # not in place until the commit: a later copy of the same
            # instance in the batch is compared with that file.
            earlier: dict[str, _Pending] = {}
            for item in batch:
                try:
                    self._write_one(cur, item, earlier)
                except PacsnodeError as exc:
                    # Refused before this instance wrote anything.
                    item.error = exc
                    continue
                if item.outcome is not Outcome.ALREADY_STORED:
                    earlier[item.key] = item
            # Last steps before commit: each blob, once durable, goes into
            # place.
            for item in batch:
                if item.error is not None:
                    continue
                if item.syncing is not None:
                    try:
                        item.syncing.result()
                    except Exception as exc:
                        raise _NotDurable(item, exc) from exc
                    item.syncing = None
                if item.outcome is not Outcome.ALREADY_STORED:
                    self.store.commit_temp(item.temp, item.key)
                    item.renamed = True

    def _write_one(self, cur: Any, item: _Pending, earlier: dict[str, _Pending]) -> None:
        """One instance's rows.  A refusal (PacsnodeError) is raised only
        before the first write, so the batch's transaction can go on.
        ``earlier``: the items of the batch written before this one, by
        blob key."""
        sql, p = self._sql, item.parsed
        existing = sql.existing.execute(cur, {"uid": p.sop_instance_uid}).fetchone()
        item.outcome = Outcome.STORED
        if existing is not None:
            old_id, old_key, old_study, old_series = existing
            if (old_study, old_series) != (p.study_uid, p.series_uid):
                raise ConflictingInstance(
                    f"SOP Instance {p.sop_instance_uid} is already stored in study "
                    f"{old_study} series {old_series}")
            first = earlier.get(old_key)
            old_path = first.temp if first is not None else self.store.path(old_key)
            if old_path.is_file():
                if same_data_set(item.temp, old_path):
                    item.outcome = Outcome.ALREADY_STORED
                    return
                if self.duplicate_policy == "keep":
                    item.outcome, item.kept = Outcome.ALREADY_STORED, True
                    return
                if self.duplicate_policy == "reject":
                    raise DuplicateRefused(
                        f"SOP Instance {p.sop_instance_uid} already exists with "
                        "different content and duplicate_policy is 'reject'")
            # Replace (or mend a row whose file went missing).
            self._replace(cur, old_id, p)
            item.outcome = Outcome.REPLACED
        series_id, study_id = self._parents(cur, p)
        row = dict(p.rows[Level.IMAGE])
        row.update(series_fk=series_id, study_fk=study_id, transfer_syntax=p.transfer_syntax,
                   blob_key=item.key, size=item.size, stored_at=time.time(),
                   origin=item.origin.describe(), meta_json=p.meta_json)
        instance_id = sql.add(cur, "instances", row)
        record_extra_tags(self.db, cur, p.meta_json, p.study_uid, p.series_uid,
                          p.sop_instance_uid)
        if p.items:
            sql.insert_items.insert_many(cur, [
                dict(instance_fk=instance_id, seq=s, item=n, keyword=k, value=v, value_ci=ci)
                for s, n, k, v, ci in p.items])
        item.seq = sql.add(cur, "changes", dict(
            action=item.outcome.name.lower(), level="instance", study_uid=p.study_uid,
            series_uid=p.series_uid, instance_uid=p.sop_instance_uid, at=time.time(),
            detail=item.origin.describe()))

    def _parents(self, cur: Any, p: ParsedHeader) -> tuple[int, int]:
        """Ids of the instance's series and study, creating patient, study and
        series rows as needed."""
        sql = self._sql
        se = sql.series.execute(cur, {"uid": p.series_uid}).fetchone()
        if se is not None:
            series_id, study_id, study_uid = se
            if study_uid != p.study_uid:
                raise ConflictingInstance(
                    f"series {p.series_uid} already belongs to study {study_uid}, "
                    f"not {p.study_uid}")
            return int(series_id), int(study_id)
        st = sql.study.execute(cur, {"uid": p.study_uid}).fetchone()
        if st is None:
            prow = p.rows[Level.PATIENT]
            pt = sql.patient.execute(cur, {"pid": prow["patientid"],
                                           "issuer": prow["issuerofpatientid"]}).fetchone()
            patient_id = pt[0] if pt is not None else sql.add(cur, "patients", prow)
            study_id = sql.add(cur, "studies", dict(p.rows[Level.STUDY], patient_fk=patient_id))
        else:
            study_id = st[0]
        series_id = sql.add(cur, "series", dict(p.rows[Level.SERIES], study_fk=study_id))
        return int(series_id), int(study_id)

    def _replace(self, cur: Any, old_id: int, p: ParsedHeader) -> None:
        """Drop the replaced instance's rows; the new one may carry corrected
        patient/study/series data (a rare path: statements built per call)."""
        patient_fk = select(studies.c.patient_fk).where(
            studies.c.studyinstanceuid == p.study_uid).scalar_subquery()
        prow = {k: v for k, v in p.rows[Level.PATIENT].items()
                if k not in ("patientid", "issuerofpatientid")}
        for stmt in (delete(item_attrs).where(item_attrs.c.instance_fk == old_id),
                     delete(instances).where(instances.c.id == old_id),
                     update(series).where(series.c.seriesinstanceuid == p.series_uid)
                     .values(**p.rows[Level.SERIES]),
                     update(studies).where(studies.c.studyinstanceuid == p.study_uid)
                     .values(**p.rows[Level.STUDY]),
                     update(patients).where(patients.c.id == patient_fk).values(**prow)):
            RawStatement(stmt, self.db.engine).execute(cur, {})


class _Uids(TypedDict, total=False):
    """The identifying fields of an IngestResult, as keyword arguments."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


def _uids_or_empty(parsed: ParsedHeader | None) -> _Uids:
    if parsed is None:
        return {}
    return _Uids(sop_class_uid=parsed.sop_class_uid, sop_instance_uid=parsed.sop_instance_uid,
                 study_uid=parsed.study_uid, series_uid=parsed.series_uid)



#: Bytes compared at a time by ``same_data_set``.
_COMPARE_CHUNK = 1 << 20


def same_data_set(a: Path, b: Path) -> bool:
    """Whether two Part 10 files hold the same instance: their data sets
    (everything after the File Meta Information) are byte-identical and
    their transfer syntaxes the same, whatever else the file meta says
    (another sender's implementation UID, source AE; DESIGN.md §7).  Sizes
    first, then the bytes, a chunk at a time."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        size_a, size_b = os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size
        if not size_a or not size_b:
            return size_a == size_b
        with mmap.mmap(fa.fileno(), 0, access=mmap.ACCESS_READ) as da, \
                mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as db:
            try:
                la, lb = file_layout(da), file_layout(db)
            except Incomplete:
                return False
            if la.transfer_syntax != lb.transfer_syntax \
                    or size_a - la.start != size_b - lb.start:
                return False
            for offset in range(0, size_a - la.start, _COMPARE_CHUNK):
                if da[la.start + offset:la.start + offset + _COMPARE_CHUNK] \
                        != db[lb.start + offset:lb.start + offset + _COMPARE_CHUNK]:
                    return False
            return True



"""The only writer: every instance, whatever brought it (C-STORE, STOW-RS,
``pacsnode import``, a retrieve job), is stored by ``Ingestor.ingest_temp``.

Order of a store (two phases, events after commit):
  1. the bytes are in a temp file under the blob root (same filesystem);
  2. the header is read once (up to Pixel Data) and validated;
  3. the temp file is fsynced (outside any lock);
  4. under the index's write transaction: duplicate check, rename into
     ``studies/<Study>/<Series>/<SOP>.dcm`` (+ folder fsync), index rows;
  5. commit — only now is the instance acknowledged — then the event.
A crash before 5 leaves at worst a file with no index row, which
``pacsnode check --repair`` indexes; never an index row without its file.
"""

from __future__ import annotations

import enum
import filecmp
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from .dicom.catalogue import Level
from .dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_meta
from .dicom.header import ParsedHeader, describe, read_header, valid_uid
from .errors import (ConflictingInstance, DuplicateRefused, InvalidInstance, InvalidUID,
                     PacsnodeError, SOPMismatch, StorageFailure, StudyMismatch)
from .events import Event, EventBus, Origin
from .index.db import Database
from .index.schema import changes, instances, item_attrs, patients, series, studies
from .storage import FileStore, blob_key

log = logging.getLogger("pacsnode.ingest")

__all__ = ["Outcome", "IngestResult", "Ingestor", "IMPLEMENTATION_CLASS_UID",
           "IMPLEMENTATION_VERSION"]

IMPLEMENTATION_VERSION = IMPLEMENTATION_VERSION_NAME


# Statements built once: SQLAlchemy then only binds parameters per instance
# (building an INSERT with ~50 values per call cost more than SQLite's work).
_EXISTING = (select(instances.c.id, instances.c.blob_key, studies.c.studyinstanceuid,
                    series.c.seriesinstanceuid)
             .join(series, series.c.id == instances.c.series_fk)
             .join(studies, studies.c.id == instances.c.study_fk)
             .where(instances.c.sopinstanceuid == bindparam("uid")))
_SERIES = (select(series.c.id, series.c.study_fk, studies.c.studyinstanceuid)
           .join(studies, studies.c.id == series.c.study_fk)
           .where(series.c.seriesinstanceuid == bindparam("uid")))
_STUDY = select(studies.c.id).where(studies.c.studyinstanceuid == bindparam("uid"))
_PATIENT = select(patients.c.id).where(patients.c.patientid == bindparam("pid"),
                                       patients.c.issuerofpatientid == bindparam("issuer"))
_INSERT_INSTANCE = insert(instances)
_INSERT_ITEMS = insert(item_attrs)
_INSERT_CHANGE = insert(changes)


class Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    REPLACED = "replaced"
    REFUSED = "refused"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self in (Outcome.STORED, Outcome.ALREADY_STORED, Outcome.REPLACED)


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

    # -- entry points: each gets the bytes into a temp file, then ingest_temp

    def ingest_path(self, path: str | os.PathLike, origin: Origin, **kw: Any) -> IngestResult:
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
                write_file_meta_info(fh, file_meta(sop_class_uid, sop_instance_uid,
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
        try:
            parsed = self._parse(temp)
            self._validate(parsed, expected_study, expected_sop)
            result = self._commit(temp, parsed, origin)
        except PacsnodeError as exc:
            temp.unlink(missing_ok=True)
            log.warning("refused instance from %s: %s", origin.describe(), exc.reason)
            return IngestResult(Outcome.REFUSED if not isinstance(exc, StorageFailure)
                                else Outcome.FAILED, error=exc,
                                **_uids_or_empty(locals().get("parsed")))
        except Exception as exc:  # disk, database: never take the caller down
            temp.unlink(missing_ok=True)
            log.exception("failed to store instance from %s", origin.describe())
            return IngestResult(Outcome.FAILED, error=StorageFailure(f"storage failed: {exc}"),
                                **_uids_or_empty(locals().get("parsed")))
        return result

    def _parse(self, temp: Path) -> ParsedHeader:
        size = temp.stat().st_size
        with open(temp, "r+b") as fh:
            head = fh.read(132)
            is_part10 = len(head) == 132 and head[128:132] == b"DICM"
            if is_part10 and head[:128] != b"\x00" * 128:
                # The preamble is not trusted (PS3.10 7.5): zero it.
                fh.seek(0)
                fh.write(b"\x00" * 128)
            fh.seek(0)
            try:
                ds = read_header(fh)
            except Exception as exc:
                raise InvalidInstance(f"cannot understand the data: {exc}") from exc
            # stop_before_pixels leaves the file position at Pixel Data.
            has_pixels = fh.tell() < size
        if getattr(ds, "file_meta", {}).get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
            # Deflated: the position is the end of the compressed stream.
            has_pixels = "PixelData" in dcmread(temp, force=True, specific_tags=["PixelData"])
        if not is_part10 or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds = self._rewrite_as_part10(temp)
            has_pixels = "PixelData" in dcmread(temp, force=True, specific_tags=["PixelData"])
        if "SOPInstanceUID" not in ds:
            raise InvalidInstance("cannot understand the data: no SOP Instance UID "
                                  "(not a DICOM data set?)")
        try:
            return describe(ds, has_pixels)
        except Exception as exc:
            raise InvalidInstance(f"cannot understand the data: {exc}") from exc

    def _rewrite_as_part10(self, temp: Path) -> Dataset:
        """A data set without file meta (e.g. a raw ACR-NEMA style file): read
        it whole and write it back as Part 10, Explicit VR Little Endian."""
        try:
            ds = dcmread(temp, force=True)
            ds.SOPInstanceUID  # noqa: B018 - raises if absent
            ds.SOPClassUID  # noqa: B018
        except Exception as exc:
            raise InvalidInstance(f"cannot understand the data: {exc}") from exc
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID,
                                  ts or ExplicitVRLittleEndian)
        dcmwrite(temp, ds, enforce_file_format=True)
        return read_header(temp)

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

    def _commit(self, temp: Path, p: ParsedHeader, origin: Origin) -> IngestResult:
        key = blob_key(p.study_uid, p.series_uid, p.sop_instance_uid)
        self.store.sync_temp(temp)  # outside any lock
        size = temp.stat().st_size
        uids = dict(sop_class_uid=p.sop_class_uid, sop_instance_uid=p.sop_instance_uid,
                    study_uid=p.study_uid, series_uid=p.series_uid)
        for attempt in range(5):
            try:
                outcome, seq, kept = self._write_index(temp, key, size, p, origin)
                break
            except (IntegrityError, OperationalError) as exc:
                # A concurrent writer (another process or PostgreSQL session)
                # created the same patient/study/series: look again.
                log.debug("index write retry after %s", exc)
                if attempt == 4:
                    raise StorageFailure(f"index write failed: {exc.orig}") from exc
                time.sleep(0.01 * (attempt + 1))
        if outcome is Outcome.ALREADY_STORED:
            temp.unlink(missing_ok=True)
            return IngestResult(outcome, kept_existing=kept, **uids)
        log.info("%s instance %s (study %s) from %s", outcome.value, p.sop_instance_uid,
                 p.study_uid, origin.describe())
        self.bus.emit(Event("stored" if outcome is Outcome.STORED else "replaced", "instance",
                            p.study_uid, p.series_uid, p.sop_instance_uid, origin=origin,
                            patient_id=p.rows[Level.PATIENT].get("patientid", ""), seq=seq))
        return IngestResult(outcome, **uids)

    def _write_index(self, temp: Path, key: str, size: int, p: ParsedHeader,
                     origin: Origin) -> tuple[Outcome, int, bool]:
        renamed = False
        try:
            with self.db.write() as conn:
                existing = conn.execute(_EXISTING, {"uid": p.sop_instance_uid}).first()
                outcome = Outcome.STORED
                if existing is not None:
                    if (existing.studyinstanceuid, existing.seriesinstanceuid) != \
                            (p.study_uid, p.series_uid):
                        raise ConflictingInstance(
                            f"SOP Instance {p.sop_instance_uid} is already stored in study "
                            f"{existing.studyinstanceuid} series {existing.seriesinstanceuid}")
                    old_path = self.store.path(existing.blob_key)
                    if old_path.is_file():
                        if filecmp.cmp(temp, old_path, shallow=False):
                            return Outcome.ALREADY_STORED, 0, False
                        if self.duplicate_policy == "keep":
                            return Outcome.ALREADY_STORED, 0, True
                        if self.duplicate_policy == "reject":
                            raise DuplicateRefused(
                                f"SOP Instance {p.sop_instance_uid} already exists with "
                                "different content and duplicate_policy is 'reject'")
                    # Replace (or mend a row whose file went missing).
                    conn.execute(delete(item_attrs).where(
                        item_attrs.c.instance_fk == existing.id))
                    conn.execute(delete(instances).where(instances.c.id == existing.id))
                    self._update_parents(conn, p)
                    outcome = Outcome.REPLACED
                series_id, study_id = self._parents(conn, p)
                row = dict(p.rows[Level.IMAGE])
                row.update(series_fk=series_id, study_fk=study_id,
                           transfer_syntax=p.transfer_syntax, blob_key=key, size=size,
                           stored_at=time.time(), origin=origin.describe(),
                           meta_json=p.meta_json)
                instance_id = conn.execute(_INSERT_INSTANCE, row).inserted_primary_key[0]
                if p.items:
                    conn.execute(_INSERT_ITEMS, [
                        dict(instance_fk=instance_id, seq=s, item=n, keyword=k, value=v,
                             value_ci=ci) for s, n, k, v, ci in p.items])
                seq = conn.execute(_INSERT_CHANGE, dict(
                    action=outcome.name.lower(), level="instance", study_uid=p.study_uid,
                    series_uid=p.series_uid, instance_uid=p.sop_instance_uid, at=time.time(),
                    detail=origin.describe())).inserted_primary_key[0]
                # Last step before commit: the blob goes into place.
                self.store.commit_temp(temp, key)
                renamed = True
        except BaseException:
            if renamed and outcome is Outcome.STORED:
                self.store.delete(key)  # the commit failed: no file without a row
            raise
        return outcome, int(seq), False

    def _parents(self, conn: Any, p: ParsedHeader) -> tuple[int, int]:
        """Ids of the instance's series and study, creating patient, study and
        series rows as needed."""
        se = conn.execute(_SERIES, {"uid": p.series_uid}).first()
        if se is not None:
            if se.studyinstanceuid != p.study_uid:
                raise ConflictingInstance(
                    f"series {p.series_uid} already belongs to study {se.studyinstanceuid}, "
                    f"not {p.study_uid}")
            return int(se.id), int(se.study_fk)
        st = conn.execute(_STUDY, {"uid": p.study_uid}).first()
        if st is None:
            prow = p.rows[Level.PATIENT]
            pt = conn.execute(_PATIENT, {"pid": prow["patientid"],
                                         "issuer": prow["issuerofpatientid"]}).first()
            patient_id = pt.id if pt is not None else \
                conn.execute(insert(patients).values(**prow)).inserted_primary_key[0]
            study_id = conn.execute(insert(studies).values(
                patient_fk=patient_id, **p.rows[Level.STUDY])).inserted_primary_key[0]
        else:
            study_id = st.id
        series_id = conn.execute(insert(series).values(
            study_fk=study_id, **p.rows[Level.SERIES])).inserted_primary_key[0]
        return int(series_id), int(study_id)

    def _update_parents(self, conn: Any, p: ParsedHeader) -> None:
        """A replaced instance may carry corrected patient/study/series data."""
        conn.execute(update(series).where(series.c.seriesinstanceuid == p.series_uid)
                     .values(**p.rows[Level.SERIES]))
        conn.execute(update(studies).where(studies.c.studyinstanceuid == p.study_uid)
                     .values(**p.rows[Level.STUDY]))
        patient_fk = select(studies.c.patient_fk).where(
            studies.c.studyinstanceuid == p.study_uid).scalar_subquery()
        prow = {k: v for k, v in p.rows[Level.PATIENT].items()
                if k not in ("patientid", "issuerofpatientid")}
        conn.execute(update(patients).where(patients.c.id == patient_fk).values(**prow))


def _uids_or_empty(parsed: ParsedHeader | None) -> dict[str, str]:
    if parsed is None:
        return {}
    return dict(sop_class_uid=parsed.sop_class_uid, sop_instance_uid=parsed.sop_instance_uid,
                study_uid=parsed.study_uid, series_uid=parsed.series_uid)


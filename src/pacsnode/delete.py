"""The one deletion path (DICOMweb DELETE, REST API, retention jobs).

Order, mirroring ingest (events after commit):
  1. one write transaction: the instances' item rows and instance rows go,
     then series, studies and patients left without children, and one
     ``changes`` row per deleted instance (action "deleted");
  2. after commit, the blobs are removed — inside a second short write
     transaction that first checks no row took the blob key back meanwhile
     (a re-store of the same SOP Instance between the commit and the unlink);
  3. one ``Event("deleted", "instance", …)`` per instance on the bus.

A crash between 1 and 2 leaves files without index rows; ``pacsnode check``
sees them, and the change feed records that they were deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, delete, func, select

from .events import Event, Origin
from .index.db import inserted_id
from .index.schema import changes, instances, item_attrs, patients, series, studies
from .node import Node
from .retrieve import select_instances

__all__ = ["delete_entities", "DeletedInstance"]

log = logging.getLogger("pacsnode.delete")

_CHUNK = 500


_T = TypeVar("_T")


@dataclass(frozen=True)
class DeletedInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    blob_key: str
    patient_id: str
    seq: int


def _chunks(values: list[_T], size: int = _CHUNK) -> list[list[_T]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def delete_entities(node: Node, study_uid: str, series_uid: str | None = None,
                    sop_uid: str | None = None, origin: Origin = Origin("api")) -> int:
    """Delete a study, a series of it, or one instance of that series.
    Returns how many instances were deleted (0: nothing matched)."""
    deleted: list[DeletedInstance] = []
    with node.db.write() as conn:
        stmt = select_instances(
            instances.c.id, instances.c.sopinstanceuid, instances.c.blob_key,
            instances.c.series_fk, instances.c.study_fk, series.c.seriesinstanceuid,
            studies.c.studyinstanceuid, studies.c.patient_fk, patients.c.patientid,
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
        ).join(patients, patients.c.id == studies.c.patient_fk)
        rows = conn.execute(stmt.order_by(instances.c.id)).all()
        if not rows:
            # A study or series row may exist without instances (left over
            # by an interrupted write): tidy it, but report nothing deleted.
            if sop_uid is None:
                _drop_empty_parents(conn, series_uid, study_uid)
            return 0
        ids = [int(r.id) for r in rows]
        for part in _chunks(ids):
            conn.execute(delete(item_attrs).where(item_attrs.c.instance_fk.in_(part)))
            conn.execute(delete(instances).where(instances.c.id.in_(part)))
        _delete_childless(conn, {int(r.series_fk) for r in rows},
                          {int(r.study_fk) for r in rows}, {int(r.patient_fk) for r in rows})
        now = time.time()
        detail = origin.describe()
        for r in rows:
            added = conn.execute(changes.insert().values(
                action="deleted", level="instance", study_uid=r.studyinstanceuid,
                series_uid=r.seriesinstanceuid, instance_uid=r.sopinstanceuid, at=now,
                detail=detail))
            deleted.append(DeletedInstance(r.studyinstanceuid, r.seriesinstanceuid,
                                           r.sopinstanceuid, r.blob_key, r.patientid or "",
                                           inserted_id(added)))
    _remove_blobs(node, [d.blob_key for d in deleted])
    log.info("deleted %d instance(s) of study %s%s%s (%s)", len(deleted), study_uid,
             f" series {series_uid}" if series_uid else "",
             f" instance {sop_uid}" if sop_uid else "", origin.describe())
    for d in deleted:
        node.bus.emit(Event("deleted", "instance", d.study_uid, d.series_uid, d.sop_uid,
                            origin=origin, patient_id=d.patient_id, seq=d.seq))
    return len(deleted)


def _delete_childless(c: Connection, series_ids: set[int], study_ids: set[int],
                      patient_ids: set[int]) -> None:
    """Drop the series, then studies, then patients left without children."""
    for ids, parent, child_fk in ((series_ids, series, instances.c.series_fk),
                                  (study_ids, studies, series.c.study_fk),
                                  (patient_ids, patients, studies.c.patient_fk)):
        for part in _chunks(sorted(ids)):
            still = {int(x) for x in c.execute(
                select(child_fk).where(child_fk.in_(part)).group_by(child_fk)).scalars()}
            empty = [i for i in part if i not in still]
            if empty:
                c.execute(delete(parent).where(parent.c.id.in_(empty)))


def _drop_empty_parents(c: Connection, series_uid: str | None, study_uid: str) -> None:
    st = c.execute(select(studies.c.id, studies.c.patient_fk)
                   .where(studies.c.studyinstanceuid == study_uid)).first()
    if st is None:
        return
    stmt = select(series.c.id).where(series.c.study_fk == st.id)
    if series_uid:
        stmt = stmt.where(series.c.seriesinstanceuid == series_uid)
    series_ids = {int(x) for x in c.execute(stmt).scalars()}
    _delete_childless(c, series_ids, {int(st.id)}, {int(st.patient_fk)})


def _remove_blobs(node: Node, keys: list[str]) -> None:
    """Unlink blobs no index row refers to any more."""
    if not keys:
        return
    try:
        with node.db.write() as conn:
            reused: set[str] = set()
            for part in _chunks(keys):
                reused.update(conn.execute(select(instances.c.blob_key).where(
                    instances.c.blob_key.in_(part))).scalars())
            for key in keys:
                if key in reused:
                    continue
                try:
                    node.store.delete(key)
                except OSError as exc:  # the index is right; check --repair tidies up
                    log.warning("could not remove blob %s: %s", key, exc)
    except Exception:
        log.exception("removing %d deleted blob(s) failed; pacsnode check will find them",
                      len(keys))


def count_instances(node: Node, study_uid: str) -> int:
    """Instances stored for a study (a helper for callers and tests)."""
    with node.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(instances)
                                .join(studies, studies.c.id == instances.c.study_fk)
                                .where(studies.c.studyinstanceuid == study_uid)).scalar_one())

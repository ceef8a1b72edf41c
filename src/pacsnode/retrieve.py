"""The only reader: resolving what to send (C-MOVE, C-GET, WADO-RS, export)
to stored instances, and reading them back — as stored, or transcoded when
the receiver asks for a syntax the blob is not in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import Any

from sqlalchemy import Select, select

from .dicom.catalogue import Level
from .index.schema import instances, series, studies
from .node import Node
from .query.model import Query
from .query.sql import compile_query

__all__ = ["InstanceRef", "locate", "locate_query", "select_instances"]


@dataclass(frozen=True)
class InstanceRef:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    path: Path
    size: int
    instance_number: int | None


_COLUMNS = (instances.c.sopclassuid, instances.c.sopinstanceuid, studies.c.studyinstanceuid,
            series.c.seriesinstanceuid, instances.c.transfer_syntax, instances.c.blob_key,
            instances.c.size, instances.c.instancenumber)


def _refs(node: Node, stmt: object) -> list[InstanceRef]:
    with node.db.read() as conn:
        rows = conn.execute(stmt).all()  # type: ignore[call-overload]
    return [InstanceRef(r[0], r[1], r[2], r[3], r[4], node.store.path(r[5]), int(r[6]), r[7])
            for r in rows]


def _ordered(stmt: object) -> object:
    return stmt.order_by(instances.c.study_fk, instances.c.series_fk,  # type: ignore[attr-defined]
                         instances.c.instancenumber.is_(None), instances.c.instancenumber,
                         instances.c.id)


def select_instances(*cols: Any, study_uid: str | None = None, series_uid: str | None = None,
                     sop_uid: str | None = None) -> Select:
    """SELECT ``cols`` over the instances of a study / series / instance
    (instances joined with their series and study)."""
    stmt = select(*cols).select_from(instances) \
        .join(series, series.c.id == instances.c.series_fk) \
        .join(studies, studies.c.id == instances.c.study_fk)
    if study_uid:
        stmt = stmt.where(studies.c.studyinstanceuid == study_uid)
    if series_uid:
        stmt = stmt.where(series.c.seriesinstanceuid == series_uid)
    if sop_uid:
        stmt = stmt.where(instances.c.sopinstanceuid == sop_uid)
    return stmt


def locate(node: Node, study_uid: str | None = None, series_uid: str | None = None,
           sop_uid: str | None = None) -> list[InstanceRef]:
    """Stored instances of a study / series / instance, in InstanceNumber order."""
    return _refs(node, _ordered(select_instances(*_COLUMNS, study_uid=study_uid,
                                                 series_uid=series_uid, sop_uid=sop_uid)))


def locate_query(node: Node, query: Query) -> list[InstanceRef]:
    """Instances under every entity a (C-MOVE/C-GET) identifier matches."""
    image_query = Query(Level.IMAGE, list(query.constraints))
    return _refs(node, _ordered(compile_query(image_query, *_COLUMNS)))

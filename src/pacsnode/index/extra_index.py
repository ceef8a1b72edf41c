"""The index of extra query tags (``pacsnode.dicom.extra_tags``): one row per
value, ``(level, owner_uid, key, value, value_ci)``.

A key-value table rather than a column per tag: declaring a tag changes no
table (nothing to ALTER on a large PostgreSQL index at start-up, nothing
left behind when a tag is dropped from the configuration), a multi-valued
attribute is one row per value, and at 100k instances a match on it costs
what a match on an indexed column does (the numbers are in
docs/CONFORMANCE.md, "Extra query tags").

Rows belong to an entity by its UID (a study, series or SOP Instance UID,
never reused), filled on ingest by ``ExtraWriter.record`` (one call in the
ingest transaction, nothing at all when no tag is declared) and for stored
instances by ``pacsnode reindex`` (``reindex``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.interfaces import DBAPICursor

from ..dicom import extra_tags
from ..dicom.catalogue import Level
from .db import Database, RawStatement
from .extra_tables import extra_attrs, reindex_state
from .schema import instances, series, studies

__all__ = ["extra_attrs", "reindex_state", "ExtraWriter", "record_extra_tags", "reindex",
           "rows_for"]

def rows_for(tags: tuple[extra_tags.ExtraTag, ...], body: Mapping[str, Any],
             uids: Mapping[Level, str]) -> list[dict[str, Any]]:
    """The ``extra_attrs`` rows of one instance's header JSON."""
    rows = []
    for tag in tags:
        for value in dict.fromkeys(tag.values(body)):
            rows.append(dict(level=int(tag.level), owner_uid=uids[tag.level], key=tag.key,
                             value=value, value_ci=extra_tags.value_ci(tag.vr, value)))
    return rows


def _insert_ignoring(db: Database) -> SqliteInsert | PgInsert:
    build = sqlite_insert if db.is_sqlite else pg_insert
    return build(extra_attrs).on_conflict_do_nothing()


class ExtraWriter:
    """The ingest's part: ``record`` adds an instance's values on the
    ingest's DBAPI cursor, inside its transaction."""

    def __init__(self, db: Database) -> None:
        from sqlalchemy import bindparam
        stmt = _insert_ignoring(db).values({c.name: bindparam(c.name) for c in extra_attrs.c})
        self._insert = RawStatement(stmt, db.engine)

    def record(self, cur: DBAPICursor, meta_json: str, study_uid: str, series_uid: str,
               sop_uid: str) -> None:
        tags = extra_tags.active()
        if not tags:
            return
        rows = rows_for(tags, json.loads(meta_json), {Level.STUDY: study_uid,
                                                      Level.SERIES: series_uid,
                                                      Level.IMAGE: sop_uid})
        if rows:
            self._insert.insert_many(cur, rows)


_WRITERS: dict[int, ExtraWriter] = {}


def record_extra_tags(db: Database, cur: DBAPICursor, meta_json: str, study_uid: str,
                      series_uid: str, sop_uid: str) -> None:
    """The ingest's one call: the declared extra tags' values of the
    instance just written (nothing, at the cost of one test, when none is
    declared)."""
    if not extra_tags.active():
        return
    writer = _WRITERS.get(id(db))
    if writer is None:
        writer = _WRITERS[id(db)] = ExtraWriter(db)
    writer.record(cur, meta_json, study_uid, series_uid, sop_uid)


def reindex(db: Database, tags: tuple[extra_tags.ExtraTag, ...], *, batch: int = 500,
            on_progress: Callable[[int, int], None] | None = None,
            restart: bool = False) -> int:
    """Fill ``extra_attrs`` for every stored instance, in id order, a batch
    per transaction; resumes after the last batch an earlier run committed
    (for the same set of tags) unless ``restart``.  ``on_progress(done,
    total)`` after each batch.  Returns how many instances were read."""
    sig = extra_tags.signature(tags)
    with db.read() as conn:
        total = int(conn.execute(select(instances.c.id).order_by(instances.c.id.desc())
                                 .limit(1)).scalar() or 0)
        row = conn.execute(select(reindex_state.c.last_instance)
                           .where(reindex_state.c.signature == sig)).first()
    last = 0 if restart or row is None else int(row.last_instance)
    seen = 0
    insert = _insert_ignoring(db)
    while True:
        with db.write() as conn:
            page = conn.execute(
                select(instances.c.id, instances.c.meta_json, instances.c.sopinstanceuid,
                       series.c.seriesinstanceuid, studies.c.studyinstanceuid)
                .join(series, series.c.id == instances.c.series_fk)
                .join(studies, studies.c.id == instances.c.study_fk)
                .where(instances.c.id > last).order_by(instances.c.id).limit(batch)).all()
            if not page:
                break
            rows: list[dict[str, Any]] = []
            for r in page:
                rows += rows_for(tags, json.loads(r.meta_json),
                                 {Level.STUDY: r.studyinstanceuid,
                                  Level.SERIES: r.seriesinstanceuid,
                                  Level.IMAGE: r.sopinstanceuid})
            if rows:
                conn.execute(insert, rows)
            last = int(page[-1].id)
            _save(conn, db, sig, last)
        seen += len(page)
        if on_progress is not None:
            on_progress(last, total)
    return seen


def _save(conn: Connection, db: Database, sig: str, last: int) -> None:
    build = sqlite_insert if db.is_sqlite else pg_insert
    stmt = build(reindex_state).values(signature=sig, last_instance=last, done=0)
    conn.execute(stmt.on_conflict_do_update(index_elements=["signature"],
                                            set_={"last_instance": last}))

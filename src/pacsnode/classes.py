"""Series classes in the index: computed from the headers the index already
keeps (never from the files), stored in ``series_classification`` /
``series_classes``, and read back for the REST API, the ``{classes}``
placeholder, summaries and route matching.

A series is classified when it becomes stable (``pacsnode.automation``, off
the ingest path), on demand (``GET /api/v1/series/{uid}/classification``
classifies a series never classified), and all at once by ``pacsnode
reclassify`` after a rule change.  The rules are those of the node's
settings: the built-in ones merged with ``classification_rules``
(``server_rules`` loads them once per process and says plainly what is
wrong with a bad file).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, delete, insert, select

from .classify import FactsBuilder, RuleError, RuleSet, classify_series, load_rules
from .index.classes_tables import series_classes, series_classification
from .index.schema import instances, series, studies

if TYPE_CHECKING:
    from .config import Settings


# What classification needs of the index and the node, as protocols: the
# index's migrations classify an older index's series (index/migrations.py),
# so naming index.db.Database or node.Node here would close an import circle.
class Database(Protocol):
    def read(self) -> AbstractContextManager[Connection]: ...

    def write(self) -> AbstractContextManager[Connection]: ...


class Node(Protocol):
    @property
    def db(self) -> Database: ...

    @property
    def settings(self) -> Settings: ...

__all__ = ["server_rules", "classify_stored_series", "stored_classes", "classes_of",
           "classes_by_series", "SeriesRow", "find_series", "reclassify_all", "RuleError"]

_RULES: dict[str, RuleSet] = {}
_RULES_LOCK = threading.Lock()
#: Headers read per fetch while classifying a series.
_FETCH = 500


def server_rules(settings: Settings) -> RuleSet:
    """The rules of this node (built-ins + ``classification_rules``), loaded
    once per process.  Raises ``RuleError`` naming the file and the fault."""
    key = settings.classification_rules or ""
    with _RULES_LOCK:
        rules = _RULES.get(key)
        if rules is None:
            rules = _RULES[key] = load_rules(key or None)
    return rules


def _headers(conn: Connection, series_uid: str) -> Iterator[dict[str, Any]]:
    """The stored headers of a series' instances, a batch at a time."""
    last = 0
    while True:
        rows = conn.execute(
            select(instances.c.id, instances.c.meta_json)
            .join(series, series.c.id == instances.c.series_fk)
            .where(series.c.seriesinstanceuid == series_uid, instances.c.id > last)
            .order_by(instances.c.id).limit(_FETCH)).all()
        for row in rows:
            yield json.loads(row.meta_json)
        if len(rows) < _FETCH:
            return
        last = rows[-1].id


def classify_stored_series(db: Database, series_uid: str, rules: RuleSet) -> list[str] | None:
    """Classify one series from its indexed headers and store the result;
    its classes, or None when the archive holds no instance of it."""
    builder = FactsBuilder()
    with db.read() as conn:
        for header in _headers(conn, series_uid):
            builder.add(header)
    if builder.representative is None:
        with db.write() as conn:
            _forget(conn, series_uid)
        return None
    facts = builder.facts()
    classes = classify_series(builder.representative, facts, rules)
    with db.write() as conn:
        _forget(conn, series_uid)
        conn.execute(insert(series_classification).values(
            series_uid=series_uid, classes=json.dumps(classes), instances=facts.instances,
            classified_at=time.time()))
        if classes:
            conn.execute(insert(series_classes), [
                {"series_uid": series_uid, "name": name[:64], "name_ci": name.casefold()[:64]}
                for name in classes])
    return classes


def _forget(conn: Connection, series_uid: str) -> None:
    conn.execute(delete(series_classes).where(series_classes.c.series_uid == series_uid))
    conn.execute(delete(series_classification)
                 .where(series_classification.c.series_uid == series_uid))


def stored_classes(db: Database, series_uid: str) -> list[str] | None:
    """The stored classes of a series; None when it was never classified."""
    with db.read() as conn:
        text = conn.execute(select(series_classification.c.classes).where(
            series_classification.c.series_uid == series_uid)).scalar()
    return None if text is None else list(json.loads(text))


def classes_of(node: Node, series_uid: str) -> list[str] | None:
    """The classes of a series in the archive, classifying it now if it
    never was; None when the archive does not hold it."""
    found = stored_classes(node.db, series_uid)
    if found is not None and _exists(node.db, series_uid):
        return found
    return classify_stored_series(node.db, series_uid, server_rules(node.settings))


def _exists(db: Database, series_uid: str) -> bool:
    with db.read() as conn:
        return conn.execute(select(series.c.id).where(
            series.c.seriesinstanceuid == series_uid)).first() is not None


def classes_by_series(conn: Connection, series_uids: list[str]) -> dict[str, list[str]]:
    """Stored classes of several series (those never classified are absent)."""
    out: dict[str, list[str]] = {}
    for start in range(0, len(series_uids), 500):
        chunk = series_uids[start:start + 500]
        for row in conn.execute(select(series_classification.c.series_uid,
                                       series_classification.c.classes)
                                .where(series_classification.c.series_uid.in_(chunk))):
            out[row.series_uid] = list(json.loads(row.classes))
    return out


@dataclass(frozen=True)
class SeriesRow:
    study_uid: str
    series_uid: str
    description: str
    modality: str
    classes: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid,
                "SeriesDescription": self.description, "Modality": self.modality,
                "classes": self.classes}


def find_series(db: Database, *, class_name: str = "", patient_id: str = "",
                study_uid: str | Sequence[str] = "", limit: int = 1000,
                offset: int = 0) -> list[SeriesRow]:
    """Series of the archive with a class (case-insensitive), of a patient,
    of a study (or of any of several) — each filter only when given — in
    study then series order."""
    from .index.schema import patients
    stmt = (select(studies.c.studyinstanceuid, series.c.seriesinstanceuid,
                   series.c.seriesdescription, series.c.modality)
            .join(studies, studies.c.id == series.c.study_fk))
    if class_name:
        stmt = stmt.join(series_classes,
                         series_classes.c.series_uid == series.c.seriesinstanceuid) \
            .where(series_classes.c.name_ci == class_name.casefold())
    if patient_id:
        stmt = stmt.join(patients, patients.c.id == studies.c.patient_fk) \
            .where(patients.c.patientid == patient_id)
    if isinstance(study_uid, str) and study_uid:
        stmt = stmt.where(studies.c.studyinstanceuid == study_uid)
    elif not isinstance(study_uid, str):
        stmt = stmt.where(studies.c.studyinstanceuid.in_(list(study_uid)))
    stmt = stmt.order_by(studies.c.id, series.c.seriesnumber.is_(None), series.c.seriesnumber,
                         series.c.id).limit(limit).offset(offset)
    with db.read() as conn:
        rows = conn.execute(stmt).all()
        classes = classes_by_series(conn, [r.seriesinstanceuid for r in rows])
    return [SeriesRow(r.studyinstanceuid, r.seriesinstanceuid, r.seriesdescription or "",
                      r.modality or "", classes.get(r.seriesinstanceuid, []))
            for r in rows]


def reclassify_all(db: Database, rules: RuleSet, *, only_missing: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Apply ``rules`` to every series of the archive (``only_missing``:
    those never classified); returns how many series got each class
    (``""``: how many were classified in all)."""
    with db.read() as conn:
        stmt = select(series.c.seriesinstanceuid).order_by(series.c.id)
        if only_missing:
            stmt = stmt.where(~select(series_classification.c.series_uid).where(
                series_classification.c.series_uid == series.c.seriesinstanceuid).exists())
        uids = list(conn.execute(stmt).scalars())
    counts: dict[str, int] = {"": 0}
    for done, uid in enumerate(uids, 1):
        classes = classify_stored_series(db, uid, rules)
        if classes is not None:
            counts[""] += 1
            for name in classes:
                counts[name] = counts.get(name, 0) + 1
        if progress is not None:
            progress(done, len(uids))
    if not only_missing:
        _drop_orphans(db)
    return counts


def _drop_orphans(db: Database) -> None:
    """Classification rows of series no longer in the archive."""
    gone = ~select(series.c.id).where(
        series.c.seriesinstanceuid == series_classification.c.series_uid).exists()
    with db.write() as conn:
        uids = list(conn.execute(select(series_classification.c.series_uid).where(gone))
                    .scalars())
        for uid in uids:
            _forget(conn, uid)

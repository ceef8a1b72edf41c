"""`pacsnode check`: reconcile the blob store with the index.

A crash can leave (a) a blob renamed into place whose index row is missing —
the transaction never committed, or a power failure took the last commits
of the WAL — and (b) temp files in ``incoming/``: partial uploads, or
complete fsynced instances whose rename a power failure lost.  Repair
indexes (a), ingests every complete instance of (b) and deletes the rest.
An index row whose file is gone (deleted by hand, lost disk) is reported
and, on repair, dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from .events import Origin
from .index.schema import changes, instances, series, studies
from .node import Node

__all__ = ["CheckReport", "reconcile"]


@dataclass
class CheckReport:
    files_without_rows: list[str] = field(default_factory=list)
    rows_without_files: list[tuple[str, str, str]] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    repaired: int = 0
    unrepaired: list[str] = field(default_factory=list)
    instances: int = 0

    def ok(self, after_repair: bool = False) -> bool:
        if after_repair:
            return not self.unrepaired
        return not (self.files_without_rows or self.rows_without_files or self.temp_files)

    def lines(self) -> list[str]:
        out = [f"{self.instances} instances indexed"]
        for key in self.files_without_rows:
            out.append(f"file without index row: {key}")
        for study, se, sop in self.rows_without_files:
            out.append(f"index row without file: study {study} series {se} instance {sop}")
        for temp in self.temp_files:
            out.append(f"stale temp file: {temp}")
        if self.repaired:
            out.append(f"repaired {self.repaired} problem(s)")
        for problem in self.unrepaired:
            out.append(f"could not repair: {problem}")
        if self.ok() or (self.repaired and not self.unrepaired):
            out.append("consistent" if self.ok() else "consistent after repair")
        return out


def _deleted_instances(node: Node, keys: list[str]) -> set[str]:
    """SOP Instance UIDs among ``keys`` whose last change was a delete."""
    uids = [k.rsplit("/", 1)[-1].removesuffix(".dcm") for k in keys]
    if not uids:
        return set()
    last = select(changes.c.instance_uid, func.max(changes.c.seq).label("seq")) \
        .where(changes.c.instance_uid.in_(uids), changes.c.level == "instance") \
        .group_by(changes.c.instance_uid).subquery()
    with node.db.read() as conn:
        rows = conn.execute(select(changes.c.instance_uid).join(
            last, (changes.c.seq == last.c.seq)).where(changes.c.action == "deleted")).all()
    return {r[0] for r in rows}


def reconcile(node: Node, repair: bool = False) -> CheckReport:
    report = CheckReport()
    with node.db.read() as conn:
        rows = conn.execute(
            select(instances.c.blob_key, studies.c.studyinstanceuid, series.c.seriesinstanceuid,
                   instances.c.sopinstanceuid)
            .join(series, series.c.id == instances.c.series_fk)
            .join(studies, studies.c.id == instances.c.study_fk)).all()
    report.instances = len(rows)
    indexed = {r.blob_key for r in rows}
    for r in rows:
        if not node.store.exists(r.blob_key):
            report.rows_without_files.append((r.studyinstanceuid, r.seriesinstanceuid,
                                              r.sopinstanceuid))
    report.files_without_rows = sorted(k for k in node.store.keys() if k not in indexed)
    report.temp_files = [str(p) for p in node.store.temp_files()]
    if not repair:
        return report
    deleted = _deleted_instances(node, report.files_without_rows)
    for key in report.files_without_rows:
        if key.rsplit("/", 1)[-1].removesuffix(".dcm") in deleted:
            # A DELETE committed but the process died before removing the file.
            node.store.delete(key)
            report.repaired += 1
            continue
        result = node.ingestor.ingest_path(node.store.path(key), Origin("check", address=key))
        if result.outcome.ok:
            report.repaired += 1
        else:
            report.unrepaired.append(f"{key}: {result.reason}")
    if report.rows_without_files:
        from .delete import delete_entities
        for study, se, sop in report.rows_without_files:
            delete_entities(node, study, se, sop, Origin("check"))
            report.repaired += 1
    for temp in node.store.temp_files():
        # ingest_temp consumes the file: stored if it is a complete instance,
        # removed if it is a partial upload.
        node.ingestor.ingest_temp(temp, Origin("check", address=str(temp)))
        report.repaired += 1
    return report

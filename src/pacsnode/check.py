"""`pacsnode check`: reconcile the blob store with the index.

A crash can leave (a) a blob renamed into place whose index row is missing —
the transaction never committed, or a power failure took the last commits
of the WAL — and (b) in-flight files in ``incoming/``: partial uploads, or
complete fsynced instances whose rename a power failure lost.  Repair
indexes (a).  (b) is what ``clean_in_flight`` handles, here and when
``serve`` starts: each in-flight file nobody holds (its writer process is
gone, see storage._Writers) goes through the one ingest path — a whole
instance is stored, one that is not whole is refused and removed, never
indexed; files of live writers are left alone.  A stale in-flight file is
no inconsistency (nothing acknowledged depends on it): plain ``check``
lists it and does not fail for it.  An index row whose file is gone
(deleted by hand, lost disk) is reported and, on repair, dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from .events import Origin
from .index.schema import changes, instances, series, studies
from .ingest import IngestResult
from .node import Node

__all__ = ["CheckReport", "clean_in_flight", "reconcile"]


@dataclass
class CheckReport:
    files_without_rows: list[str] = field(default_factory=list)
    rows_without_files: list[tuple[str, str, str]] = field(default_factory=list)
    #: In-flight files nobody holds: handled by --repair or serve's start.
    temp_files: list[str] = field(default_factory=list)
    #: In-flight files a live process is writing: none of our business.
    held_files: list[str] = field(default_factory=list)
    #: What --repair did with each stale in-flight file.
    cleaned: list[tuple[str, IngestResult]] = field(default_factory=list)
    repaired: int = 0
    unrepaired: list[str] = field(default_factory=list)
    instances: int = 0

    def ok(self, after_repair: bool = False) -> bool:
        if after_repair:
            return not self.unrepaired
        return not (self.files_without_rows or self.rows_without_files)

    def lines(self) -> list[str]:
        out = [f"{self.instances} instances indexed"]
        for key in self.files_without_rows:
            out.append(f"file without index row: {key}")
        for study, se, sop in self.rows_without_files:
            out.append(f"index row without file: study {study} series {se} instance {sop}")
        if not self.cleaned:
            for temp in self.temp_files:
                out.append(f"stale temp file: {temp} (its writer is gone; --repair or the "
                           "next serve start stores it if whole, else removes it)")
        for temp in self.held_files:
            out.append(f"in-flight file of a running process: {temp}")
        for temp, result in self.cleaned:
            if result.outcome.ok:
                out.append(f"stale temp file {temp}: {result.outcome.value} "
                           f"(instance {result.sop_instance_uid})")
            else:
                out.append(f"stale temp file {temp}: {result.outcome.value}: {result.reason}; "
                           "removed")
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
    for f in node.store.in_flight():
        (report.held_files if f.held else report.temp_files).append(str(f.path))
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
    report.cleaned = clean_in_flight(node)
    return report


def clean_in_flight(node: Node) -> list[tuple[str, IngestResult]]:
    """Ingest each in-flight file that no live writer holds, through the one
    ingest path: a whole instance is stored (or found already stored), one
    that is not whole is refused; either way the file is gone after.  Files
    of live writers are left alone.  What happened to each (by its name)."""
    store = node.store
    done: list[tuple[str, IngestResult]] = []
    for f in store.in_flight():
        if f.held:
            continue
        claimed = store.claim(f.path)
        if claimed is None:  # another process cleaning at the same time took it
            continue
        result = node.ingestor.ingest_temp(claimed, Origin("check", address=f.path.name))
        done.append((f.path.name, result))
    store.forget_writers()
    return done

"""Study summaries (DESIGN §10): who, when, what, and each series with its
classes and instance count — from the index, never from the files.

``study_summary`` answers ``GET /api/v1/studies/{study}/summary``;
``write_summary`` writes the same JSON to
``<blob root>/studies/<StudyInstanceUID>/summary.json`` (``write_summaries =
true``, each time the study becomes stable), atomically: a temporary file in
the same folder, fsync'd when the node fsyncs, then renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .classes import classes_by_series
from .dicom.header import valid_uid
from .index.schema import instances, patients, series, studies

if TYPE_CHECKING:
    from .node import Node

__all__ = ["study_summary", "write_summary", "remove_summary", "summary_path", "SUMMARY_NAME"]

log = logging.getLogger("pacsnode.summary")

SUMMARY_NAME = "summary.json"


def study_summary(node: Node, study_uid: str) -> dict[str, Any] | None:
    """The summary of a study of the archive; None when it holds none of it."""
    with node.db.read() as conn:
        study = conn.execute(
            select(studies.c.id, studies.c.studyinstanceuid, studies.c.studydate,
                   studies.c.studydescription, patients.c.patientid, patients.c.patientname)
            .join(patients, patients.c.id == studies.c.patient_fk)
            .where(studies.c.studyinstanceuid == study_uid)).first()
        if study is None:
            return None
        rows = conn.execute(
            select(series.c.seriesinstanceuid, series.c.seriesnumber,
                   series.c.seriesdescription, series.c.modality,
                   func.count(instances.c.id).label("instances"))
            .join(instances, instances.c.series_fk == series.c.id)
            .where(series.c.study_fk == study.id)
            .group_by(series.c.id, series.c.seriesinstanceuid, series.c.seriesnumber,
                      series.c.seriesdescription, series.c.modality)
            .order_by(series.c.seriesnumber.is_(None), series.c.seriesnumber,
                      series.c.id)).all()
        classes = classes_by_series(conn, [r.seriesinstanceuid for r in rows])
    return {
        "StudyInstanceUID": study.studyinstanceuid,
        "PatientID": study.patientid or "",
        "PatientName": study.patientname or "",
        "StudyDate": study.studydate or "",
        "StudyDescription": study.studydescription or "",
        "series": [{"SeriesInstanceUID": r.seriesinstanceuid, "SeriesNumber": r.seriesnumber,
                    "SeriesDescription": r.seriesdescription or "",
                    "Modality": r.modality or "",
                    "classes": classes.get(r.seriesinstanceuid, []),
                    "instances": int(r.instances)} for r in rows],
    }


def summary_path(node: Node, study_uid: str) -> Path:
    """Where a study's summary is written.  The UID comes from the index,
    but it is checked all the same: only a valid UID (digits and dots) names
    a folder, so no value can lead outside the blob root."""
    if not valid_uid(study_uid):
        raise ValueError(f"not a valid Study Instance UID: {study_uid!r}")
    root = node.store.root / "studies"
    path = (root / study_uid / SUMMARY_NAME).resolve()
    if path.parent.parent != root.resolve():
        raise ValueError(f"study folder of {study_uid!r} is outside the blob root")
    return path


def write_summary(node: Node, study_uid: str) -> Path | None:
    """Write the study's summary.json atomically; None (nothing written)
    when the archive no longer holds the study."""
    summary = study_summary(node, study_uid)
    if summary is None:
        return None
    path = summary_path(node, study_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    fd, temp = tempfile.mkstemp(prefix=".summary-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if node.settings.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if node.settings.fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    log.info("study %s: wrote %s (%d series)", study_uid, path, len(summary["series"]))
    return path


def remove_summary(node: Node, study_uid: str) -> bool:
    """Remove a deleted study's summary.json, and its folder when that is
    then empty; True when there was one."""
    try:
        path = summary_path(node, study_uid)
    except ValueError:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    try:
        path.parent.rmdir()
    except OSError:
        pass  # something else lives there (a series sent again meanwhile)
    log.info("study %s was deleted: removed its %s", study_uid, SUMMARY_NAME)
    return True

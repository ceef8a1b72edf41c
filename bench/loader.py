"""Bulk loader for the query-scale rows: writes scale records straight into
pacsnode's index tables with SQLAlchemy Core ``executemany``.

Column values come from pacsnode's own ``describe`` (for the template
instance) and ``attribute_columns`` (for each varying attribute), so the
loader follows the catalogue when columns are added or renamed.  No blobs
are written: the scale rows only query the index.

Primary keys are the record numbers + 1 (patients, studies, series and
instances alike), so loading in consecutive ranges (1k, then up to 10k, then
up to 100k) needs no look-ups; the index must start empty.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

from pydicom import dcmread

from pacsnode.dicom.catalogue import BY_KEYWORD, Level
from pacsnode.dicom.header import describe
from pacsnode.dicom.values import attribute_columns
from pacsnode.index.db import Database
from pacsnode.index.schema import instances, patients, series, studies
from pacsnode.storage import blob_key

from .data import (
    SCALE_INSTANCES_PER_SERIES,
    SCALE_SERIES_PER_STUDY,
    SCALE_STUDIES_PER_PATIENT,
    ScaleRecord,
    ScaleTemplate,
    scale_record,
)

__all__ = ["IndexLoader"]

_BATCH = 5000


class IndexLoader:
    """Appends scale records to the index at ``url`` (pacsnode not running)."""

    def __init__(self, url: str, template: ScaleTemplate | None = None) -> None:
        self.template = template or ScaleTemplate()
        self.db = Database(url)
        parsed = describe(dcmread(io.BytesIO(self.template.bytes), stop_before_pixels=True),
                          True)
        self._rows = parsed.rows
        self._meta_json = parsed.meta_json
        self._transfer_syntax = parsed.transfer_syntax
        self._size = len(self.template.bytes)
        # Which varying attributes live at which level of the index.
        self._varying: dict[Level, list[str]] = {level: [] for level in Level}
        for keyword in ScaleTemplate.PLACEHOLDERS:
            attr = BY_KEYWORD.get(keyword)
            if attr is not None:
                self._varying[attr.level].append(keyword)
        self.loaded = 0

    def close(self) -> None:
        self.db.dispose()

    def _columns(self, level: Level, values: dict[str, str]) -> dict[str, Any]:
        row = dict(self._rows[level])
        for keyword in self._varying[level]:
            row.update(attribute_columns(BY_KEYWORD[keyword], values[keyword]))
        return row

    def load_until(self, count: int) -> float:
        """Add records ``loaded … count-1``; return the seconds it took."""
        start = time.perf_counter()
        for first in range(self.loaded, count, _BATCH):
            self._load_batch(range(first, min(first + _BATCH, count)))
        self.loaded = max(self.loaded, count)
        return time.perf_counter() - start

    def _load_batch(self, indexes: range) -> None:
        pts: list[dict[str, Any]] = []
        sts: list[dict[str, Any]] = []
        ses: list[dict[str, Any]] = []
        ins: list[dict[str, Any]] = []
        now = time.time()
        for rec in _records(indexes):
            values = ScaleTemplate.values(rec)
            first_of_series = rec.index % SCALE_INSTANCES_PER_SERIES == 0
            first_of_study = first_of_series and rec.series % SCALE_SERIES_PER_STUDY == 0
            if first_of_study and rec.study % SCALE_STUDIES_PER_PATIENT == 0:
                pts.append(dict(self._columns(Level.PATIENT, values), id=rec.patient + 1))
            if first_of_study:
                sts.append(dict(self._columns(Level.STUDY, values), id=rec.study + 1,
                                patient_fk=rec.patient + 1))
            if first_of_series:
                ses.append(dict(self._columns(Level.SERIES, values), id=rec.series + 1,
                                study_fk=rec.study + 1))
            ins.append(dict(
                self._columns(Level.IMAGE, values), id=rec.index + 1,
                series_fk=rec.series + 1, study_fk=rec.study + 1,
                transfer_syntax=self._transfer_syntax,
                blob_key=blob_key(rec.study_uid, rec.series_uid, rec.sop_uid),
                size=self._size, stored_at=now, origin="bench loader",
                meta_json=self.template.substitute(self._meta_json, rec)))
        with self.db.write() as conn:
            for table, rows in ((patients, pts), (studies, sts), (series, ses),
                                (instances, ins)):
                if rows:
                    conn.execute(table.insert(), rows)


def _records(indexes: range) -> Iterator[ScaleRecord]:
    return (scale_record(i) for i in indexes)

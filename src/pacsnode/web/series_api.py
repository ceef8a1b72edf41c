"""REST routes of series classes and study summaries (DESIGN §10):

- ``GET /api/v1/series/{series_uid}/classification`` → ``{"series_uid", "classes"}``
- ``GET /api/v1/series?class=T1&PatientID=…&StudyInstanceUID=…`` (one UID, or
  several separated by backslashes) →
  ``{"results": [{"StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription",
  "Modality", "classes"}]}``
- ``GET /api/v1/studies/{study_uid}/summary`` → the study summary.

Everything is answered from the index (``pacsnode.classes``,
``pacsnode.summary``); nothing reads a file.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from .. import classes as classmod
from ..errors import NotFound
from ..query.parse import MAX_INTEGER
from ..summary import study_summary
from .api import ApiRoute, _check_uid, _errors, _node
from .errors import WebError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", route_class=ApiRoute)

#: At most this many studies in one ``GET /api/v1/series?StudyInstanceUID=a\\b…``.
MAX_STUDY_UIDS = 200


class Classification(BaseModel):
    series_uid: str
    classes: list[str] = Field(description="The series' classes in rule order "
                               "(built-in and classification_rules).")


class SeriesHit(BaseModel):
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SeriesDescription: str
    Modality: str
    classes: list[str]


class SeriesHits(BaseModel):
    results: list[SeriesHit]


class SummarySeries(BaseModel):
    SeriesInstanceUID: str
    SeriesNumber: int | None
    SeriesDescription: str
    Modality: str
    classes: list[str]
    instances: int


class StudySummary(BaseModel):
    StudyInstanceUID: str
    PatientID: str
    PatientName: str
    StudyDate: str
    StudyDescription: str
    series: list[SummarySeries]


@router.get("/series/{series_uid}/classification", tags=["archive"],
            summary="Classes of a series", response_model=Classification,
            responses=_errors(400, 404))
def get_classification(series_uid: str, request: Request) -> Classification:
    """The classes the series got when it became stable (or by `pacsnode
    reclassify`); a series never classified yet is classified now."""
    _check_uid(series_uid, "SeriesInstanceUID")
    found = classmod.classes_of(_node(request), series_uid)
    if found is None:
        raise NotFound(f"series {series_uid} is not in the archive")
    return Classification(series_uid=series_uid, classes=found)


@router.get("/series", tags=["archive"], summary="Series of the archive by class",
            response_model=SeriesHits, responses=_errors(400))
def list_series(request: Request,
                class_name: str = Query("", alias="class", max_length=64,
                                        description="Only series with this class "
                                        "(case-insensitive), e.g. T1."),
                PatientID: str = Query("", max_length=64, description="Only this patient's."),
                StudyInstanceUID: str = Query(
                    "", max_length=MAX_STUDY_UIDS * 65,
                    description="Only this study's, or, as a list of UIDs separated by "
                    "backslashes (PS3.4 C.2.2.2.2), these studies' (at most "
                    f"{MAX_STUDY_UIDS})."),
                limit: int = Query(1000, ge=1, le=100000, description="At most this many."),
                offset: int = Query(0, ge=0, le=MAX_INTEGER, description="Skip this many.")
                ) -> Any:
    """Series in study order, then series number.  Without any filter, all
    series (paged by `limit`/`offset`)."""
    study_uids = [_check_uid(uid, "StudyInstanceUID")
                  for uid in StudyInstanceUID.split("\\")] if StudyInstanceUID else []
    if len(study_uids) > MAX_STUDY_UIDS:
        raise WebError(400, f"StudyInstanceUID lists {len(study_uids)} UIDs: at most "
                       f"{MAX_STUDY_UIDS}")
    if class_name != class_name.strip() or (class_name and not class_name.strip()):
        raise WebError(400, "class must not be blank or padded with spaces")
    hits = classmod.find_series(_node(request).db, class_name=class_name,
                                patient_id=PatientID,
                                study_uid=study_uids if len(study_uids) > 1 else StudyInstanceUID,
                                limit=limit, offset=offset)
    return {"results": [h.as_json() for h in hits]}


@router.get("/studies/{study_uid}/summary", tags=["archive"], summary="Summary of a study",
            response_model=StudySummary, responses=_errors(400, 404))
def get_summary(study_uid: str, request: Request) -> Any:
    """Patient, study and each series with its classes and instance count,
    as `write_summaries` writes it to studies/<StudyInstanceUID>/summary.json."""
    _check_uid(study_uid, "StudyInstanceUID")
    summary = study_summary(_node(request), study_uid)
    if summary is None:
        raise NotFound(f"study {study_uid} is not in the archive")
    return summary

"""Pydantic models of every request and response body of the REST API
(``/api/v1``, :mod:`pacsnode.web.api`); they are what the OpenAPI document
at ``/api/v1/openapi.json`` describes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

__all__ = ["ErrorBody", "NodeIn", "NodeOut", "NodeList", "EchoResult", "FindRequest",
           "FindResponse", "RetrieveRequest", "RetrieveAccepted", "JobOut", "JobList",
           "ExportRequest", "ExportResult", "CmdMeta", "CmdAction", "CmdRequest",
           "CmdResponse", "TagsGetResult", "PullPathResult", "QueryResult",
           "RetrieveCmdResult", "RetrieveStatusResult", "HelloResult"]

JobState = Literal["pending", "running", "succeeded", "failed", "canceled"]
#: What a node's AE may do when it calls us (DESIGN.md §8, config.DIMSE_OPERATIONS).
DimseOperation = Literal["echo", "store", "find", "get", "move"]
_ALL_OPERATIONS: list[DimseOperation] = ["echo", "store", "find", "get", "move"]


class ErrorBody(BaseModel):
    """Every refusal: HTTP 4xx/5xx with the reason."""

    error: str = Field(description="Why the request was refused or failed.",
                       examples=["node 'PACS1' is not registered"])


# ----------------------------------------------------------------- nodes

class NodeIn(BaseModel):
    """A remote DICOM node: where to reach it and its AE title."""

    model_config = ConfigDict(extra="forbid")

    aet: str = Field(description="AE title: 1-16 characters, no backslash or control "
                     "characters (leading/trailing spaces are dropped).",
                     json_schema_extra={"minLength": 1, "maxLength": 16},
                     examples=["ORTHANC"])
    host: str = Field(description="Host name or IP address.", examples=["127.0.0.1"])
    port: StrictInt = Field(description="TCP port of its DICOM listener.",
                            json_schema_extra={"minimum": 1, "maximum": 65535},
                            examples=[4242])
    allow: list[DimseOperation] = Field(
        default_factory=lambda: list(_ALL_OPERATIONS),
        description="What this AE title may do when it calls us from `host` (as "
                    "`[nodes.NAME] allow`; default all five, [] rejects its associations).",
        examples=[["echo", "store"]])
    tls: StrictBool = Field(False, description="Our associations to this node use DICOM TLS "
                            "(as `[nodes.NAME] tls`; trusting `tls_ca`).")


class NodeOut(BaseModel):
    name: str = Field(description="The node's name in the registry (URL path segment).")
    aet: str
    host: str
    port: int
    allow: list[str] = Field(description="What its AE title may do when it calls us from "
                             "`host` (echo, store, find, get, move).")
    tls: bool = Field(description="Our associations to it use DICOM TLS.")
    source: Literal["config", "runtime"] = Field(
        description="'config': from the TOML file ([nodes.NAME]); 'runtime': added through "
                    "this API and kept in the index database.")
    overrides_config: bool = Field(
        False, description="A runtime entry that hides a TOML node of the same name "
                           "(deleting it brings the TOML one back).")


class NodeList(BaseModel):
    nodes: list[NodeOut]


class EchoResult(BaseModel):
    """Whether the node answered a C-ECHO.  A node that does not answer is a
    normal answer (HTTP 200, ``ok`` false, ``error`` says why)."""

    ok: bool
    ms: float | None = Field(None, description="C-ECHO round trip in milliseconds "
                             "(association set-up not included).")
    error: str | None = Field(None, description="Why the echo failed (connection refused, "
                              "association rejected …).")


# ----------------------------------------------------------------- find

_LEVELS = {"PATIENT": "PATIENT", "STUDY": "STUDY", "SERIES": "SERIES", "IMAGE": "IMAGE",
           "INSTANCE": "IMAGE"}


class FindRequest(BaseModel):
    """A C-FIND sent to the node on the caller's behalf."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["PATIENT", "STUDY", "SERIES", "IMAGE"] = Field(
        description="Query/Retrieve level (Patient Root model at PATIENT, Study Root "
                    "otherwise). Case-insensitive; INSTANCE means IMAGE.")
    query: dict[str, Any] = Field(
        default_factory=dict,
        description="Matching keys, DICOM keyword (or 'ggggeeee' tag) → value: a string "
                    "(wildcards '*' '?', ranges '20200101-'), a list (UID list), or null/'' "
                    "(return the attribute).",
        examples=[{"PatientID": "99999", "StudyDate": "20200101-"}])
    fields: list[str] = Field(default_factory=list,
                              description="Extra attributes to return.",
                              examples=[["StudyDescription"]])
    limit: int | None = Field(None, ge=1, description="Stop after this many matches "
                              "(C-CANCEL).")

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _LEVELS.get(value.strip().upper(), value)
        return value


class FindResponse(BaseModel):
    results: list[dict[str, Any]] = Field(
        description="One flat object per match: keyword → value (text as strings, IS/DS as "
                    "numbers, several values as a list, a sequence as a list of objects).")


# ----------------------------------------------------------------- retrieve and jobs

class RetrieveRequest(BaseModel):
    """Pull a study or series from the node into our archive."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["STUDY", "SERIES"] | None = Field(
        None, description="STUDY or SERIES; by default SERIES when SeriesInstanceUID is "
                          "given, else STUDY.")
    StudyInstanceUID: str | None = Field(None, description="Required at STUDY level; "
                                         "optional at SERIES level (then asked of the node "
                                         "with a C-FIND).")
    SeriesInstanceUID: str | None = Field(None, description="Required at SERIES level.")
    method: Literal["move", "get"] = Field(
        "move", description="'move': C-MOVE to our own AE title (the node must know it); "
                            "'get': C-GET on one association.")

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class RetrieveAccepted(BaseModel):
    job: str = Field(description="Job id; follow it at /api/v1/jobs/{id}.")


class JobOut(BaseModel):
    """A retrieve job (or a route's job, ``kind: "route"``) and where it stands."""

    id: str
    kind: Literal["retrieve", "route"] = "retrieve"
    node: str = Field(description="Name of the remote node retrieved from (a route's "
                      "send_to: sent to; empty for other route actions).")
    level: Literal["STUDY", "SERIES"]
    study_uid: str | None
    series_uid: str | None
    method: Literal["move", "get", "send", "export", "run"] = Field(
        description="Retrieve: move or get; route: the action (send, export, run).")
    state: JobState
    completed: int = Field(description="Instances received so far (peer's count).")
    failed: int = Field(description="Instances that failed (peer's count).")
    warning: int = Field(description="Instances stored with a warning (peer's count).")
    remaining: int | None = Field(description="Instances still to come; null when the peer "
                                  "did not say.")
    error: str | None = Field(description="Why the job failed (or a note).")
    created: str = Field(description="ISO 8601 UTC.")
    updated: str
    started: str | None
    finished: str | None
    owner: str | None = Field(description="The serve process (host:pid:nonce) that ran it.")
    cancel_requested: bool
    requested_by: str | None
    destination: str | None = Field(
        default=None, description="AE title the peer is asked to C-MOVE to (and that calls "
        "it), fixed when the job is made: cluster_ae_title, or the ae_title of the process "
        "that took the request.")
    route: str | None = Field(default=None, description="Route jobs: the route's name.")
    attempts: int | None = Field(default=None, description="Route jobs: attempts made.")
    next_try: str | None = Field(default=None, description="Route jobs: when a failed "
                                 "attempt is tried again (ISO 8601 UTC).")


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first.")


# ----------------------------------------------------------------- archive series

class ExportRequest(BaseModel):
    """Write a stored series into a folder (pfdcm's pullPath)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Absolute folder under one of the configured export_roots "
                                  "('..' components are refused; symlinks are resolved "
                                  "before the check).", examples=["/srv/exports/case1"])
    create_dir: bool = Field(True, description="Create the folder (and parents) if missing.")
    anonymize: bool = Field(False, description="De-identify each file (PS3.15 Basic "
                                               "Profile) while writing; files are then named "
                                               "by their new SOP Instance UID.")


class ExportResult(BaseModel):
    series_uid: str
    path: str = Field(description="The folder written to (real path).")
    files: list[str] = Field(description="File names written (<SOPInstanceUID>.dcm).")
    count: int
    bytes: int = Field(description="Bytes written.")
    anonymized: bool


# ----------------------------------------------------------------- pfdcm compatibility

class CmdMeta(BaseModel):
    """pfdcm's ``meta``; which keys matter depends on the action."""

    model_config = ConfigDict(extra="allow")

    do: str | None = Field(None, description="internalDB: 'DICOMtagsGet'; PACSinteract: "
                                             "'query', 'retrieve' or 'retrieveStatus'.")
    on: dict[str, Any] | None = Field(None, description="What to act on: {'series_uid': …} "
                                      "(+ 'study_uid'), or query keys by DICOM keyword.")
    to: dict[str, Any] | None = Field(None, description="pullPath: {'path': …, "
                                      "'createDir': true}.")
    PACS: str | None = Field(None, description="PACSinteract: the remote node's name "
                                               "(optional when exactly one is registered).")
    method: Literal["move", "get"] | None = Field(None, description="PACSinteract retrieve: "
                                                  "C-MOVE (default) or C-GET.")


class CmdAction(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: str = Field(description="'internalDB', 'pullPath', 'PACSinteract' or 'hello'.")
    meta: CmdMeta = Field(default_factory=CmdMeta)


class CmdRequest(BaseModel):
    """``pfurl --jsonwrapper payload`` sends ``{"payload": {...}}``; the bare
    ``{"action": …, "meta": …}`` is accepted too."""

    model_config = ConfigDict(extra="allow")

    payload: CmdAction | None = None
    action: str | None = None
    meta: CmdMeta | None = None


class TagsGetResult(BaseModel):
    status: bool
    d_dicom: dict[str, str] = Field(description="String-valued tags of the series' first "
                                                "instance, keyword → value.")
    message: str | None = None


class PullPathResult(BaseModel):
    status: bool
    series_uid: str | None = None
    path: str | None = None
    files: list[str] | None = None
    count: int | None = None
    bytes: int | None = None
    message: str | None = None


class QueryResult(BaseModel):
    status: bool
    PACS: str | None = None
    count: int | None = None
    data: list[dict[str, Any]] | None = Field(
        None, description="One flat record per matching series (study and series "
                          "attributes, keyword → value).")
    message: str | None = None


class RetrieveCmdResult(BaseModel):
    status: bool
    job: str | None = None
    PACS: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    method: str | None = None
    state: str | None = None
    message: str | None = None


class RetrieveStatusResult(BaseModel):
    status: bool = Field(description="True when something is known of the series (a job, or "
                                     "instances in our archive).")
    series_uid: str | None = None
    job: str | None = None
    state: JobState | None = None
    completed: int | None = None
    failed: int | None = None
    remaining: int | None = None
    error: str | None = None
    archived: int | None = Field(None, description="Instances of the series in our archive.")
    message: str | None = None


class HelloResult(BaseModel):
    status: bool
    name: str
    version: str
    ae_title: str


class CmdResponse(BaseModel):
    """pfdcm's answer shape: ``status`` and one object named after what was
    done (absent keys are omitted)."""

    status: bool
    message: str | None = None
    DICOMtagsGet: TagsGetResult | None = None
    pullPath: PullPathResult | None = None
    query: QueryResult | None = None
    retrieve: RetrieveCmdResult | None = None
    retrieveStatus: RetrieveStatusResult | None = None
    hello: HelloResult | None = None

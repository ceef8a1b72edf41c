"""The REST API of the gateway, under ``/api/v1`` (JSON; described by the
OpenAPI document at ``/api/v1/openapi.json``; docs/API.md for people).

An adapter only: remote nodes are the registry of
:mod:`pacsnode.remote.registry`; echo and find go through the SCU layer
(:mod:`pacsnode.remote.scu`); retrieves become jobs
(:mod:`pacsnode.remote.jobs`) that the workers of ``pacsnode serve`` run;
series tags come from the index's stored headers; export reads through
:func:`pacsnode.retrieve.locate`.  ``POST /api/v1/cmd`` speaks pfdcm's
protocol on top of the same functions.

Errors: every refusal is ``{"error": "<reason>"}`` with a 4xx/5xx status —
invalid bodies and parameters are 400 (not FastAPI's 422), unknown things
404, paths outside the export roots 403, a remote node that fails us 502.
``/api/v1/cmd`` answers pfdcm's ``{"status": false, "message": …}`` instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from .. import __version__ as _version
from ..access.addresses import check_node_address, public_failure
from ..access.tls import peer_tls
from ..dicom.header import valid_uid
from ..errors import NotFound, PacsnodeError
from ..index.schema import instances, series
from ..node import Node
from ..query.parse import MAX_INTEGER
from ..remote import jobs as jobmod
from ..remote import registry, scu
from ..remote.errors import RemoteError
from ..remote.peer import Peer
from ..retrieve import AS_STORED, locate, outgoing
from .api_models import (CmdAction, CmdMeta, CmdRequest, CmdResponse, EchoResult, ErrorBody,
                         ExportRequest, ExportResult, FindRequest, FindResponse, HelloResult,
                         JobList, JobOut, NodeIn, NodeList, NodeOut, PullPathResult,
                         QueryResult, RetrieveAccepted, RetrieveCmdResult, RetrieveRequest,
                         RetrieveStatusResult, TagsGetResult)
from .errors import INTERNAL_ERROR, WebError

__all__ = ["router", "series_tags", "export_series", "Forbidden"]

log = logging.getLogger("pacsnode.web.api")

#: Timeouts of the synchronous SCU calls made for an HTTP request (echo, find).
CONNECT_TIMEOUT = 10.0
FIND_TIMEOUT = 120.0


class Forbidden(WebError):
    def __init__(self, reason: str) -> None:
        super().__init__(403, reason)


class BadGateway(WebError):
    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


def _validation_reason(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class ApiRoute(APIRoute):
    """Routes of this API: an invalid body or parameter is a 400 with the
    reason (FastAPI would answer 422), rendered like every other refusal
    (web/errors.py).  A subclass answers failures in a shape of its own
    (``failed``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - failed() answers or re-raises
                return self.failed(exc)

        return route

    def failed(self, exc: Exception) -> Response:
        """The answer to ``exc``, raised by the route; re-raises what the
        app's handlers answer (web/errors.py)."""
        if isinstance(exc, RequestValidationError):
            raise WebError(400, _validation_reason(list(exc.errors()))) from None
        raise exc


router = APIRouter(prefix="/api/v1", route_class=ApiRoute)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer."""
    text = {400: "Invalid request (the reason says what)", 403: "Path outside the export "
            "roots (nothing written)", 404: "Not found", 409: "Conflict (the reason says "
            "what)", 502: "The remote node failed (refused, unreachable, error status)"}
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text[code]} for code in codes}
    out["default"] = {"model": ErrorBody, "description": "Unexpected error"}
    return out


def _node(request: Request) -> Node:
    node: Node = request.app.state.node  # (Starlette's State holds Any)
    return node


def _client(request: Request) -> str:
    return f"api:{request.client.host}" if request.client else "api"


def _registered(node: Node, name: str) -> registry.RegisteredNode:
    entry = registry.get_node(node, name)
    if entry is None:
        raise NotFound(f"node {name!r} is not registered")
    return entry


def _peer(node: Node, entry: registry.RegisteredNode, dimse_timeout: float) -> Peer:
    return Peer(aet=entry.aet, host=entry.host, port=entry.port,
                calling_aet=node.settings.ae_title, timeout=CONNECT_TIMEOUT,
                dimse_timeout=dimse_timeout,
                tls=peer_tls(node.settings, entry.tls))


def _node_out(entry: registry.RegisteredNode) -> NodeOut:
    return NodeOut(name=entry.name, aet=entry.aet, host=entry.host, port=entry.port,
                   allow=list(entry.allow), tls=entry.tls, source=entry.source,
                   overrides_config=entry.overrides_config)


def _check_uid(uid: str, what: str) -> str:
    if not valid_uid(uid):
        raise WebError(400, f"{what} {uid[:80]!r} is not a valid UID (1-64 characters of "
                       "digits and dots)")
    return uid


# =============================================================== remote nodes

@router.get("/nodes", tags=["nodes"], summary="List remote nodes",
            response_model=NodeList, responses=_errors())
def list_nodes(request: Request) -> NodeList:
    """Every remote DICOM node: those of the configuration file (`source`
    "config") and those added through this API (`source` "runtime", kept in
    the index database and shared by every serve process).  The C-MOVE SCP
    sends to these nodes, by AE title."""
    return NodeList(nodes=[_node_out(e) for e in registry.list_nodes(_node(request))])


@router.get("/nodes/{name}", tags=["nodes"], summary="One remote node",
            response_model=NodeOut, responses=_errors(404))
def get_node(name: str, request: Request) -> NodeOut:
    return _node_out(_registered(_node(request), name))


@router.put("/nodes/{name}", tags=["nodes"], summary="Add or replace a remote node",
            response_model=NodeOut, status_code=200,
            responses={201: {"model": NodeOut, "description": "Created"}, **_errors(400)})
def put_node(name: str, body: NodeIn, request: Request, response: Response) -> NodeOut:
    """Creates (201) or replaces (200) the runtime entry `name`.  A runtime
    entry named like a configuration-file node overrides it.  A host that is
    (or resolves to) a link-local, unspecified or multicast address is
    refused (400), and so is one outside `node_networks` when that is set.
    `allow` and `tls` work as in `[nodes.NAME]` (DIMSE policy within 2 s)."""
    registry.check_name(name)
    registry.check_aet(body.aet)
    registry.check_host(body.host)
    registry.check_port(body.port)
    check_node_address(body.host, _node(request).settings.node_networks)
    entry, created = registry.put_node(_node(request), name, body.aet, body.host, body.port,
                                       body.allow, body.tls)
    response.status_code = 201 if created else 200
    log.info("node %s %s: %s@%s:%s, allow %s%s", name, "added" if created else "replaced",
             entry.aet, entry.host, entry.port, ",".join(entry.allow) or "nothing",
             ", TLS" if entry.tls else "")
    return _node_out(entry)


@router.delete("/nodes/{name}", tags=["nodes"], summary="Remove a runtime node",
               status_code=204, response_class=Response, responses=_errors(404, 409))
def delete_node(name: str, request: Request) -> Response:
    """Removes the runtime entry `name` (a configuration-file node of the same
    name, if any, applies again).  A node defined only in the configuration
    file cannot be removed here (409)."""
    try:
        registry.delete_node(_node(request), name)
    except LookupError:
        raise NotFound(f"node {name!r} is not registered") from None
    return Response(status_code=204)


@router.post("/nodes/{name}/echo", tags=["nodes"], summary="C-ECHO a remote node",
             response_model=EchoResult, responses=_errors(404))
def echo_node(name: str, request: Request) -> EchoResult:
    """A node that does not answer is reported in the body (`ok` false and
    `error`), still with HTTP 200: the echo itself was carried out."""
    node = _node(request)
    peer = _peer(node, _registered(node, name), dimse_timeout=30.0)
    try:
        ms = scu.echo(peer)
    except RemoteError as exc:
        return EchoResult(ok=False, error=public_failure(exc, str(peer)))
    return EchoResult(ok=True, ms=round(ms, 3))


@router.post("/nodes/{name}/find", tags=["nodes"], summary="C-FIND on a remote node",
             response_model=FindResponse, responses=_errors(400, 404, 502))
def find_on_node(name: str, body: FindRequest, request: Request) -> FindResponse:
    """Queries the node and answers its matches as flat objects, keyword →
    value, with every requested key present."""
    node = _node(request)
    peer = _peer(node, _registered(node, name), dimse_timeout=FIND_TIMEOUT)
    try:
        results = scu.find(peer, body.level, body.query, fields=body.fields, limit=body.limit)
    except RemoteError as exc:
        raise BadGateway(public_failure(exc, str(peer))) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise WebError(400, str(exc)) from None
    return FindResponse(results=results)


@router.post("/nodes/{name}/retrieve", tags=["jobs"], summary="Retrieve into the archive",
             status_code=202, response_model=RetrieveAccepted, responses=_errors(400, 404))
def retrieve_from_node(name: str, body: RetrieveRequest, request: Request,
                       response: Response) -> RetrieveAccepted:
    """Starts a job that pulls a study or series from the node into our own
    archive — by C-MOVE to our AE title (the node must know it) or C-GET —
    and answers at once with the job id (`Location: /api/v1/jobs/{id}`).
    A series the node does not have ends the job `failed` with a reason."""
    node = _node(request)
    _registered(node, name)
    level = body.level or ("SERIES" if body.SeriesInstanceUID else "STUDY")
    study = body.StudyInstanceUID or ""
    series_uid = body.SeriesInstanceUID or ""
    if level == "SERIES" and not series_uid:
        raise WebError(400, "SeriesInstanceUID is required at SERIES level")
    if level == "STUDY" and not study:
        raise WebError(400, "StudyInstanceUID is required at STUDY level")
    if level == "STUDY" and series_uid:
        raise WebError(400, "SeriesInstanceUID given at STUDY level; use level SERIES")
    if study:
        _check_uid(study, "StudyInstanceUID")
    if series_uid:
        _check_uid(series_uid, "SeriesInstanceUID")
    job = jobmod.submit(node, node_name=name, level=level, study_uid=study,
                        series_uid=series_uid, method=body.method,
                        requested_by=_client(request))
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return RetrieveAccepted(job=job.id)


# =============================================================== jobs

def _job_out(job: jobmod.Job) -> JobOut:
    return JobOut(**job.as_dict())


@router.get("/jobs", tags=["jobs"], summary="List retrieve jobs",
            response_model=JobList, responses=_errors(400))
def list_jobs(request: Request,
              limit: int = Query(100, ge=1, le=1000, description="At most this many."),
              offset: int = Query(0, ge=0, le=MAX_INTEGER,
                                  description="Skip this many (newest first)."),
              state: Literal["pending", "running", "succeeded", "failed", "canceled"] | None =
              Query(None, description="Only jobs in this state."),
              node: str | None = Query(None, description="Only jobs of this remote node."),
              series_uid: str | None = Query(None, description="Only jobs of this series.")
              ) -> JobList:
    found = jobmod.list_jobs(_node(request).db, limit=limit, offset=offset, state=state,
                             node_name=node, series_uid=series_uid)
    return JobList(jobs=[_job_out(j) for j in found])


@router.get("/jobs/{job_id}", tags=["jobs"], summary="One job and its progress",
            response_model=JobOut, responses=_errors(404))
def get_job(job_id: str, request: Request) -> JobOut:
    """`completed`/`failed`/`remaining` follow the peer's C-MOVE/C-GET
    responses as they arrive."""
    job = jobmod.get_job(_node(request).db, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return _job_out(job)


@router.delete("/jobs/{job_id}", tags=["jobs"], summary="Cancel a job",
               response_model=JobOut,
               responses={202: {"model": JobOut, "description": "Cancel requested; the job "
                                "was still running after 10 s"},
                          **_errors(404, 409)})
def cancel_job(job_id: str, request: Request, response: Response) -> JobOut:
    """A pending job is canceled at once.  A running one gets a C-CANCEL
    sent to the peer (by whichever serve process runs it); the answer comes
    when it has stopped (200, state `canceled` with the counts reached) or
    after 10 s (202, still running).  A job that already succeeded or failed
    cannot be canceled (409); canceling a canceled job is harmless."""
    job = jobmod.request_cancel(_node(request), job_id)
    if not job.done:
        response.status_code = 202
    return _job_out(job)


# =============================================================== archive series

#: Value representations whose single value pydicom gives as ``str``
#: (pfdcm's DICOMtagsGet returns exactly those; person names are not str).
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC",
                        "UI", "UR", "UT"})


def series_tags(node: Node, series_uid: str) -> dict[str, str] | None:
    """pfdcm's DICOMtagsGet: the top-level, single-valued, string-valued
    attributes (VRs in ``STRING_VRS``) of the series' first instance (in
    InstanceNumber order), keyword → value ('' when empty), from the header
    the index keeps — no file is read.  None when the series is unknown."""
    stmt = (select(instances.c.meta_json)
            .join(series, series.c.id == instances.c.series_fk)
            .where(series.c.seriesinstanceuid == series_uid)
            .order_by(instances.c.instancenumber.is_(None), instances.c.instancenumber,
                      instances.c.id)
            .limit(1))
    with node.db.read() as conn:
        meta = conn.execute(stmt).scalar()
    if meta is None:
        return None
    out: dict[str, str] = {}
    for tag, elem in json.loads(meta).items():
        if elem.get("vr") not in STRING_VRS or "BulkDataURI" in elem or "InlineBinary" in elem:
            continue
        keyword = keyword_for_tag(int(tag, 16))
        if not keyword:
            continue
        values = elem.get("Value") or []
        if len(values) > 1:
            continue  # several values: not a string
        value = values[0] if values else ""
        out[keyword] = "" if value is None else str(value)
    return out


def archived_count(node: Node, series_uid: str) -> int:
    stmt = (select(func.count()).select_from(instances)
            .join(series, series.c.id == instances.c.series_fk)
            .where(series.c.seriesinstanceuid == series_uid))
    with node.db.read() as conn:
        return int(conn.execute(stmt).scalar_one())


@router.get("/series/{series_uid}/tags", tags=["archive"],
            summary="String tags of a series (pfdcm DICOMtagsGet)",
            response_model=dict[str, str], responses=_errors(400, 404))
def get_series_tags(series_uid: str, request: Request) -> dict[str, str]:
    """The string-valued attributes of the series' first instance (in
    InstanceNumber order), keyword → value, as stored in the index.  Like
    pfdcm: top level only, single-valued text/date/time/UID attributes (not
    person names, numbers, multi-valued attributes or sequences)."""
    _check_uid(series_uid, "SeriesInstanceUID")
    tags = series_tags(_node(request), series_uid)
    if tags is None:
        raise NotFound(f"series {series_uid} is not in the archive")
    return tags


def _export_dir(roots: list[str], raw: str, create: bool) -> Path:
    """The real folder to write to, if it lies under an export root; raises
    Forbidden (nothing created) otherwise."""
    real_roots = [os.path.realpath(r) for r in roots]
    if not real_roots:
        raise Forbidden("export is disabled: no export_roots are configured")
    if not raw or "\x00" in raw:
        raise WebError(400, "path is empty or holds a NUL character")
    _check_path_lengths(raw)
    pure = PurePosixPath(raw)
    if not pure.is_absolute():
        raise Forbidden(f"path {raw!r} is relative; give an absolute path under an export "
                        f"root ({', '.join(real_roots)})")
    if ".." in pure.parts:
        raise Forbidden(f"path {raw!r} holds a '..' component")
    real = os.path.realpath(raw)
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots):
        raise Forbidden(f"path {raw!r} (really {real}) is not under an export root "
                        f"({', '.join(real_roots)})")
    if not os.path.isdir(real):
        if os.path.lexists(real):
            raise WebError(400, f"{raw} exists and is not a folder")
        if not create:
            raise WebError(400, f"folder {raw} does not exist (create_dir is false)")
        try:
            os.makedirs(real, exist_ok=True)
        except OSError as exc:  # the system's words (permission, read-only, full)
            raise WebError(400, f"cannot create folder {raw}: "
                           f"{exc.strerror or 'the file system refused'}") from None
    return Path(real)


#: Bytes of one file name and of a whole path the file systems we write to
#: take (Linux NAME_MAX and PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4095


def _check_path_lengths(raw: str) -> None:
    """400 for a path no file system would take, before anything is made
    (the check otherwise ends in "File name too long" from the kernel)."""
    encoded = os.fsencode(raw)
    if len(encoded) > PATH_MAX:
        raise WebError(400, f"path is {len(encoded)} bytes long; at most {PATH_MAX} are taken")
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            name = os.fsdecode(part)
            raise WebError(400, f"path component {name[:40]!r}... is {len(part)} bytes long; "
                           f"a folder name takes at most {NAME_MAX}")


def _open_dir(folder: Path, roots: list[str]) -> int:
    """Open the folder and check, on the open descriptor, that it is still
    under a root (a folder swapped for a symlink after the check is caught)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    proc = f"/proc/self/fd/{fd}"
    if os.path.exists(proc):
        real = os.readlink(proc)
        if not any(real == os.path.realpath(r) or
                   real.startswith(os.path.realpath(r).rstrip(os.sep) + os.sep)
                   for r in roots):
            os.close(fd)
            raise Forbidden(f"{folder} changed under us and is not under an export root")
    return fd


def _write_in(dir_fd: int, name: str, fill: Callable[[BinaryIO], None]) -> int:
    """Write ``name`` in the folder atomically (temp file + rename), never
    through a symlink; return the bytes written."""
    temp = f".{name}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            size = fh.tell()
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    return size


def export_series(node: Node, series_uid: str, path: str, create_dir: bool = True,
                  anonymize: bool = False) -> ExportResult:
    """Write the stored files of a series into ``path`` as
    ``<SOPInstanceUID>.dcm`` (pfdcm's pullPath); only under
    ``settings.export_roots``.  Files are copied byte for byte (through the
    one reader, ``retrieve.outgoing``, as stored), or
    de-identified with the Basic Profile when ``anonymize``."""
    _check_uid(series_uid, "SeriesInstanceUID")
    refs = locate(node, series_uid=series_uid)
    if not refs:
        raise NotFound(f"series {series_uid} is not in the archive")
    anonymizer: Callable[[Dataset, dict[str, str]], object] | None = None
    if anonymize:
        from ..tools.anonymize import anonymize_dataset as anonymizer
    roots = list(node.settings.export_roots)
    folder = _export_dir(roots, path, create_dir)
    dir_fd = _open_dir(folder, roots)
    files: list[str] = []
    total = 0
    uid_map: dict[str, str] = {}
    try:
        for ref in refs:
            if anonymizer is None:
                name = f"{ref.sop_instance_uid}.dcm"
                copy = outgoing(ref, [AS_STORED]).write_part10
            else:
                from pydicom import dcmread
                ds = dcmread(ref.path)
                anonymizer(ds, uid_map)
                name = f"{ds.SOPInstanceUID}.dcm"

                def copy(fh: BinaryIO, ds: Dataset = ds) -> None:
                    ds.save_as(fh, enforce_file_format=True)
            total += _write_in(dir_fd, name, copy)
            files.append(name)
    finally:
        os.close(dir_fd)
    log.info("exported series %s (%d files%s) to %s", series_uid, len(files),
             ", anonymized" if anonymize else "", folder)
    return ExportResult(series_uid=series_uid, path=str(folder), files=files, count=len(files),
                        bytes=total, anonymized=anonymize)


@router.post("/series/{series_uid}/export", tags=["archive"],
             summary="Write a series into a folder (pfdcm pullPath)",
             response_model=ExportResult, responses=_errors(400, 403, 404))
def export(series_uid: str, body: ExportRequest, request: Request) -> ExportResult:
    """Writes the series' stored files as `<SOPInstanceUID>.dcm` into `path`,
    which must be an absolute folder under one of the configured
    `export_roots` once symlinks are resolved; anything else is 403 and
    nothing is written.  Files are written atomically and never through a
    symlink; existing files of the same name are replaced."""
    return export_series(_node(request), series_uid, body.path, body.create_dir,
                         body.anonymize)


# =============================================================== pfdcm compatibility

class CmdError(Exception):
    def __init__(self, status: int, message: str, key: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.key, self.detail = status, message, key, detail


def _cmd_error(exc: CmdError) -> JSONResponse:
    body: dict[str, Any] = {"status": False, "message": exc.message}
    if exc.key:
        body[exc.key] = {"status": False, "message": exc.message, **(exc.detail or {})}
    return JSONResponse(body, exc.status)


class CmdRoute(ApiRoute):
    """The pfdcm endpoint answers every failure in pfdcm's shape."""

    def failed(self, exc: Exception) -> Response:
        if isinstance(exc, RequestValidationError):
            return _cmd_error(CmdError(400, _validation_reason(list(exc.errors()))))
        if isinstance(exc, CmdError):
            return _cmd_error(exc)
        if isinstance(exc, PacsnodeError):
            return _cmd_error(CmdError(exc.http_status, exc.reason))
        if isinstance(exc, HTTPException):
            return _cmd_error(CmdError(exc.status_code, str(exc.detail)))
        log.exception("pfdcm command failed", exc_info=exc)
        return _cmd_error(CmdError(500, INTERNAL_ERROR))


_SERIES_FIELDS = ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                  "StudyTime", "StudyDescription", "AccessionNumber", "ModalitiesInStudy",
                  "StudyInstanceUID", "SeriesDate", "SeriesTime", "SeriesDescription",
                  "SeriesNumber", "Modality", "BodyPartExamined", "ProtocolName",
                  "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"]

#: pfdcm's lower-case names for the unique keys.
_ALIASES = {"series_uid": "SeriesInstanceUID", "study_uid": "StudyInstanceUID",
            "patient_id": "PatientID"}


def _on(meta: Any) -> dict[str, Any]:
    return dict(meta.on or {})


def _series_uid_of(on: dict[str, Any], key: str) -> str:
    uid = on.get("series_uid") or on.get("SeriesInstanceUID")
    if not isinstance(uid, str) or not uid:
        raise CmdError(400, "meta.on.series_uid is required", key)
    if not valid_uid(uid):
        raise CmdError(400, f"series_uid {uid[:80]!r} is not a valid UID", key)
    return uid


def _pacs(node: Node, meta: CmdMeta, key: str) -> registry.RegisteredNode:
    name = meta.PACS
    known = registry.list_nodes(node)
    if not name:
        if len(known) == 1:
            return known[0]
        raise CmdError(400, "meta.PACS (the remote node's name) is required", key)
    for entry in known:
        if entry.name == name or entry.name.lower() == str(name).lower():
            return entry
    raise CmdError(404, f"PACS {name!r} is not a registered node (known: "
                        f"{', '.join(e.name for e in known) or 'none'})", key)


def _cmd_tags(node: Node, meta: CmdMeta) -> CmdResponse:
    if (meta.do or "") != "DICOMtagsGet":
        raise CmdError(400, f"internalDB: unknown 'do' {meta.do!r} (known: DICOMtagsGet)")
    uid = _series_uid_of(_on(meta), "DICOMtagsGet")
    tags = series_tags(node, uid)
    if tags is None:
        raise CmdError(404, f"series {uid} is not in the archive (retrieve it first)",
                       "DICOMtagsGet", {"d_dicom": {}})
    return CmdResponse(status=True, DICOMtagsGet=TagsGetResult(status=True, d_dicom=tags))


def _cmd_pull_path(node: Node, meta: CmdMeta) -> CmdResponse:
    uid = _series_uid_of(_on(meta), "pullPath")
    to = dict(meta.to or {})
    path = to.get("path")
    if not isinstance(path, str) or not path:
        raise CmdError(400, "meta.to.path is required", "pullPath")
    create = to.get("createDir", to.get("create_dir", True))
    try:
        result = export_series(node, uid, path, create_dir=bool(create),
                               anonymize=bool(to.get("anonymize", False)))
    except PacsnodeError as exc:
        raise CmdError(exc.http_status, exc.reason, "pullPath") from None
    return CmdResponse(status=True, pullPath=PullPathResult(
        status=True, series_uid=uid, path=result.path, files=result.files, count=result.count,
        bytes=result.bytes))


def _cmd_query(node: Node, meta: CmdMeta) -> CmdResponse:
    entry = _pacs(node, meta, "query")
    keys: dict[str, Any] = {}
    for key, value in _on(meta).items():
        keys[_ALIASES.get(key, key)] = value
    peer = _peer(node, entry, dimse_timeout=FIND_TIMEOUT)
    fields = [f for f in _SERIES_FIELDS if f not in keys]
    try:
        records = scu.find(peer, "SERIES", keys, fields=fields)
    except RemoteError as exc:
        raise CmdError(502, str(exc), "query") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise CmdError(400, str(exc), "query") from None
    return CmdResponse(status=True, query=QueryResult(status=True, PACS=entry.name,
                                                      count=len(records), data=records))


def _cmd_retrieve(node: Node, meta: CmdMeta, requested_by: str) -> CmdResponse:
    entry = _pacs(node, meta, "retrieve")
    on = _on(meta)
    uid = _series_uid_of(on, "retrieve")
    study = on.get("study_uid") or on.get("StudyInstanceUID") or ""
    if study and (not isinstance(study, str) or not valid_uid(study)):
        raise CmdError(400, f"study_uid {str(study)[:80]!r} is not a valid UID", "retrieve")
    method = meta.method or "move"
    job = jobmod.submit(node, node_name=entry.name, level="SERIES", study_uid=study,
                        series_uid=uid, method=method, requested_by=requested_by)
    return CmdResponse(status=True, retrieve=RetrieveCmdResult(
        status=True, job=job.id, PACS=entry.name, series_uid=uid, study_uid=study or None,
        method=method, state=job.state))


def _cmd_retrieve_status(node: Node, meta: CmdMeta) -> CmdResponse:
    uid = _series_uid_of(_on(meta), "retrieveStatus")
    name = meta.PACS
    if name:
        name = _pacs(node, meta, "retrieveStatus").name
    job = jobmod.latest_for_series(node.db, uid, name)
    archived = archived_count(node, uid)
    result = RetrieveStatusResult(status=job is not None or archived > 0, series_uid=uid,
                                  archived=archived)
    if job is not None:
        # (jobs.py types the state str; it holds one of JobState's values)
        result.job, result.state = job.id, job.state  # type: ignore[assignment]
        result.completed, result.failed = job.completed, job.failed
        result.remaining, result.error = job.remaining, job.error or None
    if not result.status:
        result.message = f"no retrieve of series {uid} is known and none of it is archived"
    return CmdResponse(status=True, retrieveStatus=result)


def _cmd_pacs(node: Node, meta: CmdMeta, requested_by: str) -> CmdResponse:
    do = meta.do or ""
    if do == "query":
        return _cmd_query(node, meta)
    if do == "retrieve":
        return _cmd_retrieve(node, meta, requested_by)
    if do == "retrieveStatus":
        return _cmd_retrieve_status(node, meta)
    raise CmdError(400, f"PACSinteract: unknown 'do' {do!r} (known: query, retrieve, "
                        "retrieveStatus)")


def _parse_cmd(body: CmdRequest) -> CmdAction:
    if body.payload is not None:
        return body.payload
    if body.action is not None:
        return CmdAction(action=body.action, meta=body.meta or CmdMeta())
    raise CmdError(400, "no action: send {\"payload\": {\"action\": …, \"meta\": …}} "
                        "(pfurl --jsonwrapper payload) or {\"action\": …, \"meta\": …}")


def cmd(body: CmdRequest, request: Request) -> CmdResponse:
    """pfdcm's command endpoint, for clients written against pfdcm
    (`pfurl --jsonwrapper payload`).  Actions:

    * `internalDB` with `do: DICOMtagsGet`, `on.series_uid` →
      `{"status": true, "DICOMtagsGet": {"status": true, "d_dicom": {…}}}`
    * `pullPath` with `on.series_uid`, `to.path`, `to.createDir` → the series'
      files written there (as `POST /series/{uid}/export`)
    * `PACSinteract` with `PACS: <node name>` and `do`:
      `query` (`on`: matching keys by keyword; one flat record per series),
      `retrieve` (`on.series_uid`, optional `on.study_uid`; starts a job),
      `retrieveStatus` (`on.series_uid`; the latest job and how many
      instances of the series are archived)
    * `hello` → name and version

    Failures answer `{"status": false, "message": …}` with a 4xx/5xx status
    (unknown action 400)."""
    node = _node(request)
    action = _parse_cmd(body)
    meta = action.meta
    if action.action == "internalDB":
        return _cmd_tags(node, meta)
    if action.action == "pullPath":
        return _cmd_pull_path(node, meta)
    if action.action == "PACSinteract":
        return _cmd_pacs(node, meta, "pfdcm:" + _client(request))
    if action.action == "hello":
        return CmdResponse(status=True, hello=HelloResult(
            status=True, name="pacsnode", version=_version, ae_title=node.settings.ae_title))
    raise CmdError(400, f"unknown action {action.action!r} (known: internalDB, pullPath, "
                        "PACSinteract, hello)")


_CMD_ERRORS = {code: {"model": CmdResponse, "description": text} for code, text in (
    (400, "Unknown action or invalid request: {\"status\": false, \"message\": …}"),
    (403, "pullPath outside the export roots"),
    (404, "Unknown series or PACS"),
    (502, "The remote node failed"),
    ("default", "Unexpected error"))}

router.add_api_route("/cmd", cmd, methods=["POST"], tags=["pfdcm"],
                     summary="pfdcm-compatible command endpoint",
                     response_model=CmdResponse, response_model_exclude_none=True,
                     responses=_CMD_ERRORS, route_class_override=CmdRoute)

"""UPS-RS (PS3.18 11) under ``/dicomweb/workitems``: an adapter only.

Each route translates HTTP into one ``pacsnode.ups.Worklist`` call and its
outcome back into HTTP.  Both query forms of PS3.18 are accepted: the raw
``POST /workitems?{workitem}`` and ``POST /workitems/{uid}?{transaction-uid}``
and the named ``?AffectedSOPInstanceUID=…`` and ``?transaction=…``.  A body
is one DICOM JSON object or an array of one.  Every refusal carries
``Warning: 299 <host> "<reason>"`` and a JSON body ``{"error": reason,
"status": <DIMSE status>}``.  What is and is not implemented is written down in
docs/UPS.md.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import PacsnodeError
from ..events import Origin
from ..dicom.header import valid_uid
from ..ups import InvalidWorkitem, UPSRefusal, Worklist, parse_workitem_json
from .errors import WebError

__all__ = ["router"]

log = logging.getLogger("pacsnode.web.ups")

router = APIRouter(prefix="/dicomweb", tags=["UPS-RS"])

DICOM_JSON = "application/dicom+json"
#: The Workitem bodies we accept; a Workitem is small.
MAX_BODY = 16 * 1024 * 1024
_JSON_TYPES = ("application/dicom+json", "application/json")
_ACCEPTABLE = ("application/dicom+json", "application/json", "application/*", "*/*")


def _worklist(request: Request) -> Worklist:
    return Worklist.for_node(request.app.state.node)


def _origin(request: Request) -> Origin:
    return Origin("dicomweb", address=request.client.host if request.client else "")


def _header_text(text: str) -> str:
    clean = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text).replace('"', "'")
    return clean[:1000]


def _warn_agent(request: Request) -> str:
    host = request.headers.get("host") or request.url.netloc or "pacsnode"
    host = "".join(ch for ch in host if ch.isalnum() or ch in ".-:[]")
    return host or "pacsnode"


def _warning(request: Request, text: str) -> str:
    return f'299 {_warn_agent(request)} "{_header_text(text)}"'


def _refusal(request: Request, exc: PacsnodeError) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.reason}
    if isinstance(exc, UPSRefusal):
        body["status"] = f"{exc.dimse_status:04X}"
    return JSONResponse(body, status_code=exc.http_status,
                        headers={"Warning": _warning(request, exc.reason)})


def _done(request: Request, uid: str, warning: str | None) -> Response:
    """200 for an update or a state change, with the Workitem's URL and any warning."""
    headers = {"Content-Location": _url(request, uid)}
    if warning:
        headers["Warning"] = _warning(request, warning)
    return Response(status_code=200, headers=headers)


def _check_uid(uid: str) -> None:
    if not valid_uid(uid):
        raise InvalidWorkitem(f"the Workitem UID {uid[:80]!r} is not a valid UID "
                              "(1-64 characters of digits and dots)")


def _url(request: Request, uid: str) -> str:
    return str(request.base_url).rstrip("/") + f"/dicomweb/workitems/{uid}"


def _query_uid(request: Request, *names: str) -> str | None:
    """A UID given either named (``?name=uid``) or raw (``?uid``)."""
    raw = request.url.query
    if not raw:
        return None
    pairs = parse_qsl(raw, keep_blank_values=True)
    for key, value in pairs:
        if key in names and value.strip():
            return value.strip()
    if "=" not in raw and "&" not in raw:
        return unquote(raw).strip() or None
    for key, value in pairs:
        digits = key.replace(".", "")
        if value == "" and digits.isascii() and digits.isdigit():
            return key  # "?1.2.3=" from clients that always append "="
    return None


async def _body(request: Request, optional: bool = False) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise WebError(413, f"the body is larger than {MAX_BODY} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise WebError(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if optional and not body.strip():
        return body
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _JSON_TYPES:
        raise WebError(415, f"the body must be {DICOM_JSON}, not {ctype or 'untyped'}")
    return body


def _accepts_json(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPTABLE or media.startswith("multipart/related") and \
                "application/dicom+json" in part:
            return
    raise WebError(406, f"Workitems are sent as {DICOM_JSON}; the Accept header "
                        f"({accept[:200]}) does not allow it")


# -- Create ---------------------------------------------------------------------

@router.post("/workitems", summary="UPS-RS Create Workitem (PS3.18 11.4)", status_code=201)
async def create_workitem(request: Request) -> Response:
    try:
        uid = _query_uid(request, "AffectedSOPInstanceUID", "workitem")
        ds = parse_workitem_json(await _body(request))
        assert ds is not None
        outcome = await run_in_threadpool(_worklist(request).create, ds, uid, _origin(request))
    except PacsnodeError as exc:
        return _refusal(request, exc)
    url = _url(request, outcome.uid)
    return Response(status_code=201, headers={"Location": url, "Content-Location": url})


# -- Search ---------------------------------------------------------------------

@router.get("/workitems", summary="UPS-RS Search for Workitems (PS3.18 11.9)")
def search_workitems(request: Request) -> Response:
    node = request.app.state.node
    max_limit = int(node.settings.qido_max_limit)
    params = request.query_params.multi_items()
    try:
        _accepts_json(request)
        worklist = _worklist(request)
        matches = worklist.search(params, max_limit)
    except PacsnodeError as exc:
        return _refusal(request, exc)
    if not matches:
        return Response(status_code=204)
    headers: dict[str, str] = {}
    asked = [v for k, v in params if k == "limit"]
    asked_limit = int(asked[-1]) if asked else None
    if len(matches) == max_limit and (asked_limit is None or asked_limit > max_limit):
        offset = int(next((v for k, v in reversed(params) if k == "offset"), "0"))
        total = worklist.count(params)
        if total > offset + len(matches):
            headers["Warning"] = _warning(
                request, f"There are additional results that can be requested: {total} "
                         f"matches, at most {max_limit} per response; use "
                         f"offset={offset + len(matches)}")
    return JSONResponse(matches, media_type=DICOM_JSON, headers=headers)


# -- Retrieve -------------------------------------------------------------------

@router.get("/workitems/{uid}", summary="UPS-RS Retrieve Workitem (PS3.18 11.5)")
def retrieve_workitem(request: Request, uid: str) -> Response:
    try:
        _check_uid(uid)
        _accepts_json(request)
        body = _worklist(request).retrieve(uid)
    except PacsnodeError as exc:
        return _refusal(request, exc)
    return JSONResponse([body], media_type=DICOM_JSON,
                        headers={"Content-Location": _url(request, uid)})


# -- Update ---------------------------------------------------------------------

@router.post("/workitems/{uid}", summary="UPS-RS Update Workitem (PS3.18 11.6)")
async def update_workitem(request: Request, uid: str) -> Response:
    try:
        _check_uid(uid)
        transaction_uid = _query_uid(request, "transaction", "TransactionUID")
        ds = parse_workitem_json(await _body(request))
        assert ds is not None
        outcome = await run_in_threadpool(_worklist(request).update, uid, ds,
                                          transaction_uid, _origin(request))
    except PacsnodeError as exc:
        return _refusal(request, exc)
    return _done(request, uid, outcome.warning)


# -- Change state ---------------------------------------------------------------

@router.put("/workitems/{uid}/state", summary="UPS-RS Change Workitem State (PS3.18 11.7)")
async def change_workitem_state(request: Request, uid: str) -> Response:
    try:
        _check_uid(uid)
        ds = parse_workitem_json(await _body(request))
        assert ds is not None
        state = str(ds.get("ProcedureStepState", "") or "").strip()
        transaction_uid = str(ds.get("TransactionUID", "") or "").strip()
        outcome = await run_in_threadpool(_worklist(request).change_state, uid, state,
                                          transaction_uid, _origin(request))
    except PacsnodeError as exc:
        return _refusal(request, exc)
    return _done(request, uid, outcome.warning)


# -- Request cancellation -----------------------------------------------------------

@router.post("/workitems/{uid}/cancelrequest",
             summary="UPS-RS Request Cancellation (PS3.18 11.8)", status_code=202)
async def request_cancellation(request: Request, uid: str) -> Response:
    try:
        _check_uid(uid)
        info = parse_workitem_json(await _body(request, optional=True), optional=True)
        await run_in_threadpool(_worklist(request).request_cancel, uid, info,
                                _origin(request))
    except PacsnodeError as exc:
        return _refusal(request, exc)
    return Response(status_code=202, headers={"Content-Location": _url(request, uid)})


# -- Subscriptions (UPS Watch / Event): not implemented -----------------------------

_NO_WATCH = ("Subscriptions are not implemented: this server has no UPS Watch or UPS Event "
             "SOP class (no event reports, no WebSocket notifications)")


@router.post("/workitems/{uid}/subscribers/{aet}",
             summary="UPS-RS Subscribe (not implemented)")
def subscribe(request: Request, uid: str, aet: str) -> Response:
    return _refusal(request, WebError(501, _NO_WATCH))


@router.delete("/workitems/{uid}/subscribers/{aet}",
               summary="UPS-RS Unsubscribe (not implemented)")
def unsubscribe(request: Request, uid: str, aet: str) -> Response:
    return _refusal(request, WebError(501, _NO_WATCH))


@router.post("/workitems/{uid}/subscribers/{aet}/suspend",
             summary="UPS-RS Suspend Global Subscription (not implemented)")
def suspend(request: Request, uid: str, aet: str) -> Response:
    return _refusal(request, WebError(501, _NO_WATCH))


# -- anything else under /workitems: refused with a reason, like the rest ---------

_ALLOWED = {"": "GET, POST", "state": "PUT", "cancelrequest": "POST"}


def _not_allowed(request: Request, what: str, allow: str) -> JSONResponse:
    response = _refusal(request, WebError(
        405, f"{request.method} is not a UPS-RS transaction on {what}; allowed: {allow}"))
    response.headers["Allow"] = allow
    return response


@router.api_route("/workitems", methods=["PUT", "DELETE", "PATCH"], include_in_schema=False)
def worklist_other(request: Request) -> Response:
    return _not_allowed(request, "the Worklist", "GET, POST")


@router.api_route("/workitems/{uid}", methods=["PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
def workitem_other(request: Request, uid: str) -> Response:
    return _not_allowed(request, "a Workitem", _ALLOWED[""])


@router.api_route("/workitems/{uid}/{rest:path}",
                  methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def workitem_unknown(request: Request, uid: str, rest: str) -> Response:
    if rest in _ALLOWED:
        return _not_allowed(request, f"/workitems/{{workitem}}/{rest}", _ALLOWED[rest])
    return _refusal(request, WebError(404, f"no UPS-RS resource /workitems/{uid}/{rest}"))

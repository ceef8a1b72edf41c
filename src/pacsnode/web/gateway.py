"""``/dicomweb/remote/{node}/…``: DICOMweb for a registered DIMSE node
(DESIGN.md §11, docs/GATEWAY.md).  An adapter only: the logic is in
``pacsnode.remote.gateway``.

QIDO-RS (the six search resources of ``/dicomweb``) is answered by a
C-FIND on the node, in the same DICOM JSON and with the same statuses as
``/dicomweb`` (204 when nothing matches, 400 for a bad query); each match's
RetrieveURL points back under this gateway.

WADO-RS (anything under ``/studies/{study}``: instances, metadata, frames,
bulk data, rendered, thumbnails) is served by the very handler that serves
``/dicomweb/studies/{study}/…``, once the archive holds what the request
names — pulled from the node first when it does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from inspect import iscoroutinefunction
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from ..access.http import Principal
from ..dicom.catalogue import Level
from ..errors import NotFound
from ..node import Node
from ..query.parse import query_from_qido
from ..remote import gateway
from .dicomweb import DicomJSONResponse, _accepts_json, _check_uids

__all__ = ["router"]

router = APIRouter(prefix="/dicomweb/remote/{node}", tags=["DICOMweb gateway"])

_RETRIEVE_URL = "00081190"


def _node(request: Request) -> Node:
    node: Node = request.app.state.node  # (Starlette's State holds Any)
    return node


def _base(request: Request, name: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/dicomweb/remote/{name}"


def _principal(request: Request) -> Principal | None:
    found = request.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


# -- QIDO-RS ----------------------------------------------------------------------

def _retrieve_url(base: str, level: Level, item: dict[str, Any]) -> str | None:
    def uid(tag: str) -> str | None:
        values = item.get(tag, {}).get("Value")
        return str(values[0]) if values else None
    parts = [("studies", uid("0020000D"))]
    if level >= Level.SERIES:
        parts.append(("series", uid("0020000E")))
    if level == Level.IMAGE:
        parts.append(("instances", uid("00080018")))
    if not all(value for _, value in parts):
        return None
    return base + "".join(f"/{what}/{value}" for what, value in parts)


def _search(request: Request, name: str, level: Level, study: str | None = None,
            series_uid: str | None = None) -> Response:
    node = _node(request)
    gateway.gateway_node(node, name)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid)
    _accepts_json(request)
    scope = {k: v for k, v in (("StudyInstanceUID", study),
                               ("SeriesInstanceUID", series_uid)) if v}
    query = query_from_qido(level, request.query_params.multi_items(), scope=scope or None,
                            max_limit=node.settings.qido_max_limit)
    matches = gateway.remote_search(node, name, query)
    if not matches:
        return Response(status_code=204)
    base = _base(request, name)
    for item in matches:
        url = _retrieve_url(base, level, item)
        if url:
            item[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return DicomJSONResponse(matches)


@router.get("/studies", summary="QIDO-RS on a remote node: studies")
def search_studies(request: Request, node: str) -> Response:
    return _search(request, node, Level.STUDY)


@router.get("/series", summary="QIDO-RS on a remote node: series")
def search_series(request: Request, node: str) -> Response:
    return _search(request, node, Level.SERIES)


@router.get("/instances", summary="QIDO-RS on a remote node: instances")
def search_instances(request: Request, node: str) -> Response:
    return _search(request, node, Level.IMAGE)


@router.get("/studies/{study}/series", summary="QIDO-RS on a remote node: a study's series")
def search_study_series(request: Request, node: str, study: str) -> Response:
    return _search(request, node, Level.SERIES, study)


@router.get("/studies/{study}/instances",
            summary="QIDO-RS on a remote node: a study's instances")
def search_study_instances(request: Request, node: str, study: str) -> Response:
    return _search(request, node, Level.IMAGE, study)


@router.get("/studies/{study}/series/{series_uid}/instances",
            summary="QIDO-RS on a remote node: a series' instances")
def search_series_instances(request: Request, node: str, study: str,
                            series_uid: str) -> Response:
    return _search(request, node, Level.IMAGE, study, series_uid)


# -- WADO-RS -----------------------------------------------------------------------

def _wanted(study: str, rest: str) -> gateway.Wanted:
    """The study, series and instance a WADO-RS path below the study names."""
    parts = [p for p in rest.split("/") if p]
    series_uid = parts[1] if len(parts) >= 2 and parts[0] == "series" else None
    sop = parts[3] if series_uid and len(parts) >= 4 and parts[2] == "instances" else None
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=sop)
    return gateway.Wanted(study, series_uid, sop)


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, through the routers the app includes."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            yield from _api_routes(inner.routes)
        elif isinstance(route, APIRoute):
            yield route


async def _local_answer(request: Request, path: str) -> Response:
    """What ``GET /dicomweb{path}`` answers: the handler of the matching
    ``/dicomweb`` route, called with this request (its query and headers)."""
    probe = {"type": "http", "path": "/dicomweb" + path, "method": "GET", "root_path": ""}
    for route in _api_routes(request.app.router.routes):
        if not route.path.startswith("/dicomweb/studies"):
            continue
        match, child = route.matches(probe)
        if match is Match.FULL:
            params = child["path_params"]
            # (a route's endpoint is typed Callable[..., Any]: each returns a Response)
            answer: Response
            if iscoroutinefunction(route.endpoint):
                answer = await route.endpoint(request, **params)
            else:
                answer = await run_in_threadpool(route.endpoint, request, **params)
            return answer
    raise NotFound(f"no DICOMweb resource /dicomweb{path[:200]}")


async def _retrieve(request: Request, name: str, study: str, rest: str = "") -> Response:
    node = _node(request)
    wanted = _wanted(study, rest)
    principal = _principal(request)
    authenticated = principal is not None and principal.kind != "none"
    who = principal.name if principal is not None and principal.name else (
        request.client.host if request.client else "")
    await gateway.ensure_local(node, name, wanted,
                               role=principal.role if principal is not None else None,
                               authenticated=authenticated,
                               requested_by=f"gateway:{who}" if who else "gateway")
    return await _local_answer(request, f"/studies/{study}" + (f"/{rest}" if rest else ""))


#: The WADO-RS resources below ``/studies/{study}`` (those of ``/dicomweb``),
#: each answered by ``_retrieve``.
_S, _SE, _I = "", "/series/{series}", "/series/{series}/instances/{instance}"
WADO_RESOURCES: tuple[tuple[str, str], ...] = (
    (_S, "a study"), (_SE, "a series"), (_I, "an instance"),
    (_S + "/metadata", "study metadata"), (_SE + "/metadata", "series metadata"),
    (_I + "/metadata", "instance metadata"),
    (_I + "/frames/{frames}", "frames"), (_I + "/bulkdata/{tag}", "bulk data"),
    (_S + "/rendered", "a rendered study"), (_SE + "/rendered", "a rendered series"),
    (_I + "/rendered", "a rendered instance"),
    (_I + "/frames/{frames}/rendered", "rendered frames"),
    (_S + "/thumbnail", "a study thumbnail"), (_SE + "/thumbnail", "a series thumbnail"),
    (_I + "/thumbnail", "an instance thumbnail"),
    (_I + "/frames/{frames}/thumbnail", "a frame thumbnail"),
)


async def retrieve(request: Request, node: str, study: str) -> Response:
    """WADO-RS through the gateway: from the archive, pulled first if needed."""
    prefix = f"/dicomweb/remote/{node}/studies/{study}"
    path = request.scope["path"]
    rest = path[len(prefix):].strip("/") if path.startswith(prefix) else ""
    return await _retrieve(request, node, study, rest)


for _suffix, _what in WADO_RESOURCES:
    router.add_api_route("/studies/{study}" + _suffix, retrieve, methods=["GET"],
                         summary=f"WADO-RS through a remote node: {_what}",
                         name=f"gateway_{_what.replace(' ', '_')}")

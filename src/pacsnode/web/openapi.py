"""The OpenAPI document as the node really answers, and the ``Allow``
header of a 405.

FastAPI describes a 422 for every route with parameters; this node never
answers 422 (a bad parameter or body is a 400 with ``{"error": reason}``).
So the document drops the 422, declares the 400 and 404 that routes with
parameters do answer (and keeps the statuses a route declares itself, such
as 403, 406, 409, 501), and gives UID path parameters their pattern
(PS3.5 9.1: digits and dots, at most 64 characters).

Starlette's 405 names the methods of the first route whose path matched;
``allowed_methods`` names those of every route on that path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Match

__all__ = ["install_openapi", "allowed_methods", "UID_PATTERN"]

#: A UID as the node checks it (dicom/header.py UID_RE), at most 64 characters.
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
#: Path parameters that are UIDs.
_UID_PARAMETERS = {"study", "series", "series_uid", "sop", "instance", "study_uid",
                   "uid", "workitem"}
_ERROR = {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"],
    "title": "Error"}}}
_DESCRIPTIONS = {"400": "A malformed parameter, identifier or body (the reason says which)",
                 "404": "No such study, series, instance, or other named thing",
                 "204": "No match",
                 "406": "None of the accepted media types (Accept header or accept "
                        "parameter) or transfer syntaxes can be given",
                 "501": "Not implemented by this node (the reason says what)",
                 "202": "Some instances stored, some failed (FailedSOPSequence says why)",
                 "409": "No instance stored (FailedSOPSequence says why)",
                 "413": "The body is larger than max_stow_bytes",
                 "415": "Not multipart/related; type=\"application/dicom\""}
#: Statuses answered beyond 400/404, by (method, path test).
_EXTRA: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
    # QIDO-RS: no match is 204; every search may be a bad query.
    ("get", lambda p: p.endswith(("/studies", "/series", "/instances")), ("204", "400")),
    # Every DICOMweb read negotiates its media type.
    ("get", lambda p: p.startswith("/dicomweb/studies") or p in ("/dicomweb/series",
                                                                 "/dicomweb/instances"),
     ("406",)),
    # STOW-RS outcomes (PS3.18 10.5.3).
    ("post", lambda p: p in ("/dicomweb/studies", "/dicomweb/studies/{study}"),
     ("202", "400", "409", "413", "415")),
    ("post", lambda p: "/subscribers/" in p, ("501",)),
    ("delete", lambda p: "/subscribers/" in p, ("501",)),
)


def _tidy(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    for on, applies, codes in _EXTRA:
        if on == method and applies(path):
            for code in codes:
                content = {} if code in ("202", "204", "409") else {"content": _ERROR}
                responses.setdefault(code, {"description": _DESCRIPTIONS[code], **content})
    responses.pop("422", None)
    parameters = operation.get("parameters", [])
    path_parameters = [p for p in parameters if p.get("in") == "path"]
    for parameter in path_parameters:
        if parameter["name"] in _UID_PARAMETERS:
            schema = parameter.setdefault("schema", {})
            schema.update(pattern=UID_PATTERN, maxLength=64, minLength=1)
    if parameters or "requestBody" in operation:
        responses.setdefault("400", {"description": _DESCRIPTIONS["400"], "content": _ERROR})
    if path_parameters:
        responses.setdefault("404", {"description": _DESCRIPTIONS["404"], "content": _ERROR})


def _document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description=app.description)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                _tidy(path, method, operation)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the tidied document at the app's ``openapi_url``."""
    # (FastAPI's documented way to replace the document is to assign the method)
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: Any, scope: Mapping[str, Any]) -> list[str]:
    """Every method some route of ``app`` fully matches on the request's
    path (asked of the routes themselves, so that routers included in
    routers answer too), in a stable order."""
    routes = app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL
                   for route in routes)]

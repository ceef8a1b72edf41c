"""WADO-URI (PS3.18 9): one instance by ``studyUID``, ``seriesUID`` and
``objectUID`` in the query string, at ``/wado`` and at the DICOMweb base
``/dicomweb`` (where OHIF's ``wadouri`` setting and older viewers send it).

An adapter only: the instance is located and, as ``application/dicom``,
sent through ``pacsnode.retrieve`` (the one reader, which picks the
transfer syntax and transcodes); as ``image/jpeg`` or ``image/png`` it is
rendered by the same code as WADO-RS ``…/rendered`` (``web/render.py``).
Which parameters are taken and what each choice means is written down in
docs/CONFORMANCE.md (WADO-URI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydicom.uid import ExplicitVRLittleEndian

from ..dicom.header import valid_uid
from ..errors import BadQuery, NotFound
from ..node import Node
from ..retrieve import (AS_STORED, InstanceRef, PixelFacts, choose_syntax, locate, outgoing,
                        pixel_facts)
from ..transcode import PixelInfo, TranscodeError, pixel_info
from .dicomweb import WebError, parse_accept, render_bytes
from .render import RenderOptions

__all__ = ["router", "WadoRequest", "parse_wado"]

router = APIRouter(tags=["WADO-URI"])

DICOM = "application/dicom"
#: What ``contentType`` may name, and what it falls back to for ``*/*``.
CONTENT_TYPES = (DICOM, "image/jpeg", "image/png")
#: Parameters that only make sense for a rendered image (PS3.18 9.1.2).
_RENDER_ONLY = ("rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber",
                "imageQuality", "annotation")
#: Parameters PS3.18 9 defines that this node does not implement: refused
#: rather than ignored, since ignoring them would answer something else
#: than what was asked (an identified instance for ``anonymize=yes``).
_UNSUPPORTED = {"anonymize": "anonymize is not supported (use pacsnode anonymize)",
                "presentationUID": "presentation states are not applied",
                "presentationSeriesUID": "presentation states are not applied"}


@dataclass(frozen=True)
class WadoRequest:
    """A WADO-URI request's parameters, checked."""

    study: str
    series: str
    sop: str
    #: None: not given (the default depends on the object, see ``content_type``).
    content_types: tuple[str, ...] | None
    transfer_syntax: str | None
    frame: int | None
    rows: int | None
    columns: int | None
    region: tuple[float, float, float, float] | None
    window: tuple[float, float] | None
    quality: int | None


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadQuery(f"{name} is given {len(values)} times; give it once")
    return values[0]


def _uid(params: dict[str, list[str]], name: str) -> str:
    value = _one(params, name)
    if not value:
        raise BadQuery(f"{name} is required (WADO-URI names an instance by studyUID, "
                       "seriesUID and objectUID)")
    if not valid_uid(value):
        raise BadQuery(f"{name} {value[:80]!r} is not a valid UID "
                       "(1-64 characters of digits and dots)")
    return value


def _positive(params: dict[str, list[str]], name: str, most: int) -> int | None:
    value = _one(params, name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 9) or not 1 <= int(value) <= most:
        raise BadQuery(f"{name} must be an integer from 1 to {most}, not {value[:40]!r}")
    return int(value)


def _number(params: dict[str, list[str]], name: str) -> float | None:
    value = _one(params, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (value.isascii() and math.isfinite(number)):
        raise BadQuery(f"{name} must be a decimal number, not {value[:40]!r}")
    return number


def _region(params: dict[str, list[str]]) -> tuple[float, float, float, float] | None:
    value = _one(params, "region")
    if value is None:
        return None
    parts = value.split(",")
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        raise BadQuery("region is four decimals x1,y1,x2,y2 from 0.0 to 1.0 (fractions of "
                       f"the image), not {value[:80]!r}") from None
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) or x1 >= x2 or y1 >= y2:
        raise BadQuery("region must be x1,y1,x2,y2 within 0.0-1.0 with x1 < x2 and y1 < y2, "
                       f"not {value[:80]!r}")
    return x1, y1, x2, y2


def _content_types(params: dict[str, list[str]]) -> tuple[str, ...] | None:
    value = _one(params, "contentType")
    if value is None or not value.strip():
        return None
    wanted: list[str] = []
    for mr in parse_accept(value):
        if mr.type in CONTENT_TYPES:
            wanted.append(mr.type)
        elif mr.type in ("*/*", "image/*"):
            wanted.append("*")
    if not wanted:
        raise WebError(406, f"contentType {value[:80]!r} cannot be given; this node answers "
                            "WADO-URI in application/dicom, image/jpeg or image/png")
    return tuple(wanted)


def parse_wado(params: dict[str, list[str]]) -> WadoRequest:
    """The request's query parameters, checked (a 400 in plain words for a
    bad or missing one)."""
    request_type = _one(params, "requestType")
    if request_type != "WADO":
        raise BadQuery("requestType=WADO is required (PS3.18 9), not "
                       + (repr(request_type[:40]) if request_type is not None else "nothing"))
    for name, why in _UNSUPPORTED.items():
        value = _one(params, name)
        if value and not (name == "anonymize" and value.lower() == "no"):
            raise BadQuery(why)
    annotation = _one(params, "annotation")
    if annotation and not set(annotation.split(",")) <= {"patient", "technique"}:
        raise BadQuery(f"annotation is patient and/or technique, not {annotation[:40]!r}")
    ts = _one(params, "transferSyntax")
    if ts is not None and ts != AS_STORED and not valid_uid(ts):
        raise BadQuery(f"transferSyntax {ts[:80]!r} is not a UID")
    center, width = _number(params, "windowCenter"), _number(params, "windowWidth")
    if (center is None) != (width is None):
        raise BadQuery("windowCenter and windowWidth go together: give both or neither")
    if width is not None and width < 1:
        raise BadQuery(f"windowWidth must be at least 1, not {width:g}")
    return WadoRequest(
        study=_uid(params, "studyUID"), series=_uid(params, "seriesUID"),
        sop=_uid(params, "objectUID"), content_types=_content_types(params),
        transfer_syntax=ts, frame=_positive(params, "frameNumber", 10**9),
        rows=_positive(params, "rows", 8192), columns=_positive(params, "columns", 8192),
        region=_region(params),
        window=(center, width) if center is not None and width is not None else None,
        quality=_positive(params, "imageQuality", 100))


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _content_type(wado: WadoRequest, has_pixels: bool) -> str:
    """The media type answered: the first asked for that the object can
    be given in; by default (or ``*/*``) a JPEG of an image, the DICOM
    file of anything else (PS3.18 9: rendered types need pixel data)."""
    default = "image/jpeg" if has_pixels else DICOM
    for media in wado.content_types or ("*",):
        if media == "*":
            return default
        if media == DICOM or has_pixels:
            return media
    raise WebError(406, f"instance {wado.sop} has no pixel data: it can only be given as "
                        "application/dicom")


def _locate(node: Node, wado: WadoRequest) -> InstanceRef:
    refs = locate(node, wado.study, wado.series, wado.sop)
    if not refs:
        raise NotFound(f"instance {wado.sop} of series {wado.series} in study {wado.study} "
                       "is not stored")
    return refs[0]


def _dicom(ref: InstanceRef, wado: WadoRequest, facts: PixelFacts | None) -> Response:
    """The Part 10 file, through the one reader: in ``transferSyntax``
    when given (``*``: as stored), else Explicit VR Little Endian (PS3.18
    9) — or as stored when that cannot be produced from it."""
    if wado.transfer_syntax is not None:
        accepted = [wado.transfer_syntax]
        if choose_syntax(ref, accepted, facts) is None:
            raise WebError(406, f"instance {ref.sop_instance_uid} cannot be given in transfer "
                                f"syntax {wado.transfer_syntax}; it is stored in "
                                f"{ref.transfer_syntax}")
    else:
        accepted = [ExplicitVRLittleEndian]
        if choose_syntax(ref, accepted, facts) is None:
            accepted = [AS_STORED]
    try:
        out = outgoing(ref, accepted, facts)
    except FileNotFoundError:
        raise NotFound(f"instance {ref.sop_instance_uid} is no longer stored") from None
    except TranscodeError as exc:
        raise WebError(406, exc.reason) from None
    headers = {"Content-Disposition": f'inline; filename="{ref.sop_instance_uid}.dcm"'}
    if out.data is None:
        return FileResponse(ref.path, media_type=DICOM, headers=headers)
    return Response(out.data, media_type=DICOM, headers=headers)


def _viewport(wado: WadoRequest, info: PixelInfo
              ) -> tuple[int, int, tuple[int, int, int, int] | None] | None:
    """``rows``/``columns`` (the largest the image may be; one alone keeps
    the aspect ratio) and ``region`` (a fraction of the image) as the
    viewport of ``render_frame``."""
    crop = None
    width, height = info.columns, info.rows
    if wado.region is not None:
        x1, y1, x2, y2 = wado.region
        sx, sy = int(x1 * info.columns), int(y1 * info.rows)
        sw = max(1, round((x2 - x1) * info.columns))
        sh = max(1, round((y2 - y1) * info.rows))
        crop, width, height = (sx, sy, sw, sh), sw, sh
    if wado.rows is None and wado.columns is None:
        return (width, height, crop) if crop else None
    if wado.rows is None:
        assert wado.columns is not None
        return wado.columns, max(1, round(height * wado.columns / width)), crop
    if wado.columns is None:
        return max(1, round(width * wado.rows / height)), wado.rows, crop
    return wado.columns, wado.rows, crop


def _rendered(ref: InstanceRef, wado: WadoRequest, media: str) -> Response:
    try:
        info = pixel_info(ref.path)
    except FileNotFoundError:
        raise NotFound(f"instance {ref.sop_instance_uid} is no longer stored") from None
    if info is None:
        raise WebError(406, f"instance {ref.sop_instance_uid} has no pixel data: it can only "
                            "be given as application/dicom")
    frame = wado.frame or 1
    if frame > info.frames:
        raise BadQuery(f"frameNumber {frame} does not exist: the instance has "
                       f"{info.frames} frame(s)")
    window = (wado.window[0], wado.window[1], "linear") if wado.window else None
    options = RenderOptions(media_type=media, window=window, viewport=_viewport(wado, info),
                            quality=wado.quality or 90)
    return Response(render_bytes(ref, frame, options, False), media_type=media)


def _answer(request: Request) -> Response:
    wado = parse_wado(_params(request))
    node: Node = request.app.state.node
    ref = _locate(node, wado)
    facts = pixel_facts(node, [ref]).get(ref.sop_instance_uid)
    media = _content_type(wado, facts is not None and facts.has_pixels)
    if media == DICOM:
        used = [name for name in _RENDER_ONLY if name in request.query_params]
        if used:
            raise BadQuery(f"{', '.join(used)} only apply to a rendered image (contentType "
                           "image/jpeg or image/png), not to application/dicom")
        return _dicom(ref, wado, facts)
    if wado.transfer_syntax is not None:
        raise BadQuery("transferSyntax only applies to contentType=application/dicom")
    if wado.quality is not None and media != "image/jpeg":
        raise BadQuery("imageQuality only applies to image/jpeg")
    return _rendered(ref, wado, media)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM: {}, "image/jpeg": {}, "image/png": {}},
          "description": "the instance, as a DICOM file or rendered"},
    400: {"description": "a missing or malformed parameter"},
    404: {"description": "no such instance"},
    406: {"description": "it cannot be given in the contentType or transferSyntax asked for"}}


@router.get("/wado", summary="WADO-URI: one instance (PS3.18 9)", responses=_RESPONSES)
def wado(request: Request) -> Response:
    return _answer(request)


@router.get("/dicomweb", summary="WADO-URI at the DICOMweb base (requestType=WADO)",
            responses=_RESPONSES)
def wado_at_dicomweb(request: Request) -> Response:
    return _answer(request)

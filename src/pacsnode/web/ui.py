"""The built-in web UI (DESIGN §9): static files shipped in the package
under ``web/static/``, served at ``/ui/``; ``GET /`` redirects there.

The UI is a single page: every path under ``/ui/`` that is not a file
(``/ui/study/1.2.3``, ``/ui/inspect``, ``/ui/callback`` where the OIDC
provider sends the user back) answers ``index.html`` and the page's router
picks the view.  Its data comes only through the node's own APIs
(QIDO-RS, WADO-RS, STOW-RS, ``/api/v1``), under their access rules; the
files themselves are public (access/policy.py)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
# (pydicom imports it into pydicom.datadict without declaring it exported)
from pydicom.datadict import DicomDictionary  # type: ignore[attr-defined]

from .. import __version__
from .oidc_login import login_config

__all__ = ["router", "STATIC_DIR", "static_file", "dictionary"]

router = APIRouter(include_in_schema=False)

#: The UI's own files (``ui/``) and the libraries it loads (``vendor/``).
STATIC_DIR = Path(__file__).resolve().parent / "static"

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".map": "application/json",
          ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}
# A new package version must reach the browser: revalidate every time (the
# files are small and answered 304 through their ETag).
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def static_file(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is a regular file inside ``root``; None for
    anything else (a folder, a missing file, a path escaping ``root``)."""
    if "\x00" in relative or ".." in Path(relative).parts:
        return None
    candidate = (root / relative.lstrip("/")).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def _send(path: Path) -> Response:
    media = _TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers=_HEADERS)


@router.get("/")
def root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_bare() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@lru_cache(maxsize=1)
def dictionary() -> bytes:
    """pydicom's data dictionary as JSON, ``{"GGGGEEEE": [VR, keyword,
    name]}``: the tag names the file inspector shows (it parses in the
    browser, where no dictionary ships with dicom-parser)."""
    entries = {f"{tag:08X}": [vr, keyword, name]
               for tag, (vr, _vm, name, _retired, keyword) in DicomDictionary.items()}
    return orjson.dumps(entries)


@router.get("/ui/dictionary.json")
def ui_dictionary() -> Response:
    return Response(dictionary(), media_type="application/json",
                    headers={"Cache-Control": "max-age=86400"})


@router.get("/ui/config.json")
def ui_config(request: Request) -> Response:
    """What the page needs before it signs in: the version, whether OHIF is
    served, whether a credential is asked for, and where to sign in with
    OIDC (``oidc``: null, or the client id, scopes and the provider's
    endpoints, web/oidc_login.py)."""
    settings = request.app.state.node.settings
    return Response(orjson.dumps({"version": __version__, "ohif": bool(settings.ohif_dir),
                                  "auth": settings.auth, "oidc": login_config(settings)}),
                    media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/ui/{asset:path}")
def ui_asset(asset: str) -> Response:
    """A file of the UI, or ``index.html`` for a view's path (the page
    routes).  A missing file under ``vendor/`` or with a file type the UI
    uses is a 404, so a broken link shows as one instead of as the page."""
    found = static_file(STATIC_DIR, asset if asset.startswith("vendor/") else "ui/" + asset)
    if found is not None:
        return _send(found)
    if asset.startswith("vendor/") or Path(asset).suffix in _TYPES or ".." in Path(asset).parts:
        return Response(b'{"error":"No such file in the UI."}', status_code=404,
                        media_type="application/json")
    return _send(STATIC_DIR / "ui" / "index.html")

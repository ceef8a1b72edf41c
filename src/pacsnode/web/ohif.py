"""OHIF v3 served by the node (DESIGN §9): with ``ohif_dir`` set to the
``dist/`` of the npm package ``@ohif/app``, the app answers at ``/ohif/``.

OHIF's prebuilt files assume they sit at the root of a site: ``index.html``
names its scripts and icons as ``/…``, sets ``window.PUBLIC_URL = '/'``, and
each webpack runtime (the app bundle and its workers) loads its chunks from
``__webpack_require__.p = "/"``; its stylesheet names its font as
``url(/…)`` and ``manifest.json`` its icons as ``/assets/…``.  Those few
strings are rewritten to ``/ohif/`` as the files are sent (the rewritten
text is kept in memory, keyed by the file's size and modification time).

``app-config.js`` is generated here at each request: the DICOMweb data source ``pacsnode`` (this
node's ``/dicomweb``, the default), one data source ``remote-{name}`` per
registered node (the gateway's ``/dicomweb/remote/{name}``, DESIGN §11:
OHIF opens it with ``/ohif/?datasources=remote-{name}`` or
``/ohif/viewer/remote-{name}?StudyInstanceUIDs=…``), and with
``auth = "on"`` the token the built-in UI keeps in the tab's
``sessionStorage`` sent as ``Authorization: Bearer`` to each of them (an
OIDC access token the UI got is renewed with its refresh token while OHIF
runs).  Any
other path that is not a file (``/ohif/viewer?StudyInstanceUIDs=…``) answers
``index.html``, the single-page app's fallback."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from ..node import Node
from .ui import static_file

__all__ = ["router", "BASE", "TOKEN_KEY", "LOCAL_SOURCE", "REMOTE_PREFIX", "app_config",
           "remote_source_name", "rewrite_index", "rewrite_bundle",
           "rewrite_stylesheet", "rewrite_manifest"]

router = APIRouter(include_in_schema=False)

#: Where OHIF is served.
BASE = "/ohif/"
#: The ``sessionStorage`` key under which the built-in UI keeps the token.
TOKEN_KEY = "pacsnode.token"
#: OHIF's data source for this node's archive (the default one).
LOCAL_SOURCE = "pacsnode"
#: OHIF's data source for a registered node is this prefix and its name.
REMOTE_PREFIX = "remote-"

_NOT_CONFIGURED = ("OHIF is not installed on this node: set ohif_dir to the dist/ folder of "
                   "the npm package @ohif/app (see docs/VIEWERS.md).")
_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_ASSET_SUFFIXES = {".js", ".css", ".wasm", ".png", ".svg", ".ico", ".json", ".woff2", ".map",
                   ".html", ".xml", ".webapp"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".wasm": "application/wasm", ".json": "application/json",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".woff2": "font/woff2", ".png": "image/png", ".ico": "image/x-icon"}

_cache: dict[Path, tuple[tuple[int, int], bytes | None]] = {}
_cache_lock = threading.Lock()


def rewrite_index(html: str, base: str = BASE) -> str:
    """OHIF's ``index.html`` moved from ``/`` to ``base``."""
    return (html.replace('href="/', f'href="{base}')
                .replace('src="/', f'src="{base}')
                .replace("window.PUBLIC_URL = '/'", f"window.PUBLIC_URL = '{base}'"))


def rewrite_bundle(script: bytes, base: str = BASE) -> bytes:
    """A webpack runtime's public path moved from ``/`` to ``base``."""
    return script.replace(_PUBLIC_PATH, f'__webpack_require__.p = "{base}";'.encode())


def rewrite_manifest(manifest: bytes, base: str = BASE) -> bytes:
    """The web app manifest's root-relative values (icons, start_url)
    moved to ``base``."""
    return re.sub(rb'(":\s*")/(?!/)', rb"\1" + base.encode(), manifest)


def rewrite_stylesheet(css: bytes, base: str = BASE) -> bytes:
    """A stylesheet's root-relative ``url(/…)`` (OHIF's fonts) moved to ``base``."""
    return css.replace(b"url(/", b"url(" + base.encode())


def _source(name: str, friendly: str, root: str) -> dict[str, Any]:
    """One OHIF DICOMweb data source named ``name`` for the DICOMweb root ``root``."""
    configuration = {
        "friendlyName": friendly, "name": name,
        "wadoUriRoot": root, "qidoRoot": root, "wadoRoot": root,
        "qidoSupportsIncludeField": True, "supportsReject": False,
        "imageRendering": "wadors", "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
        "supportsWildcard": True, "staticWado": False, "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    return {"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": name, "configuration": configuration}


def remote_source_name(node_name: str) -> str:
    """The OHIF data source of the registered node ``node_name``."""
    return REMOTE_PREFIX + node_name


def app_config(dicomweb: str, auth: bool, remotes: Iterable[str] = ()) -> str:
    """OHIF's ``window.config`` for this node's DICOMweb root ``dicomweb``:
    the data source ``pacsnode`` (the default), and one ``remote-{name}``
    per registered node in ``remotes``, its root the gateway's
    ``{dicomweb}/remote/{name}``."""
    sources = [_source(LOCAL_SOURCE, "pacsnode", dicomweb)]
    sources += [_source(remote_source_name(name), f"{name} (through pacsnode)",
                        f"{dicomweb}/remote/{name}") for name in sorted(remotes)]
    config = {
        "routerBasename": BASE.rstrip("/"), "showStudyList": True,
        "extensions": [], "modes": [], "customizationService": {},
        "maxNumberOfWebWorkers": 3, "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True, "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": LOCAL_SOURCE,
        "dataSources": sources,
    }
    text = json.dumps(config, indent=2)
    if not auth:
        return f"{_HEADER}\nwindow.config = {text};\n"
    # The key first: the config's text (node names) is never searched.
    return (_WITH_TOKEN.replace("@TOKEN_KEY@", json.dumps(TOKEN_KEY))
            .replace("@CONFIG@", text))


# OHIF 3.x sends, to every data source, the Authorization header of its
# userAuthenticationService (a data source's requestOptions are not used).
# A window.config that is a function is called with the services manager
# before the services are made: the service gets, as it is made, an
# implementation that reads the token at each request (a new one typed into
# the built-in UI is used without reloading OHIF).  The function also carries
# the config's keys, for the places that read window.config directly.
_HEADER = "/* Generated by pacsnode for this node (web/ohif.py). */"
_WITH_TOKEN = _HEADER + """
(() => {
  const config = @CONFIG@;
  const header = () => ({
    Authorization: 'Bearer ' + (sessionStorage.getItem(@TOKEN_KEY@) || ''),
  });
  const withToken = ({ servicesManager }) => {
    let made;
    Object.defineProperty(servicesManager.services, 'userAuthenticationService', {
      configurable: true, enumerable: true,
      get: () => made,
      set: (service) => {
        made = service;
        service.setServiceImplementation({ getAuthorizationHeader: header });
      },
    });
    return config;
  };
  window.config = Object.assign(withToken, config);
  // A sign-in at the OIDC provider made in the built-in UI in this tab is
  // renewed here too before its access token expires (web/static/ui/oidc.js).
  import('/ui/oidc.js').then((oidc) => oidc.keepRenewing(), () => {});
})();
"""


def _root(request: Request) -> Path | None:
    node: Node = request.app.state.node
    folder = node.settings.ohif_dir
    if not folder:
        return None
    return Path(folder).resolve()


def _rewritten(path: Path) -> bytes | None:
    """The file moved to ``BASE``, or None when it needs no change."""
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    raw = path.read_bytes()
    if path.suffix == ".html":
        body = rewrite_index(raw.decode("utf-8")).encode("utf-8")
    elif path.name == "manifest.json":
        body = rewrite_manifest(raw)
    elif path.suffix == ".css":
        body = rewrite_stylesheet(raw)
    else:
        body = rewrite_bundle(raw)
    result = None if body == raw else body
    with _cache_lock:
        _cache[path] = (key, result)
    return result


def _send(path: Path) -> Response:
    media = _TYPES.get(path.suffix, "application/octet-stream")
    headers = {"Cache-Control": "no-cache"}
    # Only these name the root path: index.html, the manifest, webpack's
    # bundles and the stylesheets.
    if path.name in ("index.html", "manifest.json") or path.suffix == ".css" or (
            path.suffix == ".js" and ".bundle." in path.name):
        body = _rewritten(path)
        if body is not None:
            return Response(body, media_type=media, headers=headers)
    return FileResponse(path, media_type=media, headers=headers)


@router.get("/ohif")
def ohif_bare() -> Response:
    return RedirectResponse(BASE, status_code=307)


@router.get("/ohif/app-config.js")
def ohif_config(request: Request) -> Response:
    if _root(request) is None:
        return JSONResponse({"error": _NOT_CONFIGURED}, status_code=404)
    node: Node = request.app.state.node
    dicomweb = str(request.base_url).rstrip("/") + "/dicomweb"
    return Response(app_config(dicomweb, node.settings.auth == "on", node.remote_nodes()),
                    media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


@router.get("/ohif/{asset:path}")
def ohif_asset(asset: str, request: Request) -> Response:
    root = _root(request)
    if root is None:
        return JSONResponse({"error": _NOT_CONFIGURED}, status_code=404)
    found = static_file(root, asset) if asset else None
    if found is not None:
        return _send(found)
    if Path(asset).suffix in _ASSET_SUFFIXES or ".." in Path(asset).parts:
        return JSONResponse({"error": "No such file in OHIF's folder."}, status_code=404)
    index = root / "index.html"
    if not index.is_file():
        return JSONResponse({"error": f"ohif_dir has no index.html: {_NOT_CONFIGURED}"},
                            status_code=404)
    return _send(index)

"""Interactive docs of the REST API at ``/api/v1/docs``: Swagger UI, every
asset served by the node (the built files of the npm package
``swagger-ui-dist``, vendored with its license under ``web/static/swagger-ui``),
so the page works offline and asks no other host for anything (its
validator badge, which would, is turned off)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..errors import NotFound

__all__ = ["router", "SWAGGER_DIR"]

router = APIRouter(tags=["node"])

SWAGGER_DIR = Path(__file__).parent / "static" / "swagger-ui"
_BASE = "/api/v1/docs"
#: The files served, and their media types: nothing else under the folder.
_ASSETS = {"swagger-ui-bundle.js": "text/javascript",
           "swagger-ui.css": "text/css",
           "favicon-32x32.png": "image/png",
           "LICENSE": "text/plain",
           "NOTICE": "text/plain",
           "swagger-ui-bundle.js.LICENSE.txt": "text/plain"}


@router.get(_BASE, include_in_schema=False)
def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/api/v1/openapi.json", title="pacsnode API",
        swagger_js_url=f"{_BASE}/swagger-ui-bundle.js",
        swagger_css_url=f"{_BASE}/swagger-ui.css",
        swagger_favicon_url=f"{_BASE}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None})


@router.get(_BASE + "/{asset:path}", include_in_schema=False)
def docs_asset(asset: str) -> Response:
    media = _ASSETS.get(asset)
    if media is None:
        raise NotFound(f"{_BASE}/{asset[:80]} is not an asset of the API docs")
    # Versioned with the package: a browser may keep them a day.
    return FileResponse(SWAGGER_DIR / asset, media_type=media,
                        headers={"Cache-Control": "public, max-age=86400"})

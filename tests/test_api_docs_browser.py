"""/api/v1/docs in a real browser (Debian's Chromium through Playwright):
Swagger UI, served whole by the node, renders every operation of the
node's OpenAPI document, and the page asks no other host for anything.
The screenshot goes to the module's tmp folder (``docs-shots``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from browser import browser, open_page, script_errors, shot  # noqa: F401
from conftest import PacsnodeServer

pytestmark = pytest.mark.timeout(120)

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsnodeServer]:
    work = tmp_path_factory.mktemp("docs-browser")
    (work / "data").mkdir()
    node = PacsnodeServer(work / "data", extra_env={"PACSNODE_FSYNC": "false"}).start()
    try:
        yield node
    finally:
        node.stop()


def _operations(server: PacsnodeServer) -> set[tuple[str, str]]:
    spec = httpx.get(server.base_url + "/api/v1/openapi.json", timeout=30).json()
    return {(method.upper(), path) for path, item in spec["paths"].items()
            for method in item if method in _METHODS}


def test_docs_render_every_operation_from_loopback_only(browser: Any,  # noqa: F811
                                                        server: PacsnodeServer,
                                                        tmp_path: Path) -> None:
    expected = _operations(server)
    assert len(expected) > 20  # the node's REST API, DICOMweb and the rest
    with open_page(browser) as page:
        rec = page.recorder
        page.goto(server.base_url + "/api/v1/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {len(expected)}")
        assert page.title() == "pacsnode API"
        assert page.inner_text(".swagger-ui .info .title").startswith("pacsnode")
        shown = set()
        for block in page.locator(".opblock").all():
            method = block.locator(".opblock-summary-method").inner_text().strip()
            path = block.locator(".opblock-summary-path").get_attribute("data-path")
            shown.add((method, path))
        assert shown == expected
        # One operation opened: its parameters come from the spec.
        page.locator(".opblock-summary-path[data-path='/api/v1/studies/{study_uid}/summary']"
                     ).first.click()
        page.wait_for_selector(".opblock.is-open .parameters")
        assert "study_uid" in page.inner_text(".opblock.is-open .parameters")
        shot(page, tmp_path, "api-docs")
        assert not rec.failures, rec.failures
        assert not script_errors(rec), rec.console_errors
        hosts = {urlsplit(url).hostname for _m, url, _b in rec.requests
                 if not url.startswith(("data:", "blob:"))}
        assert hosts == {"127.0.0.1"}, hosts
        assert any(url.endswith("/api/v1/docs/swagger-ui-bundle.js")
                   for _m, url, _b in rec.requests)
        assert any(url.endswith("/api/v1/openapi.json") for _m, url, _b in rec.requests)

"""/api/v1/docs: Swagger UI served whole by the node (vendored
swagger-ui-dist with its license), so the page loads offline and refers to
no other host."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx

from web_server import WebServer, web  # noqa: F401

_REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


def _references(text: str) -> list[str]:
    return [a or b for a, b in _REFERENCES.findall(text)]


def test_docs_page_and_assets_come_from_the_node(web: WebServer) -> None:
    page_url = f"{web.base_url}/api/v1/docs"
    page = httpx.get(page_url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = _references(page.text)
    assert any(r.endswith("swagger-ui-bundle.js") for r in refs)
    assert any(r.endswith("swagger-ui.css") for r in refs)
    node_host = urlsplit(web.base_url).netloc
    # Swagger UI's online validator would be asked about the spec: turned off.
    assert '"validatorUrl": null' in page.text
    assert "/api/v1/openapi.json" in page.text
    for ref in refs:
        url = urljoin(page_url, ref)
        assert urlsplit(url).netloc == node_host, f"the docs page refers to {ref}"
        asset = httpx.get(url, timeout=30)
        assert asset.status_code == 200, url
        if url.endswith(".css"):
            for inner in _references(asset.text):
                assert inner.startswith("data:") or \
                    urlsplit(urljoin(url, inner)).netloc == node_host, inner
    spec = httpx.get(f"{web.base_url}/api/v1/openapi.json", timeout=30)
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "pacsnode"


def test_the_license_is_served_and_nothing_else(web: WebServer) -> None:
    base = f"{web.base_url}/api/v1/docs/"
    license_text = httpx.get(base + "LICENSE", timeout=30)
    assert license_text.status_code == 200 and "Apache License" in license_text.text
    for name in ("package.json", "README.md", "../dicomweb.py", "%2e%2e/app.py"):
        assert httpx.get(base + name, timeout=30).status_code == 404


def test_openapi_declares_what_the_node_answers(web: WebServer) -> None:
    spec = httpx.get(f"{web.base_url}/api/v1/openapi.json", timeout=30).json()
    operations = [(path, method, op) for path, item in spec["paths"].items()
                  for method, op in item.items()]
    assert len(operations) > 40
    for path, method, op in operations:
        assert "422" not in op["responses"], (path, method)
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in ("study", "series_uid", "sop"):
                assert parameter["schema"]["pattern"] == r"^[0-9]+(\.[0-9]+)*$"
                assert parameter["schema"]["maxLength"] == 64
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert {"400", "404"} <= set(op["responses"]), (path, method)
    assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})
    assert {"200", "204", "400", "406"} <= set(spec["paths"]["/dicomweb/studies"]["get"]
                                              ["responses"])
    assert {"200", "202", "409", "415"} <= set(spec["paths"]["/dicomweb/studies"]["post"]
                                              ["responses"])
    # What is declared is what comes: a malformed UID is a 400, never a 422.
    r = httpx.get(f"{web.base_url}/api/v1/series/not-a-uid/tags", timeout=30)
    assert r.status_code == 400
    r = httpx.get(f"{web.base_url}/dicomweb/studies/not-a-uid/metadata", timeout=30)
    assert r.status_code == 400


def test_405_allow_lists_every_method_of_the_path(web: WebServer) -> None:
    r = httpx.put(f"{web.base_url}/dicomweb/studies/1.2.3", timeout=30)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST, DELETE"
    r = httpx.delete(f"{web.base_url}/dicomweb/studies", timeout=30)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"

"""The UI's and OHIF's server side over HTTP (web/ui.py, web/ohif.py):
redirects, static files with their licences, the single-page fallbacks,
the data dictionary, and OHIF's rewritten base path and generated config.
The browser tests (test_ui_browser.py, test_ohif_browser.py) drive them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacsnode.access.tokens import create_token
from pacsnode.web.ui import STATIC_DIR
from web_server import WebServer

# The parts of OHIF's dist/index.html and app bundle that name the root path
# (as in @ohif/app 3.x), and a chunk that does not.
OHIF_INDEX = ("<!doctype html><html><head><script>window.PUBLIC_URL = '/';</script>"
              '<link rel="manifest" href="/manifest.json"/>'
              '<script rel="preload" as="script" src="/app-config.js"></script>'
              '<script defer="defer" src="/app.bundle.0123.js"></script>'
              '<link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>')
OHIF_BUNDLE = b'(() => {\n __webpack_require__.p = "/";\n})();\nconsole.log("app");\n'
OHIF_CHUNK = b'console.log("chunk");\n'
OHIF_CSS = b"@font-face{src:url(/31fb.woff2)}body{color:red}"


@pytest.fixture(scope="module")
def ohif_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("ohif-dist")
    (dist / "index.html").write_text(OHIF_INDEX)
    (dist / "app.bundle.0123.js").write_bytes(OHIF_BUNDLE)
    (dist / "85.bundle.4567.js").write_bytes(OHIF_CHUNK)
    (dist / "app-config.js").write_text("window.config = {dataSources: ['elsewhere']};")
    (dist / "a.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "app.bundle.css").write_bytes(OHIF_CSS)
    (dist / "manifest.json").write_text('{"start_url": "/", "icons": [{"src": "/assets/a.png"}],'
                                        ' "related": "//example.org/x"}')
    return dist


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, ohif_dir: Path) -> Iterator[WebServer]:
    server = WebServer(tmp_path_factory.mktemp("ui-routes"), ohif_dir=str(ohif_dir)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(web: WebServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.base_url, timeout=30) as c:
        yield c


def test_root_redirects_to_the_ui(client: httpx.Client) -> None:
    for path in ("/", "/ui"):
        r = client.get(path)
        assert r.status_code == 307 and r.headers["location"] == "/ui/", path
    page = client.get("/", follow_redirects=True)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in page.text


def test_views_answer_the_page_and_files_their_type(client: httpx.Client) -> None:
    index = (STATIC_DIR / "ui" / "index.html").read_bytes()
    for view in ("/ui/inspect", "/ui/study/1.2.3", "/ui/remote/"):
        r = client.get(view)
        assert r.status_code == 200 and r.content == index, view
    js = client.get("/ui/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.content == (STATIC_DIR / "ui" / "app.js").read_bytes()
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")


def test_missing_files_and_escapes_are_404(client: httpx.Client) -> None:
    for path in ("/ui/nothing.js", "/ui/vendor/nothing", "/ui/vendor/",
                 "/ui/..%2f..%2fapp.py", "/ui/vendor/..%2f..%2f..%2fui.py"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"], path
        assert b"import" not in r.content


def test_every_vendored_file_has_its_licence_and_a_line_in_third_party(
        client: httpx.Client) -> None:
    vendor = STATIC_DIR / "vendor"
    third_party = (Path(__file__).parents[1] / "THIRD-PARTY.md").read_text()
    scripts = sorted(p for p in vendor.iterdir() if p.suffix == ".js")
    assert len(scripts) == 3
    for script in scripts:
        licences = list(vendor.glob(script.name + ".LICENSE*"))
        assert licences, f"{script.name} has no licence next to it"
        assert f"web/static/vendor/{script.name}" in third_party, script.name
        r = client.get(f"/ui/vendor/{script.name}")
        assert r.status_code == 200 and r.content == script.read_bytes()


def test_the_page_loads_nothing_from_another_host() -> None:
    for path in (STATIC_DIR / "ui").iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, \
            path.name


def test_dictionary_names_tags(client: httpx.Client) -> None:
    r = client.get("/ui/dictionary.json")
    assert r.status_code == 200
    d = r.json()
    assert d["00100010"] == ["PN", "PatientName", "Patient's Name"]
    assert d["7FE00010"][1] == "PixelData"
    assert len(d) > 4000


def test_config_says_what_the_page_offers(client: httpx.Client) -> None:
    from pacsnode import __version__
    assert client.get("/ui/config.json").json() == {"version": __version__, "ohif": True,
                                                    "auth": "off", "oidc": None}


def test_ohif_index_is_moved_under_ohif(client: httpx.Client) -> None:
    assert client.get("/ohif").headers["location"] == "/ohif/"
    r = client.get("/ohif/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "window.PUBLIC_URL = '/ohif/'" in r.text
    assert 'src="/ohif/app.bundle.0123.js"' in r.text
    assert 'href="/ohif/manifest.json"' in r.text and 'src="/ohif/app-config.js"' in r.text
    assert 'src="/app' not in r.text and 'href="/m' not in r.text
    # The single-page app's own routes answer the same page.
    for path in ("/ohif/viewer?StudyInstanceUIDs=1.2.3", "/ohif/viewer/dicomweb",
                 "/ohif/index.html"):
        again = client.get(path)
        assert again.status_code == 200 and again.text == r.text, path


def test_ohif_bundles_load_chunks_from_ohif(client: httpx.Client) -> None:
    app = client.get("/ohif/app.bundle.0123.js")
    assert app.status_code == 200
    assert app.content == OHIF_BUNDLE.replace(b'p = "/"', b'p = "/ohif/"')
    assert client.get("/ohif/85.bundle.4567.js").content == OHIF_CHUNK
    css = client.get("/ohif/app.bundle.css")
    assert css.headers["content-type"].startswith("text/css")
    assert css.content == b"@font-face{src:url(/ohif/31fb.woff2)}body{color:red}"
    manifest = client.get("/ohif/manifest.json").json()
    assert manifest == {"start_url": "/ohif/", "icons": [{"src": "/ohif/assets/a.png"}],
                        "related": "//example.org/x"}
    wasm = client.get("/ohif/a.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.content == b"\0asm\1\0\0\0"
    missing = client.get("/ohif/9999.bundle.js")
    assert missing.status_code == 404 and "No such file" in missing.json()["error"]


def test_ohif_config_is_generated_for_this_node(client: httpx.Client, web: WebServer) -> None:
    r = client.get("/ohif/app-config.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    text = r.text
    assert "elsewhere" not in text  # the dist's own config is not served
    assert f'"qidoRoot": "{web.base_url}/dicomweb"' in text
    assert f'"wadoRoot": "{web.base_url}/dicomweb"' in text
    assert '"routerBasename": "/ohif"' in text
    assert "Bearer" not in text  # auth is off


def test_ohif_without_ohif_dir_says_how_to_get_it(tmp_path: Path) -> None:
    server = WebServer(tmp_path).start()
    try:
        for path in ("/ohif/", "/ohif/app-config.js", "/ohif/viewer"):
            r = httpx.get(server.base_url + path)
            assert r.status_code == 404, path
            assert "ohif_dir" in r.json()["error"] and "@ohif/app" in r.json()["error"]
        assert httpx.get(server.base_url + "/ui/config.json").json()["ohif"] is False
    finally:
        server.stop()


def test_with_auth_on_the_files_are_open_and_the_data_is_not(tmp_path: Path,
                                                              ohif_dir: Path) -> None:
    server = WebServer(tmp_path, auth="on", ohif_dir=str(ohif_dir)).start()
    try:
        base = server.base_url
        for path in ("/ui/", "/ui/app.js", "/ui/inspect", "/ui/dictionary.json",
                     "/ui/config.json", "/ohif/", "/ohif/app-config.js"):
            assert httpx.get(base + path).status_code == 200, path
        assert httpx.get(base + "/ui/config.json").json()["auth"] == "on"
        config = httpx.get(base + "/ohif/app-config.js").text
        assert "sessionStorage.getItem(\"pacsnode.token\")" in config and "'Bearer '" in config
        assert "import('/ui/oidc.js')" in config  # an OIDC sign-in is renewed in OHIF too
        assert httpx.get(base + "/dicomweb/studies").status_code == 401
        reader = create_token(server.node.db, "ui-reader", "reader")
        me = httpx.get(base + "/api/v1/me", headers={"Authorization": f"Bearer {reader}"})
        assert me.json()["role"] == "reader"
    finally:
        server.stop()

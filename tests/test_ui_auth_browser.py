"""The UI with ``auth = "on"``: it asks for a token, keeps it in the tab's
sessionStorage, sends it as Bearer on every call (frames included) and
offers only what the token's role allows (``GET /api/v1/me``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from browser import browser, canvas_grey, open_page, shot, write_series  # noqa: F401
from pacsnode.access.tokens import create_token
from web_server import STOW_TYPE, WebServer, multipart_body

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ui-auth")
    (work / "data").mkdir()
    server = WebServer(work / "data", auth="on").start()
    try:
        db = server.node.db
        tokens = {role: create_token(db, f"ui-{role}", role)
                  for role in ("reader", "editor")}
        study, series, files = write_series(work / "src", 3, patient_name="Auth^Ui",
                                            patient_id="AUTH1", size=32)
        r = httpx.post(server.dicomweb + "/studies",
                       content=multipart_body([f.read_bytes() for f in files]),
                       headers={"Content-Type": STOW_TYPE,
                                "Authorization": f"Bearer {tokens['editor']}"}, timeout=60)
        assert r.status_code == 200, r.text
        shots = work / "auth-shots"
        shots.mkdir()
        yield {"server": server, "tokens": tokens, "study": study, "series": series,
               "shots": shots}
    finally:
        server.stop()


def sign_in(page: Any, token: str) -> None:
    page.wait_for_selector("form.token-login")
    page.fill("input[name=token]", token)
    page.click("form.token-login button[type=submit]")


def test_a_reader_sees_and_views_but_cannot_change(browser: Any,  # noqa: F811
                                                   env: dict[str, Any]) -> None:
    with open_page(browser, env["server"].base_url) as page:
        rec = page.recorder
        page.goto("/ui/")
        sign_in(page, "not-a-token")
        page.wait_for_selector("section.login p.login-why")
        shot(page, env["shots"], "login-refused")
        sign_in(page, env["tokens"]["reader"])
        page.wait_for_selector("tr.study-row")
        assert page.locator("tr.study-row td.patient-name").all_inner_texts() == ["Auth^Ui"]
        nav = page.inner_text("header nav")
        assert "Studies" in nav and "Upload" not in nav and "Remote nodes" not in nav
        assert "ui-reader (reader)" in page.inner_text("header .who")
        page.click("tr.study-row")
        page.wait_for_selector("h2.study-title")
        assert page.locator("button:text('Delete study')").count() == 0
        page.click(f"a.series-card[data-series='{env['series']}']")
        page.wait_for_selector("canvas.image[data-slice]")
        assert max(canvas_grey(page)) > 0
        shot(page, env["shots"], "reader-viewer")
        assert page.evaluate("sessionStorage.getItem('pacsnode.token')") == \
            env["tokens"]["reader"]
        # Only the sign-ins were refused: every data call carried the token.
        refused = [f for f in rec.failures if f.startswith(("401", "403"))]
        assert refused and all("/api/v1/me" in f for f in refused), rec.failures
        page.click("text=Sign out")
        page.wait_for_selector("form.token-login")
        assert page.evaluate("sessionStorage.getItem('pacsnode.token')") is None


def test_an_editor_is_offered_delete_and_upload(browser: Any,  # noqa: F811
                                                env: dict[str, Any]) -> None:
    with open_page(browser, env["server"].base_url) as page:
        page.goto(f"/ui/#/study/{env['study']}")
        sign_in(page, env["tokens"]["editor"])
        page.wait_for_selector("button:text('Delete study')")
        assert "Upload" in page.inner_text("header nav")
        assert "Remote nodes" not in page.inner_text("header nav")  # operator and up

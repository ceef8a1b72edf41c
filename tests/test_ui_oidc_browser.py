"""Signing in to the UI with OIDC in a real browser (Debian's Chromium
through Playwright): the authorization code flow with PKCE against a
provider of the test's own (tests/oidc_issuer.py: RS256 access tokens, a
sign-in page, S256 checked, refresh tokens, logout) on another origin.

The page goes to the provider and back, signs in as the user picked there,
lists the studies with the access token, shows who is signed in and what
the role allows, renews an expired token with the refresh token, sends a
user the node gives no role back with the reason, and signs out at the
provider; OHIF (the real @ohif/app) in the same tab lists the studies with
that token and renews it; a plain-http page says why it cannot sign in.
Screenshots go to the module's tmp folder (``oidc-shots``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from browser import browser, record, script_errors, shot, write_series  # noqa: F401
from conftest import require_tool
from ohif_package import ohif_dist  # noqa: F401
from oidc_issuer import Issuer
from pacsnode.access.tokens import create_token
from web_server import STOW_TYPE, WebServer, multipart_body

pytestmark = pytest.mark.timeout(120)

CLIENT = "pacsnode-ui"
AUDIENCE = "pacsnode"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ui-oidc")
    (work / "data").mkdir()
    # OHIF's part here: a page that loads the app-config.js the node makes.
    ohif = work / "ohif-dist"
    ohif.mkdir()
    (ohif / "index.html").write_text('<!doctype html><html><head><script src="/app-config.js">'
                                     '</script></head><body><p id="ohif">OHIF</p></body></html>')
    issuer = Issuer(client_id=CLIENT, audience=AUDIENCE)
    server = WebServer(work / "data", auth="on", oidc_issuer=issuer.issuer,
                       oidc_audience=AUDIENCE, oidc_client_id=CLIENT, ohif_dir=str(ohif))
    issuer.origins.append(server.base_url)
    issuer.redirect_uris.append(server.base_url + "/ui/callback")
    users = {"rita": issuer.add_user("3f1c-rita", "rita", "reader"),
             "olga": issuer.add_user("77aa-olga", "olga", "offline_access", "operator"),
             "nora": issuer.add_user("9d02-nora", "nora", "offline_access")}
    issuer.start()
    server.start()
    try:
        editor = create_token(server.node.db, "loader", "editor")
        study, _series, files = write_series(work / "src", 2, patient_name="Oidc^Ui",
                                             patient_id="OIDC1", size=32)
        stow(server, editor, files)
        shots = work / "oidc-shots"
        shots.mkdir()
        yield {"server": server, "issuer": issuer, "users": users, "editor": editor,
               "study": study, "work": work, "shots": shots}
    finally:
        server.stop()
        issuer.stop()


def stow(server: WebServer, token: str, files: list[Path]) -> None:
    r = httpx.post(server.dicomweb + "/studies",
                   content=multipart_body([f.read_bytes() for f in files]),
                   headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {token}"},
                   timeout=60)
    assert r.status_code == 200, r.text


@pytest.fixture
def page(browser: Any, env: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 800},
                                  base_url=env["server"].base_url)
    context.set_default_timeout(30_000)
    p = context.new_page()
    p.recorder = record(p)
    yield p
    context.close()


def sign_in_at_provider(page: Any, env: dict[str, Any], user: str, shots: str = "") -> None:
    """From the UI's sign-in page to the provider's, pick ``user``, and back."""
    page.click("button.oidc-sign-in")
    page.wait_for_url(env["issuer"].issuer + "/protocol/openid-connect/auth?*")
    if shots:
        shot(page, env["shots"], shots)
    page.select_option("select[name=user]", user)
    page.click("button[value=approve]")
    page.wait_for_url(env["server"].base_url + "/ui/*")


def session_token(page: Any) -> str | None:
    token: str | None = page.evaluate("sessionStorage.getItem('pacsnode.token')")
    return token


def test_config_names_the_provider_endpoints(env: dict[str, Any], tmp_path: Path) -> None:
    issuer: Issuer = env["issuer"]
    config = httpx.get(env["server"].base_url + "/ui/config.json").json()
    assert config["auth"] == "on"
    endpoints = issuer.discovery()
    assert config["oidc"] == {
        "issuer": issuer.issuer, "client_id": CLIENT, "scopes": "openid profile",
        "authorization_endpoint": endpoints["authorization_endpoint"],
        "token_endpoint": endpoints["token_endpoint"],
        "end_session_endpoint": endpoints["end_session_endpoint"]}
    # No client id: no OIDC sign-in offered (the token form only).
    plain = WebServer(tmp_path / "plain", auth="on", oidc_issuer=issuer.issuer).start()
    try:
        assert httpx.get(plain.base_url + "/ui/config.json").json()["oidc"] is None
    finally:
        plain.stop()
    # A provider that does not answer: the page is told why, in words.
    gone = "http://127.0.0.1:9/realms/none"
    down = WebServer(tmp_path / "down", auth="on", oidc_issuer=gone,
                     oidc_client_id=CLIENT).start()
    try:
        oidc = httpx.get(down.base_url + "/ui/config.json", timeout=30).json()["oidc"]
        assert oidc["error"] == f"the sign-in service at {gone} could not be reached"
        assert "token_endpoint" not in oidc
    finally:
        down.stop()


def test_sign_in_list_studies_and_sign_out(page: Any, env: dict[str, Any]) -> None:
    issuer: Issuer = env["issuer"]
    base = env["server"].base_url
    page.goto("/ui/")
    page.wait_for_selector("button.oidc-sign-in")
    assert "127.0.0.1" in page.inner_text("section.login")
    shot(page, env["shots"], "1-sign-in")
    sign_in_at_provider(page, env, "rita", shots="2-provider")
    page.wait_for_selector("tr.study-row")
    assert page.locator("tr.study-row td.patient-name").all_inner_texts() == ["Oidc^Ui"]
    assert page.inner_text("header .who").startswith("rita (reader)")
    assert "code=" not in page.url and page.url.startswith(base + "/ui/")
    shot(page, env["shots"], "3-signed-in")

    # PKCE: the provider got an S256 challenge, then the verifier it checked.
    auth = issuer.called("/auth")[0]
    assert auth["code_challenge_method"] == "S256" and auth["client_id"] == CLIENT
    assert auth["redirect_uri"] == base + "/ui/callback" and auth["scope"] == "openid profile"
    exchange = [c for c in issuer.called("/token") if c["grant_type"] == "authorization_code"]
    assert len(exchange) == 1 and 43 <= len(exchange[0]["code_verifier"]) <= 128
    assert "client_secret" not in exchange[0]
    # The access token is what the page sends (OHIF in this tab reads it too).
    token = session_token(page)
    assert token is not None
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "3f1c-rita" and claims["aud"] == AUDIENCE
    data_calls = [u for _m, u, _b in page.recorder.requests
                  if u.startswith((base + "/dicomweb", base + "/api/v1"))]
    assert data_calls and not page.recorder.failures, page.recorder.failures

    # A reader is shown what a reader may do, and told what else needs.
    nav = page.inner_text("header nav")
    assert "Studies" in nav and "Upload" not in nav and "Remote nodes" not in nav
    page.evaluate("location.hash = '#/remote'")
    need = page.wait_for_selector("p.need-role")
    assert "needs the role operator" in need.inner_text()
    assert "you have the role reader" in need.inner_text()
    shot(page, env["shots"], "4-reader-at-remote")

    page.click("header .who button")
    page.wait_for_selector("button.oidc-sign-in")
    assert page.url == base + "/ui/"
    logout = issuer.called("/logout")[-1]
    assert logout["client_id"] == CLIENT and logout["id_token_hint"]
    assert logout["post_logout_redirect_uri"] == base + "/ui/callback"
    assert session_token(page) is None
    assert page.evaluate("sessionStorage.getItem('pacsnode.oidc')") is None
    shot(page, env["shots"], "5-signed-out")
    assert not script_errors(page.recorder), page.recorder.console_errors


def test_a_user_without_a_role_and_a_cancelled_sign_in(page: Any, env: dict[str, Any]) -> None:
    page.goto("/ui/#/study/" + env["study"])
    page.wait_for_selector("button.oidc-sign-in")
    sign_in_at_provider(page, env, "nora")
    why = page.wait_for_selector("p.login-why")
    text = why.inner_text()
    assert "You are signed in as nora, but this node refused" in text
    assert "oidc '9d02-nora' grants no pacsnode role" in text
    assert "reader, writer, editor, operator, admin" in text
    shot(page, env["shots"], "6-no-role")
    # Another user: out at the provider first, then in again, and cancelled there.
    page.click("text=Sign in as someone else")
    page.wait_for_selector("button.oidc-sign-in")
    page.click("button.oidc-sign-in")
    page.wait_for_url(env["issuer"].issuer + "/protocol/openid-connect/auth?*")
    page.click("button[value=deny]")
    why = page.wait_for_selector("p.login-why")
    assert "did not sign you in: the user cancelled the sign-in" in why.inner_text()
    assert "error=" not in page.url
    shot(page, env["shots"], "7-cancelled")


def test_an_expired_token_is_renewed_then_sign_in_again(page: Any,
                                                         env: dict[str, Any]) -> None:
    issuer: Issuer = env["issuer"]
    page.goto("/ui/#/system")
    page.wait_for_selector("button.oidc-sign-in")
    sign_in_at_provider(page, env, "olga")
    page.wait_for_selector("table.system")
    assert page.inner_text("header .who").startswith("olga (operator)")
    assert "Remote nodes" in page.inner_text("header nav")
    refreshes = len([c for c in issuer.called("/token") if c["grant_type"] == "refresh_token"])

    # The access token expires: the next call gets 401, the page renews the
    # token with the refresh token and asks again.
    now = int(time.time())
    expired = issuer.access_token(env["users"]["olga"], exp=now - 60, iat=now - 600,
                                  nbf=now - 600)
    assert httpx.get(env["server"].base_url + "/api/v1/nodes", timeout=20,
                     headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    page.evaluate("(t) => sessionStorage.setItem('pacsnode.token', t)", expired)
    page.evaluate("location.hash = '#/remote'")
    page.wait_for_selector("form.add-node")
    page.wait_for_function("(t) => sessionStorage.getItem('pacsnode.token') !== t", arg=expired)
    page.wait_for_selector("h3:text('Jobs')")
    renewals = [c for c in issuer.called("/token") if c["grant_type"] == "refresh_token"]
    assert len(renewals) == refreshes + 1 and renewals[-1]["client_id"] == CLIENT
    renewed = session_token(page)
    assert renewed and renewed != expired
    assert jwt.decode(renewed, options={"verify_signature": False})["sub"] == "77aa-olga"

    # OHIF in this tab renews the token too (its app-config.js), a little
    # before it expires: here at once, as if it were about to.
    page.evaluate("""() => { const s = JSON.parse(sessionStorage.getItem('pacsnode.oidc'));
                             s.expires_at = Date.now();
                             sessionStorage.setItem('pacsnode.oidc', JSON.stringify(s)); }""")
    page.goto("/ohif/")
    page.wait_for_selector("#ohif")
    page.wait_for_function("(t) => sessionStorage.getItem('pacsnode.token') !== t", arg=renewed)
    renewals = [c for c in issuer.called("/token") if c["grant_type"] == "refresh_token"]
    assert len(renewals) == refreshes + 2
    assert page.evaluate("typeof window.config") == "function"  # OHIF's config, with the token
    page.goto("/ui/#/system")  # still signed in: the tab keeps the session
    page.wait_for_selector("table.system")
    assert page.inner_text("header .who").startswith("olga (operator)")

    # Live arrivals over the change feed's event stream, with the token.
    page.evaluate("location.hash = '#/arrivals'")
    page.wait_for_selector("table.arrivals")
    study, _series, files = write_series(env["work"] / "live", 3, patient_name="Live^Oidc",
                                         patient_id="LIVEOIDC")
    stow(env["server"], env["editor"], files)
    page.wait_for_selector(f"tr.arrival-row[data-study='{study}'] td:has-text('Live^Oidc')")
    assert page.inner_text(f"tr.arrival-row[data-study='{study}'] .arrival-stored") == "3"
    urls = [u for _m, u, _b in page.recorder.requests]
    assert any("/api/v1/changes/stream?since=" in u for u in urls)
    shot(page, env["shots"], "8-arrivals")

    # Expired, and no refresh token left: back to signing in, with the reason.
    session = json.loads(page.evaluate("sessionStorage.getItem('pacsnode.oidc')"))
    page.evaluate("(s) => sessionStorage.setItem('pacsnode.oidc', s)",
                  json.dumps({**session, "refresh": ""}))
    page.evaluate("(t) => sessionStorage.setItem('pacsnode.token', t)", expired)
    page.evaluate("location.hash = '#/system'")
    why = page.wait_for_selector("p.login-why")
    assert "the access token has expired" in why.inner_text()
    assert len([c for c in issuer.called("/token")
                if c["grant_type"] == "refresh_token"]) == refreshes + 2
    shot(page, env["shots"], "9-expired")


@pytest.mark.timeout(300)
def test_ohif_in_the_same_tab_sends_the_oidc_token(browser: Any,  # noqa: F811
                                                   env: dict[str, Any],
                                                   ohif_dist: Path) -> None:  # noqa: F811
    """The real OHIF (@ohif/app), opened after an OIDC sign-in at /ui/ in the
    same tab, lists the studies with the user's access token."""
    issuer: Issuer = env["issuer"]
    server = WebServer(env["work"] / "ohif-data", auth="on", oidc_issuer=issuer.issuer,
                       oidc_audience=AUDIENCE, oidc_client_id=CLIENT,
                       ohif_dir=str(ohif_dist))
    issuer.origins.append(server.base_url)
    issuer.redirect_uris.append(server.base_url + "/ui/callback")
    server.start()
    context = browser.new_context(viewport={"width": 1400, "height": 900},
                                  base_url=server.base_url)
    context.set_default_timeout(90_000)
    page = context.new_page()
    rec = record(page)
    bearer: list[tuple[str, str]] = []  # (url, Authorization) of each DICOMweb request

    def on_request(request: Any) -> None:
        if "/dicomweb/" in request.url:
            bearer.append((request.url, request.all_headers().get("authorization", "")))

    page.on("request", on_request)
    try:
        _study, _series, files = write_series(env["work"] / "ohif-src", 2,
                                              patient_name="Ohif^Oidc", patient_id="OHIFOIDC",
                                              description="Through OIDC")
        stow(server, create_token(server.node.db, "ohif-loader", "writer"), files)
        page.goto("/ui/")
        page.wait_for_selector("button.oidc-sign-in")
        sign_in_at_provider(page, {**env, "server": server}, "rita")
        page.wait_for_selector("tr.study-row")
        token = session_token(page)
        before = len(bearer)
        page.click("header nav a:text('OHIF')")
        page.locator("text=OHIFOIDC").first.wait_for()
        assert "Through OIDC" in page.inner_text("body")
        shot(page, env["shots"], "10-ohif")
        ohif_calls = bearer[before:]
        assert ohif_calls and all(h == f"Bearer {token}" for _u, h in ohif_calls), ohif_calls
        assert not rec.failures, rec.failures
    finally:
        context.close()
        server.stop()


def test_a_plain_http_page_says_why_it_cannot_sign_in(browser: Any,  # noqa: F811
                                                      env: dict[str, Any]) -> None:
    """PKCE needs crypto.subtle, which a browser offers only on https pages
    (and localhost): on http://pacs.test the button is off and the page says
    why; a pasted API token still signs in."""
    server = WebServer(env["work"] / "plain-http-data", auth="on",
                       oidc_issuer=env["issuer"].issuer, oidc_audience=AUDIENCE,
                       oidc_client_id=CLIENT, allowed_hosts=["pacs.test"]).start()
    named = browser.browser_type.launch(
        executable_path=require_tool("chromium", "chromium"), headless=True,
        args=["--no-sandbox", "--disable-dev-shm-usage",
              "--host-resolver-rules=MAP pacs.test 127.0.0.1"])
    try:
        page = named.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"http://pacs.test:{server.port}/ui/")
        button = page.wait_for_selector("button.oidc-sign-in")
        assert button.is_disabled()
        assert "needs this page to be opened over https" in page.inner_text("section.login")
        shot(page, env["shots"], "11-plain-http")
        page.click("details.token-login summary")
        page.fill("input[name=token]", create_token(server.node.db, "paster", "reader"))
        page.click("form.token-login button[type=submit]")
        page.wait_for_selector("table.studies")
        assert page.inner_text("header .who").startswith("paster (reader)")
    finally:
        named.close()
        server.stop()

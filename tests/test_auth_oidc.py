"""OIDC access tokens: a provider of the test's own — a loopback HTTP server
with a discovery document and a JWKS of keys made here with `cryptography` —
and tokens signed with PyJWT: good (RS256, ES256), expired, not yet valid,
wrong audience, wrong issuer, unknown key, tampered, rotated key (fetched
again on an unknown kid), roles through a dotted claim, no role (403)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import pacsnode.access.oidc as oidc_module
from conftest import free_port
from web_server import WebServer

AUDIENCE = "pacsnode"


class Provider:
    """Discovery document + JWKS on a free loopback port; counts JWKS fetches."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/realms/test"
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/realms/test/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer,
                            "jwks_uri": provider.issuer + "/protocol/openid-connect/certs"}
                elif self.path == "/realms/test/protocol/openid-connect/certs":
                    provider.jwks_fetches += 1
                    body = {"keys": [provider.public_jwk(kid) for kid in provider.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_key(self, kid: str, kind: str = "RS256", publish: bool = True) -> None:
        if kind == "RS256":
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        jwk.update(kid=kid, use="sig")
        return jwk

    def token(self, kid: str = "rsa1", *, roles: Any = ("reader",), claim: str = "roles",
              **changes: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": AUDIENCE, "sub": "user-42",
                                  "iat": now, "nbf": now - 5, "exp": now + 300}
        target = claims
        parts = claim.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = list(roles)
        claims.update(changes)
        key = self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider()
    p.add_key("rsa1")
    p.add_key("ec1", "ES256")
    p.thread.start()
    yield p
    p.server.shutdown()


def _server(tmp_path: Path, provider: Provider, **settings: Any) -> WebServer:
    options = {"auth": "on", "oidc_issuer": provider.issuer, "oidc_audience": AUDIENCE,
               **settings}
    return WebServer(tmp_path / "data", **options).start()


def _get(web: WebServer, token: str, path: str = "/dicomweb/studies") -> httpx.Response:
    return httpx.get(web.base_url + path, headers={"Authorization": f"Bearer {token}"},
                     timeout=20)


def test_good_bad_and_ugly_access_tokens(tmp_path: Path, provider: Provider) -> None:
    web = _server(tmp_path, provider)
    try:
        good = _get(web, provider.token())
        assert good.status_code == 204
        me = _get(web, provider.token(roles=["reader", "operator", "unknown"]), "/api/v1/me")
        assert me.json() == {"auth": "on", "user": "user-42", "kind": "oidc",
                             "role": "operator"}  # the highest known role
        assert _get(web, provider.token("ec1")).status_code == 204  # ES256
        now = int(time.time())
        refused = {
            "expired": (provider.token(exp=now - 120, iat=now - 600, nbf=now - 600),
                        "expired"),
            "not yet valid": (provider.token(nbf=now + 600), "not valid yet"),
            "wrong audience": (provider.token(aud="another-app"), "not meant for this node"),
            "wrong issuer": (provider.token(iss="http://127.0.0.1:1/realms/evil"),
                             "another issuer"),
            "no exp": (provider.token(exp=None), "invalid access token"),
        }
        provider.add_key("stranger", publish=False)
        refused["unknown key"] = (provider.token("stranger"), "unknown key")
        header, payload, signature = provider.token().split(".")
        forged = json.loads(jwt.utils.base64url_decode(payload))
        forged["roles"] = ["admin"]
        forged_payload = jwt.utils.base64url_encode(json.dumps(forged).encode()).decode()
        refused["tampered"] = (f"{header}.{forged_payload}.{signature}", "signature")
        unsigned = jwt.encode({"iss": provider.issuer, "aud": AUDIENCE, "sub": "x",
                               "exp": now + 300, "roles": ["admin"]}, None, algorithm="none")
        refused["alg none"] = (unsigned, "not accepted")
        for what, (token, reason) in refused.items():
            r = _get(web, token)
            assert r.status_code == 401, what
            assert reason in r.json()["error"], (what, r.json())
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', what
        # A good token whose roles mean nothing here: known, but not allowed.
        r = _get(web, provider.token(roles=["viewer"]))
        assert r.status_code == 403 and "no pacsnode role" in r.json()["error"]
        # A reader may not do an operator's work.
        r = _get(web, provider.token(), "/api/v1/nodes")
        assert r.status_code == 403 and "operator" in r.json()["error"]
    finally:
        web.stop()


def test_roles_from_a_dotted_claim(tmp_path: Path, provider: Provider) -> None:
    web = _server(tmp_path, provider, oidc_roles_claim="realm_access.roles")
    try:
        token = provider.token(roles=["offline_access", "editor"], claim="realm_access.roles")
        assert _get(web, token, "/api/v1/me").json()["role"] == "editor"
        flat = provider.token(roles=["admin"])  # top-level "roles": not the configured claim
        assert _get(web, flat).status_code == 403
    finally:
        web.stop()


def test_a_rotated_key_is_fetched_on_its_unknown_kid(tmp_path: Path, provider: Provider,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The provider must not be asked more than once per REFRESH_COOLDOWN; a
    # shorter cooldown keeps the test short (it is a constant, not a fake).
    monkeypatch.setattr(oidc_module, "REFRESH_COOLDOWN", 0.5)
    web = _server(tmp_path, provider)
    try:
        assert _get(web, provider.token()).status_code == 204
        fetched = provider.jwks_fetches
        provider.add_key("rsa2")  # the provider rotates: a new key appears
        time.sleep(0.6)
        assert _get(web, provider.token("rsa2")).status_code == 204
        assert provider.jwks_fetches == fetched + 1
        # Known keys are served from the cache: no fetch per request.
        for _ in range(3):
            assert _get(web, provider.token("rsa1")).status_code == 204
        assert provider.jwks_fetches == fetched + 1
    finally:
        web.stop()


def test_the_jwks_url_alone_and_an_unreachable_provider(tmp_path: Path,
                                                        provider: Provider) -> None:
    jwks = provider.issuer + "/protocol/openid-connect/certs"
    web = _server(tmp_path, provider, oidc_issuer="", oidc_jwks_url=jwks)
    try:
        assert _get(web, provider.token()).status_code == 204
    finally:
        web.stop()
    down = f"http://127.0.0.1:{free_port()}/realms/gone"
    web = WebServer(tmp_path / "d2", auth="on", oidc_issuer=down).start()
    try:
        r = _get(web, provider.token())
        assert r.status_code == 401
        assert "could not be read" in r.json()["error"]
        assert "Traceback" not in r.text
    finally:
        web.stop()

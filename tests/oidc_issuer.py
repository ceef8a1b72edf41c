"""A small OpenID provider for the UI's sign-in tests, on a free loopback
port: discovery, a sign-in page (a user picked by name, no password),
the authorization code grant with PKCE (S256 checked), the refresh token
grant, a JWKS of an RSA key made here, and RP-initiated logout.

Access tokens are RS256 JWTs signed with PyJWT (``aud`` the node's
audience, ``roles`` the user's roles), as Keycloak issues them; the node
checks them against the JWKS like any provider's.  The token endpoint
answers cross-origin requests from ``origins`` only (a public client's
*web origins*).  What the browser asked is kept in ``calls`` for the tests.

PyPI's ``oidc-provider-mock`` does not fit: its access tokens are opaque
strings (authlib's default; a resource server cannot verify them against a
JWKS) and it registers no PKCE check, so it cannot show what this flow needs."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import free_port

__all__ = ["Issuer", "User"]


@dataclass(frozen=True)
class User:
    sub: str
    name: str
    roles: tuple[str, ...]


@dataclass
class _Grant:
    """What an authorization code or refresh token stands for."""

    user: User
    client_id: str
    redirect_uri: str = ""
    challenge: str = ""
    scope: str = ""


@dataclass
class Issuer:
    client_id: str
    audience: str
    #: Origins whose pages may call the token endpoint (CORS).
    origins: list[str] = field(default_factory=list)
    #: Redirect URIs registered for the client (exact match, as Keycloak).
    redirect_uris: list[str] = field(default_factory=list)
    users: dict[str, User] = field(default_factory=dict)
    #: Seconds an access token lasts.
    lifetime: int = 300
    #: (path, parameters) of each request: authorize, token, logout.
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/realms/test"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "ui-test-" + secrets.token_hex(4)
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "Issuer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_user(self, sub: str, name: str, *roles: str) -> User:
        user = User(sub, name, roles)
        self.users[name] = user
        return user

    # --- what the provider serves -------------------------------------
    def url(self, path: str) -> str:
        return self.issuer + path

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer,
                "authorization_endpoint": self.url("/protocol/openid-connect/auth"),
                "token_endpoint": self.url("/protocol/openid-connect/token"),
                "end_session_endpoint": self.url("/protocol/openid-connect/logout"),
                "jwks_uri": self.url("/protocol/openid-connect/certs"),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["RS256"]}

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return {"keys": [jwk]}

    def access_token(self, user: User, **changes: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": user.sub,
                                  "azp": self.client_id, "iat": now, "nbf": now - 5,
                                  "exp": now + self.lifetime, "roles": list(user.roles),
                                  "typ": "Bearer"}
        claims.update(changes)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _id_token(self, user: User) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": user.sub, "iat": now,
                  "exp": now + self.lifetime, "preferred_username": user.name}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _tokens(self, grant: _Grant) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh] = grant
        return {"access_token": self.access_token(grant.user), "token_type": "Bearer",
                "expires_in": self.lifetime, "refresh_token": refresh,
                "id_token": self._id_token(grant.user), "scope": grant.scope}

    # --- the grants ---------------------------------------------------
    def authorize(self, params: dict[str, str]) -> str:
        """The sign-in request checked; '' when good, else why not."""
        if params.get("response_type") != "code":
            return "response_type must be code"
        if params.get("client_id") != self.client_id:
            return "unknown client_id"
        if params.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri is not registered for this client"
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "a public client must send a PKCE code_challenge (S256)"
        return ""

    def issue_code(self, params: dict[str, str], user: User) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Grant(user, params["client_id"], params["redirect_uri"],
                                       params["code_challenge"], params.get("scope", ""))
        return code

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        kind = form.get("grant_type")
        if kind == "authorization_code":
            with self._lock:
                grant = self._codes.pop(form.get("code", ""), None)  # used once
            if grant is None or grant.client_id != form.get("client_id") \
                    or grant.redirect_uri != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "unknown code"}
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
                return 400, {"error": "invalid_grant",
                             "error_description": "PKCE verification failed"}
            return 200, self._tokens(grant)
        if kind == "refresh_token":
            with self._lock:
                grant = self._refresh.pop(form.get("refresh_token", ""), None)  # rotated
            if grant is None or grant.client_id != form.get("client_id"):
                return 400, {"error": "invalid_grant", "error_description": "unknown token"}
            return 200, self._tokens(grant)
        return 400, {"error": "unsupported_grant_type"}

    def called(self, path_end: str) -> list[dict[str, str]]:
        return [params for path, params in self.calls if path.endswith(path_end)]


_SIGN_IN_PAGE = """<!doctype html><html><head><title>Test provider</title></head><body>
<h1>Sign in to the test realm</h1><p>for the client {client}</p>
<form method="post" action="{action}">{hidden}
<label>User <select name="user">{options}</select></label>
<button type="submit" name="action" value="approve">Sign in</button>
<button type="submit" name="action" value="deny">Cancel</button>
</form></body></html>"""


def _handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json", headers)

        def _redirect(self, url: str) -> None:
            self._send(302, b"", "text/plain", {"Location": url})

        def _cors(self) -> dict[str, str]:
            origin = self.headers.get("Origin", "")
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} \
                if origin in issuer.origins else {}

        def _params(self) -> tuple[str, dict[str, str]]:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                query.update({k: v[-1] for k, v in form.items()})
            return parts.path.removeprefix("/realms/test"), query

        def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's name
            headers = self._cors()
            if headers:
                headers.update({"Access-Control-Allow-Methods": "POST",
                                "Access-Control-Allow-Headers": "Content-Type"})
            self._send(204 if headers else 403, b"", "text/plain", headers)

        def do_GET(self) -> None:  # noqa: N802
            self._route()

        def do_POST(self) -> None:  # noqa: N802
            self._route()

        def _route(self) -> None:
            path, params = self._params()
            if path == "/.well-known/openid-configuration":
                self._json(200, issuer.discovery())
            elif path == "/protocol/openid-connect/certs":
                self._json(200, issuer.jwks())
            elif path == "/protocol/openid-connect/auth":
                issuer.calls.append((path, params))
                self._authorize(params)
            elif path == "/protocol/openid-connect/token" and self.command == "POST":
                issuer.calls.append((path, params))
                status, doc = issuer.token(params)
                self._json(status, doc, {"Cache-Control": "no-store", **self._cors()})
            elif path == "/protocol/openid-connect/logout":
                issuer.calls.append((path, params))
                back = params.get("post_logout_redirect_uri", "")
                if back in issuer.redirect_uris:
                    self._redirect(back)
                else:
                    self._send(400, b"post_logout_redirect_uri not registered", "text/plain")
            else:
                self._json(404, {"error": "not found"})

        def _authorize(self, params: dict[str, str]) -> None:
            wrong = issuer.authorize(params)
            if wrong:
                self._send(400, wrong.encode(), "text/plain; charset=utf-8")
                return
            back = params["redirect_uri"]
            if self.command == "GET":
                keep = {k: v for k, v in params.items() if k not in ("user", "action")}
                hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" '
                                 f'value="{html.escape(v)}">' for k, v in keep.items())
                options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>'
                                  for n in issuer.users)
                page = _SIGN_IN_PAGE.format(client=html.escape(issuer.client_id),
                                            action=issuer.url("/protocol/openid-connect/auth"),
                                            hidden=hidden, options=options)
                self._send(200, page.encode(), "text/html; charset=utf-8")
                return
            state = {"state": params["state"]} if "state" in params else {}
            user = issuer.users.get(params.get("user", ""))
            if params.get("action") != "approve" or user is None:
                self._redirect(back + "?" + urlencode({"error": "access_denied",
                                                       "error_description": "the user "
                                                       "cancelled the sign-in", **state}))
                return
            code = issuer.issue_code(params, user)
            self._redirect(back + "?" + urlencode({"code": code, **state}))

    return Handler

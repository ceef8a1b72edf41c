"""The access control of the HTTP side, as one ASGI middleware.

For every request, in this order:

1. the Host header must name this node (``allowed_hosts``), else 421 —
   a web page that re-points its own name at 127.0.0.1 (DNS rebinding)
   sends its own name and is turned away;
2. with ``auth = "on"``: the route's rule (:mod:`pacsnode.access.policy`)
   says which role it needs; a public route passes, any other needs
   ``Authorization: Bearer <credential>`` (401 with ``WWW-Authenticate:
   Bearer`` when missing or invalid) whose role is high enough (403 with a
   reason when not).  A route the table does not cover is refused (403);
   a path the app has no route for passes on to its 404/405 (after the
   credential check, so it tells a stranger nothing);
3. once answered, the request is handed to the audit trail (which decides
   from the rule whether it is an event).

The principal (who, which role) is left in ``scope["state"]["principal"]``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .policy import Rule, rule_for
from .roles import PERMISSIONS, Role

if TYPE_CHECKING:
    from ..audit import AuditTrail
    from .oidc import OidcVerifier
    from .tokens import TokenLookup

__all__ = ["AccessMiddleware", "Principal", "allowed_host_names", "LOOPBACK_NAMES"]

log = logging.getLogger("pacsnode.access")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")



@dataclass(frozen=True)
class Principal:
    #: Token name, OIDC subject, or "" (auth off).
    name: str
    #: "token", "oidc" or "none" (auth off).
    kind: str
    role: Role | None


ANONYMOUS = Principal("", "none", None)


def allowed_host_names(configured: Iterable[str], host: str) -> frozenset[str] | None:
    """The Host header values to answer (lower case; an entry without a port
    matches any port); None when '*' says any."""
    names = [n.strip().lower() for n in configured if n.strip()]
    if "*" in names:
        return None
    if not names:
        names = [*LOOPBACK_NAMES, host.lower()]
    return frozenset(_bracket(n) for n in names)


def _bracket(name: str) -> str:
    """IPv6 addresses as a Host header writes them: in brackets."""
    try:
        if ipaddress.ip_address(name).version == 6:
            return f"[{name}]"
    except ValueError:
        pass
    return name


def _host_only(value: str) -> str:
    if value.startswith("["):
        return value[:value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if ":" in value else value


def _header(scope: Scope, name: bytes) -> str | None:
    key: bytes
    value: bytes
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


async def _answer(send: Send, status: int, reason: str,
                  headers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006 - read only
    body = orjson.dumps({"error": reason})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


#: Seconds a verified OIDC access token is remembered (never past its exp).
JWT_MEMORY = 60.0
JWT_MEMORY_MAX = 2048


class AccessMiddleware:
    """See the module text.  ``tokens`` / ``oidc`` are None when auth is off
    or that kind of credential is not configured; ``audit`` receives every
    answered request (or is None)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None, auth: bool,
                 tokens: TokenLookup | None = None, oidc: OidcVerifier | None = None,
                 audit: AuditTrail | None = None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.auth = auth
        self.tokens = tokens
        self.oidc = oidc
        self.audit = audit
        self._jwts: dict[str, tuple[float, Principal]] = {}
        self._router: Any = None  # the app's router, to tell "no route" from "no rule"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed_hosts is not None:
            host = _header(scope, b"host")
            if host is not None and not self._host_allowed(host.lower()):
                await _answer(send, 421, f"this node does not answer to the host name "
                                         f"{host[:100]!r} (see the setting allowed_hosts)")
                return
        rule = rule_for(scope["method"], scope["path"])
        state = scope.setdefault("state", {})
        state["rule"] = rule  # for the metrics (web/metrics.count_answer)
        principal = ANONYMOUS
        if self.auth and not (rule is not None and rule.public):
            checked = await self._authenticate(scope)
            if isinstance(checked, tuple):
                status, reason, challenge = checked
                if status == 401 and challenge.endswith(b'"invalid_token"') and self.audit:
                    self.audit.security_alert(scope, "", reason)
                await _answer(send, status, reason, [(b"www-authenticate", challenge)])
                return
            principal = checked
            refusal = self._authorize(scope, rule, principal)
            if refusal:
                if self.audit:
                    self.audit.security_alert(scope, principal.name, refusal)
                await _answer(send, 403, refusal)
                return
        state["principal"] = principal
        if self.audit is None or rule is None or not self.audit.wants(rule):
            await self.app(scope, receive, send)
            return
        note = self.audit.begin(scope, rule)

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                note.status = int(message["status"])
            elif message["type"] == "http.response.body" and note.keep_body:
                note.add_body(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.audit.request(scope, rule, principal, note)

    def _host_allowed(self, host: str) -> bool:
        names = self.allowed_hosts
        assert names is not None
        return host in names or _host_only(host) in names

    async def _authenticate(self, scope: Scope) -> Principal | tuple[int, str, bytes]:
        header = _header(scope, b"authorization")
        if not header:
            return (401, "credentials needed: Authorization: Bearer <API token or OIDC "
                         "access token>", b"Bearer")
        scheme, _, credential = header.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return 401, "the Authorization header must be 'Bearer <token>'", b"Bearer"
        if self.tokens is not None and credential.startswith("pn_"):
            # One indexed SELECT: on SQLite cheaper inline than a thread hop.
            if self.tokens.db.is_sqlite:
                found = self.tokens.check(credential)
            else:
                found = await anyio.to_thread.run_sync(self.tokens.check, credential)
            if isinstance(found, str):
                return 401, found, b'Bearer error="invalid_token"'
            return Principal(found.name, "token", found.role)
        if self.oidc is not None and credential.count(".") == 2:
            return await self._check_jwt(self.oidc, credential)
        return 401, "the credential is neither an API token nor an access token this node " \
                    "accepts", b'Bearer error="invalid_token"'

    async def _check_jwt(self, oidc: OidcVerifier,
                         token: str) -> Principal | tuple[int, str, bytes]:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        known = self._jwts.get(key)
        if known is not None and known[0] > now:
            return known[1]
        found = await anyio.to_thread.run_sync(oidc.check, token)
        if isinstance(found, str):
            return 401, found, b'Bearer error="invalid_token"'
        principal = Principal(found.name, "oidc", found.role)
        if len(self._jwts) >= JWT_MEMORY_MAX:
            self._jwts.clear()
        self._jwts[key] = (min(now + JWT_MEMORY, found.expires), principal)
        return principal

    def _authorize(self, scope: Scope, rule: Rule | None, principal: Principal) -> str:
        """"" when allowed, else the reason of the 403."""
        who = f"{principal.kind} {principal.name!r}" if principal.name else principal.kind
        if rule is None:
            if self._has_route(scope):
                return (f"no access policy covers {scope['method']} {scope['path']}: refused "
                        "until one is added")
            return ""  # the app answers 404 / 405
        if principal.role is None:
            return f"{who} grants no pacsnode role"
        needed = PERMISSIONS[rule.permission]
        if principal.role < needed:
            return (f"{scope['method']} {rule.template} needs the role {needed.label} (or "
                    f"higher); {who} has the role {principal.role.label}")
        return ""

    def _has_route(self, scope: Scope) -> bool:
        from starlette.routing import Match
        app = scope.get("app")
        router = app.router if app is not None else None
        if router is None:
            return True  # cannot tell: refuse
        return any(route.matches(scope)[0] is Match.FULL for route in router.routes)

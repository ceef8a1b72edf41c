"""What the built-in UI needs to sign a user in at the OIDC provider
(DESIGN.md §8, §9; docs/SECURITY.md).

The browser does the authorization code flow with PKCE itself (no client
secret: the UI is a public client, ``web/static/ui/oidc.js``); the node only
tells it where to go.  With ``auth = "on"``, ``oidc_issuer`` and
``oidc_client_id`` set, ``GET /ui/config.json`` carries the client id, the
scopes and the provider's authorization, token and end-session endpoints,
read here from the issuer's discovery document (server side, so the
provider needs to allow the node's origin on its token endpoint only).

The discovery document is kept for :data:`LIFESPAN` seconds; after a
failure it is asked for again at most every :data:`RETRY` seconds, so a
provider that is down costs the page one quick answer, not a wait each time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from ..access.oidc import DiscoveryUnreadable, check_oidc_url, discovery_document
from ..config import Settings

__all__ = ["login_config", "LIFESPAN", "RETRY"]

#: Seconds a discovery document is used before it is read again.
LIFESPAN = 300.0
#: Seconds before a failed discovery is tried again.
RETRY = 5.0
_TIMEOUT = 5.0


@dataclass(frozen=True)
class _Endpoints:
    authorization: str
    token: str
    #: RP-initiated logout; "" when the provider has none.
    end_session: str


@dataclass
class _Entry:
    at: float
    found: _Endpoints | str  # the endpoints, or why there are none


_cache: dict[str, _Entry] = {}
_lock = threading.Lock()


def _endpoint(doc: dict[str, Any], name: str, required: bool = True) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        if required:
            raise LookupError(f"the provider's discovery document names no {name}")
        return ""
    try:
        return check_oidc_url(value, name)
    except ValueError as exc:
        raise LookupError(str(exc)) from None


def _discover(issuer: str) -> _Endpoints:
    try:
        doc = discovery_document(issuer, _TIMEOUT)
    except DiscoveryUnreadable:
        raise LookupError(f"the sign-in service at {issuer} could not be reached") from None
    return _Endpoints(_endpoint(doc, "authorization_endpoint"), _endpoint(doc, "token_endpoint"),
                      _endpoint(doc, "end_session_endpoint", required=False))


def _endpoints(issuer: str) -> _Endpoints | str:
    now = time.monotonic()
    with _lock:
        entry = _cache.get(issuer)
    if entry is not None:
        fresh = LIFESPAN if isinstance(entry.found, _Endpoints) else RETRY
        if now - entry.at < fresh:
            return entry.found
    found: _Endpoints | str
    try:
        found = _discover(issuer)
    except LookupError as exc:
        found = str(exc)
    with _lock:
        _cache[issuer] = _Entry(now, found)
    return found


def login_config(settings: Settings) -> dict[str, Any] | None:
    """The ``oidc`` part of ``/ui/config.json``: None when the UI has no
    OIDC sign-in (auth off, or no issuer or client id); else the client id,
    scopes and endpoints, or an ``error`` saying why they are not known."""
    if settings.auth != "on" or not settings.oidc_issuer or not settings.oidc_client_id:
        return None
    config: dict[str, Any] = {"issuer": settings.oidc_issuer,
                              "client_id": settings.oidc_client_id,
                              "scopes": settings.oidc_scopes or "openid"}
    found = _endpoints(settings.oidc_issuer)
    if isinstance(found, str):
        config["error"] = found
    else:
        config.update(authorization_endpoint=found.authorization, token_endpoint=found.token,
                      end_session_endpoint=found.end_session or None)
    return config

"""Access control from Settings: what the middleware gets, what ``serve``
refuses, and the one start-up line that says what is open to whom."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from ..audit import AuditTrail
from ..config import Settings
from ..index.db import Database
from .http import allowed_host_names

if TYPE_CHECKING:
    from .oidc import OidcVerifier

__all__ = ["access_options", "make_audit_trail", "check_exposure", "describe_access",
           "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_audit_trail(settings: Settings, db: Database) -> AuditTrail:
    syslog = None
    if settings.audit_syslog:
        from ..audit_syslog import SyslogSender
        syslog = SyslogSender(settings.audit_syslog)
    return AuditTrail(db, ae_title=settings.ae_title, syslog=syslog)


def make_oidc(settings: Settings) -> OidcVerifier | None:
    if not (settings.oidc_issuer or settings.oidc_jwks_url):
        return None
    from .oidc import OidcVerifier
    return OidcVerifier(settings.oidc_issuer, settings.oidc_jwks_url, settings.oidc_audience,
                        settings.oidc_roles_claim)


def access_options(settings: Settings, db: Database, audit: AuditTrail | None
                   ) -> dict[str, Any]:
    """Keyword arguments of :class:`pacsnode.access.http.AccessMiddleware`.
    Raises ValueError on an OIDC setting that cannot work."""
    on = settings.auth == "on"
    tokens = None
    if on:
        from .tokens import TokenLookup
        tokens = TokenLookup(db)
    return dict(allowed_hosts=allowed_host_names(settings.allowed_hosts, settings.host),
                auth=on, tokens=tokens, oidc=make_oidc(settings) if on else None,
                audit=audit)


def check_exposure(settings: Settings) -> None:
    """Raise ValueError when ``serve`` would open everything to the network:
    auth off on a non-loopback host without ``allow_insecure``."""
    if settings.auth == "off" and not is_loopback_host(settings.host) \
            and not settings.allow_insecure:
        raise ValueError(
            f"refusing to listen on {settings.host} with auth = \"off\": anyone who can "
            "reach the port could read, change and delete every study. Turn auth on "
            "(auth = \"on\", then 'pacsnode token create'), listen on 127.0.0.1, or set "
            "allow_insecure = true to accept that")
    if settings.auth == "on":
        make_oidc(settings)  # an http:// issuer off loopback fails here, at start-up


def describe_access(settings: Settings) -> str:
    """"HTTP: auth off, loopback only" / "HTTP: auth on (tokens, OIDC issuer X)"."""
    hosts = allowed_host_names(settings.allowed_hosts, settings.host)
    names = "any Host header" if hosts is None else "Host " + ", ".join(sorted(hosts))
    if not settings.allowed_hosts and not is_loopback_host(settings.host):
        names += " (set allowed_hosts to the names clients use to reach this node)"
    if settings.auth == "off":
        where = "loopback only" if is_loopback_host(settings.host) else \
            f"OPEN TO THE NETWORK on {settings.host} (allow_insecure = true)"
        return f"HTTP: auth off, {where}: anyone who reaches the port may do anything; {names}"
    kinds = ["API tokens"]
    oidc = make_oidc(settings)
    if oidc is not None:
        kinds.append(oidc.describe())
    return f"HTTP: auth on ({', '.join(kinds)}), on {settings.host}; {names}"

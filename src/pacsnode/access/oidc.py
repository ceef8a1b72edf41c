"""OIDC access tokens (JWT), checked against the issuer's signing keys.

The keys come from the JWKS that ``oidc_issuer``'s discovery document
(``/.well-known/openid-configuration``) names, or from ``oidc_jwks_url``;
PyJWT's :class:`jwt.PyJWKClient` fetches and caches them and fetches again
when a token names a key id (``kid``) it does not know (a rotated key), at
most once per :data:`REFRESH_COOLDOWN` seconds so that made-up key ids cannot
turn us into a flood on the provider.  Signature (RS256, ES256), ``exp``,
``nbf``, ``iss`` and ``aud`` are checked by PyJWT; the role is the highest
known one in ``oidc_roles_claim`` (a dotted path reaches into objects, as
Keycloak's ``realm_access.roles``).  No crypto of our own.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .roles import Role, highest_role

if TYPE_CHECKING:
    import jwt

__all__ = ["OidcVerifier", "OidcPrincipal", "check_oidc_url", "discovery_document",
           "DiscoveryUnreadable", "REFRESH_COOLDOWN"]

log = logging.getLogger("pacsnode.access")

ALGORITHMS = ["RS256", "ES256"]
#: Least seconds between two fetches of the JWKS caused by unknown key ids.
REFRESH_COOLDOWN = 2.0
#: Seconds the fetched JWKS is kept before it is fetched again anyway.
JWKS_LIFESPAN = 300.0
#: Clock skew tolerated on exp / nbf / iat (seconds).
LEEWAY = 10
#: Seconds before discovery is tried again after it failed.
DISCOVERY_RETRY = 5.0


@dataclass(frozen=True)
class OidcPrincipal:
    name: str  # the subject ("sub")
    #: None: a good token that grants no pacsnode role (403, not 401).
    role: Role | None
    #: The token's exp (epoch seconds).
    expires: float


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_oidc_url(url: str, setting: str) -> str:
    """``url`` when it is https://, or http:// to a loopback host; else ValueError."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url
    raise ValueError(f"{setting} {url!r} must be an https:// URL (http:// only to a "
                     "loopback address)")


class DiscoveryUnreadable(LookupError):
    """The issuer's discovery document could not be fetched or parsed (the
    cause is logged; what a caller tells its user is its own)."""


def discovery_document(issuer: str, timeout: float = 10.0) -> dict[str, Any]:
    """The issuer's OpenID Connect discovery document, checked to name
    ``issuer``: for the token check (its ``jwks_uri``) and for the UI's
    sign-in (its endpoints).  Raises DiscoveryUnreadable, or LookupError
    when it names another issuer."""
    import httpx
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
        response.raise_for_status()
        doc = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("OIDC discovery at %s failed: %s", url, exc)
        raise DiscoveryUnreadable(url) from None
    named = doc.get("issuer") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or str(named or "").rstrip("/") != issuer.rstrip("/"):
        raise LookupError(f"the discovery document at {url} names issuer {named!r}, "
                          f"not {issuer!r}")
    return doc


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OidcVerifier:
    def __init__(self, issuer: str, jwks_url: str, audience: str, roles_claim: str) -> None:
        self.issuer = check_oidc_url(issuer, "oidc_issuer") if issuer else ""
        self.jwks_url = check_oidc_url(jwks_url, "oidc_jwks_url") if jwks_url else ""
        if not (self.issuer or self.jwks_url):
            raise ValueError("OIDC needs oidc_issuer or oidc_jwks_url")
        self.audience = audience
        self.roles_claim = roles_claim or "roles"
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._failed_at = 0.0

    def describe(self) -> str:
        return f"OIDC issuer {self.issuer}" if self.issuer else f"OIDC JWKS {self.jwks_url}"

    def _jwks_client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() - self._failed_at < DISCOVERY_RETRY:
                raise LookupError("the OIDC provider could not be reached a moment ago")
            import jwt
            try:
                url = self.jwks_url or self._discover()
            except Exception:
                self._failed_at = time.monotonic()
                raise
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=JWKS_LIFESPAN,
                                           timeout=10, cooldown_duration=REFRESH_COOLDOWN)
            return self._client

    def _discover(self) -> str:
        try:
            doc = discovery_document(self.issuer)
        except DiscoveryUnreadable:
            raise LookupError("the OIDC provider's discovery document could not be read") from None
        jwks = doc.get("jwks_uri")
        if not isinstance(jwks, str):
            raise LookupError("the discovery document names no jwks_uri")
        return check_oidc_url(jwks, "jwks_uri")

    def check(self, token: str) -> OidcPrincipal | str:
        """The token's principal, or the reason it is refused."""
        import jwt
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALGORITHMS:
                return f"token algorithm {header.get('alg')!r} is not accepted (RS256, ES256)"
            key = self._jwks_client().get_signing_key(header.get("kid") or "")
            claims = jwt.decode(
                token, key.key, algorithms=ALGORITHMS, leeway=LEEWAY,
                audience=self.audience or None, issuer=self.issuer or None,
                options={"require": ["exp", "sub"] + (["iss"] if self.issuer else [])
                         + (["aud"] if self.audience else []),
                         "verify_aud": bool(self.audience)})
        except jwt.ExpiredSignatureError:
            return "the access token has expired"
        except jwt.ImmatureSignatureError:
            return "the access token is not valid yet (nbf)"
        except jwt.InvalidAudienceError:
            return "the access token is not meant for this node (aud)"
        except jwt.InvalidIssuerError:
            return "the access token comes from another issuer (iss)"
        except jwt.PyJWKClientConnectionError:
            return "the OIDC provider's keys could not be fetched"
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            return "the access token is signed by an unknown key (kid)"
        except jwt.InvalidSignatureError:
            return "the access token's signature does not verify"
        except jwt.InvalidTokenError as exc:
            return f"invalid access token ({type(exc).__name__})"
        except LookupError as exc:
            return str(exc)
        return OidcPrincipal(str(claims["sub"]), highest_role(_claim(claims, self.roles_claim)),
                             float(claims["exp"]))

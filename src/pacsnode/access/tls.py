"""TLS from Settings (DESIGN.md §8): HTTPS options for uvicorn, and the
contexts of the DICOM TLS listener and of our TLS associations to nodes
with ``tls = true``.

The profile is PS3.15 B.9, "BCP 195 TLS Secure Transport Connection
Profile": TLS 1.2 or later, and on TLS 1.2 only the AEAD cipher suites with
forward secrecy that BCP 195 (RFC 7525 §4.2) recommends (TLS 1.3 suites
are all acceptable and left as OpenSSL has them).  With ``tls_ca``, a DICOM
TLS peer must present a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from ..config import Settings

__all__ = ["BCP195_CIPHERS", "https_options", "dicom_server_context", "dicom_client_context",
           "node_tls", "peer_tls"]

#: TLS 1.2 cipher suites of BCP 195 (RFC 7525 §4.2), in OpenSSL's names.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384"))


def https_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for HTTPS when ``tls_cert``/``tls_key`` are set
    (none otherwise)."""
    if not settings.tls_cert:
        return {}
    return dict(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                ssl_ciphers=BCP195_CIPHERS)


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def dicom_server_context(settings: Settings) -> ssl.SSLContext:
    """The DICOM TLS listener's context: our certificate; with ``tls_ca``,
    a client certificate signed by it is required."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=settings.tls_ca)
    return context


def dicom_client_context(settings: Settings) -> ssl.SSLContext:
    """Our associations to a node with ``tls = true``: the node's
    certificate must be signed by ``tls_ca`` (or a system CA) and name its
    host; ours is presented when we have one (for a peer that asks)."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if settings.tls_ca:
        context.load_verify_locations(cafile=settings.tls_ca)
    else:
        context.load_default_certs()
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


@functools.lru_cache(maxsize=4)
def _client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    return dicom_client_context(Settings(tls_ca=ca, tls_cert=cert, tls_key=key))


def peer_tls(settings: Settings, tls: bool) -> ssl.SSLContext | None:
    """The context of our associations to a node whose ``tls`` is ``tls``
    (a ``[nodes.NAME]`` table's or a registered node's; None: plain)."""
    if not tls:
        return None
    return _client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)


def node_tls(settings: Settings, name: str) -> ssl.SSLContext | None:
    """The context of our associations to the configuration file's node
    ``name`` when it says ``tls = true`` (None otherwise: a plain
    association).  A node registered over HTTP is known only to the
    registry: ``peer_tls`` with its ``tls``."""
    cfg = settings.nodes.get(name)
    return peer_tls(settings, cfg is not None and cfg.tls)

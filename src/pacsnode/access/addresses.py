"""What a remote node registered over HTTP may point at, and what a failed
echo/find may tell the caller (DESIGN.md §8, Limits).

A node is somewhere the archive will connect to and send studies to.  An
address that is link-local (169.254/16 holds cloud metadata services;
fe80::/10), unspecified (0.0.0.0, ::: "this host" on some systems) or
multicast is never a DICOM peer, so registering one is refused; a name is
resolved and every address it resolves to is checked.  With
``node_networks`` set, every address must also lie in one of those
networks (where the archive's DICOM peers are).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from ..remote.errors import AssociationAborted, ConnectionFailed, RemoteError
from ..remote.registry import InvalidNode

__all__ = ["check_node_address", "public_failure"]

#: Seconds a registration waits for a name to resolve.
RESOLVE_TIMEOUT = 5.0


def _why_not(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _why_not(address.ipv4_mapped)
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    return ""


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]").split("%", 1)[0])]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise InvalidNode(f"host {host!r} does not resolve to an address") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_node_address(host: str, networks: Sequence[str] = ()) -> None:
    """Raise InvalidNode (400) when ``host`` is, or resolves to, a link-local,
    unspecified or multicast address, or (``networks`` given) one outside
    all of ``networks``."""
    allowed = [ipaddress.ip_network(n, strict=False) for n in networks]
    for address in _resolve(host):
        shown = host if host == str(address) else f"{host} ({address})"
        why = _why_not(address)
        if why:
            raise InvalidNode(f"host {shown} is a {why} address: not a DICOM node this "
                              "archive may connect to")
        plain = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) \
            and address.ipv4_mapped is not None else address
        if allowed and not any(plain in net for net in allowed if net.version == plain.version):
            raise InvalidNode(f"host {shown} is outside the networks nodes may be registered "
                              f"in (node_networks: {', '.join(networks)})")


def public_failure(exc: RemoteError, peer: str) -> str:
    """The text of an echo/find failure as the API shows it: a closed port,
    a filtered one and a non-DICOM service all read the same, so the
    endpoint tells a caller nothing about ports that a scanner could use.
    A DICOM answer (association rejected, failure status) is shown as is."""
    if isinstance(exc, (ConnectionFailed, AssociationAborted)):
        return f"{peer}: cannot connect, or no answer to the association request"
    return str(exc)

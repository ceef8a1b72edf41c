"""Who may do what over DIMSE (DESIGN.md §8): the decision, apart from the
protocol code that asks for it (``dimse/association.py``).

A calling AE is *known* when a node (``[nodes.NAME]`` or registered at run
time) has its AE title and the association comes from that node's host;
it may then use what the node's ``allow`` lists (all five by default).
Any other AE — also a registered title calling from another address — is
*unknown* and may use what ``dimse_unknown_ae`` lists.  An AE allowed
nothing gets A-ASSOCIATE-RJ (calling AE title not recognized); with
``check_called_ae``, an association to another called AE title than ours
is rejected (called AE title not recognized); a refused operation gets
status 0x0124 (Refused: Not Authorized).

Everything here is pure: :func:`build_policy` takes the node list and the
settings (resolving node host names once), :meth:`DimsePolicy.admit` and
:func:`refusal` only look things up.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import DIMSE_OPERATIONS, NodeConfig, Settings

__all__ = ["DimsePolicy", "Admission", "build_policy", "operation_of", "refusal",
           "NOT_AUTHORIZED", "DIMSE_OPERATIONS"]

#: DIMSE status of a refused operation (PS3.7 C.4: Refused: Not Authorized).
NOT_AUTHORIZED = 0x0124

#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21: rejected
#: permanent, by the service user, calling / called AE title not recognized.
REJECT_CALLING = (1, 1, 3)
REJECT_CALLED = (1, 1, 7)

#: Command Field of a request → the operation it is (N-ACTION, storage
#: commitment, goes with storing).
_OPERATIONS = {0x0030: "echo", 0x0001: "store", 0x0020: "find", 0x0010: "get",
               0x0021: "move", 0x0130: "store"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Admission:
    """What an association gets: the operations it may use, or why it is
    rejected (the A-ASSOCIATE-RJ fields and a reason for the log)."""

    allowed: frozenset[str]
    known: bool
    rejection: tuple[int, int, int] | None = None
    reason: str = ""


@dataclass(frozen=True)
class DimsePolicy:
    #: AE title → ((addresses of the node's host), allowed operations), one per node.
    nodes: dict[str, tuple[tuple[frozenset[Address], frozenset[str]], ...]]
    unknown: frozenset[str]
    #: Our AE titles when ``check_called_ae`` is on, else None.
    called: frozenset[str] | None

    def admit(self, calling: str, called: str, address: str) -> Admission:
        if self.called is not None and called not in self.called:
            return Admission(frozenset(), False, REJECT_CALLED,
                             f"called AE title {called!r} is not ours (check_called_ae)")
        peer = _address(address)
        for hosts, allowed in self.nodes.get(calling, ()):
            if peer is not None and peer in hosts:
                return self._admitted(allowed, True, calling)
        return self._admitted(self.unknown, False, calling)

    @staticmethod
    def _admitted(allowed: frozenset[str], known: bool, calling: str) -> Admission:
        if allowed:
            return Admission(allowed, known)
        why = (f"node AE {calling!r} is allowed nothing" if known else
               f"calling AE {calling!r} is not a node calling from its host, and "
               "dimse_unknown_ae is []")
        return Admission(allowed, known, REJECT_CALLING, why)


def operation_of(command_field: int) -> str | None:
    """The operation a DIMSE request is (None: not one the policy covers)."""
    return _OPERATIONS.get(command_field)


def refusal(allowed: frozenset[str], command_field: int) -> str | None:
    """Why a request is refused under ``allowed``, or None when it may run."""
    op = operation_of(command_field)
    if op is None or op in allowed:
        return None
    return f"{op} is not allowed for this AE (allowed: {', '.join(sorted(allowed)) or 'nothing'})"


def build_policy(settings: Settings, nodes: Iterable[NodeConfig]) -> DimsePolicy:
    """The policy for ``nodes`` (the TOML's and the registered ones): their
    hosts resolved here, once (a name that does not resolve matches no
    address, so that AE is treated as unknown)."""
    by_aet: dict[str, list[tuple[frozenset[Address], frozenset[str]]]] = {}
    resolved: dict[str, frozenset[Address]] = {}
    for node in nodes:
        if node.host not in resolved:
            resolved[node.host] = _resolve(node.host)
        by_aet.setdefault(node.aet, []).append((resolved[node.host], frozenset(node.allow)))
    called = None
    if settings.check_called_ae:
        called = frozenset({settings.ae_title, settings.move_destination})
    return DimsePolicy({aet: tuple(v) for aet, v in by_aet.items()},
                       frozenset(settings.dimse_unknown_ae), called)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _resolve(host: str) -> frozenset[Address]:
    literal = _address(host.strip("[]"))
    if literal is not None:
        return frozenset({literal})
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset()
    found = (_address(str(info[4][0])) for info in infos)
    return frozenset(a for a in found if a is not None)

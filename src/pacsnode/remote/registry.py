"""The registry of remote DICOM nodes: those of the TOML file (``[nodes.NAME]``)
and those added at run time, kept in the index database table ``nodes``.

It is the one registry: the REST API edits it, the C-MOVE SCP looks its
destinations up in it (``Node.remote_nodes`` / ``Node.node_by_aet``), the
retrieve jobs find their peers in it.  Every ``pacsnode serve`` sharing the
database sees a change at once.

A runtime entry with the name of a TOML node overrides it (``source`` is
then ``"runtime"`` and ``overrides_config`` true); deleting that entry brings
the TOML one back.  A node that exists only in the TOML file cannot be
deleted through the registry: it is edited in the file.

A runtime entry carries the access keys of a TOML node too (DESIGN.md §8):
``allow`` (what its AE may do when it calls us from its host) and ``tls``
(our associations to it use DICOM TLS), in the columns of the same names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..config import DIMSE_OPERATIONS, stored_allow
from ..errors import PacsnodeError
from ..index.schema import nodes as nodes_table
from ..node import Node

__all__ = ["RegisteredNode", "InvalidNode", "ConfiguredNode", "list_nodes", "get_node",
           "put_node", "delete_node", "check_name", "check_aet", "check_host", "check_port",
           "check_allow"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]%]{1,253}$")


class InvalidNode(PacsnodeError):
    """A node name, AE title, host or port that cannot be right (HTTP 400)."""

    http_status = 400


class ConfiguredNode(PacsnodeError):
    """The node comes from the configuration file; the registry cannot remove it."""

    http_status = 409


@dataclass(frozen=True)
class RegisteredNode:
    name: str
    aet: str
    host: str
    port: int
    #: "config" (the TOML file) or "runtime" (added through the API).
    source: str
    #: A runtime entry that hides a TOML node of the same name.
    overrides_config: bool = False
    #: What its AE may do when it calls us from ``host`` (DESIGN.md §8).
    allow: tuple[str, ...] = DIMSE_OPERATIONS
    #: Our associations to it use DICOM TLS.
    tls: bool = False


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidNode(f"invalid node name {name!r}: 1-64 characters, letters, digits, "
                          "'_', '.', '-', starting with a letter or digit")
    return name


def check_aet(aet: str) -> str:
    """PS3.5 6.2 (AE): 1-16 characters of the default repertoire, no
    backslash, no control characters; leading/trailing spaces are not
    significant and are removed."""
    if not isinstance(aet, str):
        raise InvalidNode("AE title must be a string")
    value = aet.strip(" ")
    if not value:
        raise InvalidNode("AE title is empty")
    if len(value) > 16:
        raise InvalidNode(f"AE title {value!r} is longer than 16 characters")
    bad = [c for c in value if c == "\\" or ord(c) < 0x20 or ord(c) > 0x7E]
    if bad:
        raise InvalidNode(f"AE title {value!r} has a character not allowed in an AE title "
                          f"({bad[0]!r}: backslash, control and non-ASCII characters are not)")
    return value


def check_host(host: str) -> str:
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise InvalidNode(f"invalid host {host!r}: a host name or an IP address")
    return host


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidNode(f"invalid port {port!r}: an integer from 1 to 65535")
    return port


def check_allow(allow: Iterable[str]) -> tuple[str, ...]:
    """The DIMSE operations of an ``allow`` list, in their usual order."""
    ops = list(allow)
    unknown = [op for op in ops if op not in DIMSE_OPERATIONS]
    if unknown:
        raise InvalidNode(f"allow: unknown DIMSE operation {str(unknown[0])[:32]!r} (use "
                          f"{', '.join(DIMSE_OPERATIONS)})")
    return tuple(op for op in DIMSE_OPERATIONS if op in ops)


def list_nodes(node: Node) -> list[RegisteredNode]:
    """Every node, sorted by name; runtime entries win over TOML ones."""
    out = {name: RegisteredNode(name, cfg.aet, cfg.host, cfg.port, "config", allow=cfg.allow,
                                tls=cfg.tls)
           for name, cfg in node.settings.nodes.items()}
    with node.db.read() as conn:
        for row in conn.execute(select(nodes_table)).all():
            out[row.name] = RegisteredNode(row.name, row.aet, row.host, int(row.port), "runtime",
                                           overrides_config=row.name in node.settings.nodes,
                                           allow=stored_allow(row.allow), tls=bool(row.tls))
    return [out[name] for name in sorted(out)]


def get_node(node: Node, name: str) -> RegisteredNode | None:
    for entry in list_nodes(node):
        if entry.name == name:
            return entry
    return None


def put_node(node: Node, name: str, aet: str, host: str, port: int,
             allow: Iterable[str] = DIMSE_OPERATIONS,
             tls: bool = False) -> tuple[RegisteredNode, bool]:
    """Create or replace the runtime entry ``name``; True when it was new."""
    name, aet, host, port = check_name(name), check_aet(aet), check_host(host), check_port(port)
    ops = check_allow(allow)
    values: dict[str, object] = dict(aet=aet, host=host, port=port, allow=json.dumps(ops),
                                     tls=bool(tls))
    for attempt in range(3):
        try:
            with node.db.write() as conn:
                exists = conn.execute(select(nodes_table.c.name)
                                      .where(nodes_table.c.name == name)).first() is not None
                if exists:
                    conn.execute(update(nodes_table).where(nodes_table.c.name == name)
                                 .values(**values))
                else:
                    conn.execute(insert(nodes_table).values(name=name, **values))
            break
        except IntegrityError:  # a concurrent PUT of the same name: look again
            if attempt == 2:
                raise
    return (RegisteredNode(name, aet, host, port, "runtime",
                           overrides_config=name in node.settings.nodes, allow=ops,
                           tls=bool(tls)), not exists)


def delete_node(node: Node, name: str) -> RegisteredNode | None:
    """Remove the runtime entry ``name``; return the TOML node now in effect
    under that name, if any.  Raises ``ConfiguredNode`` for a TOML-only node
    and ``LookupError`` for an unknown one."""
    with node.db.write() as conn:
        removed = conn.execute(delete(nodes_table).where(nodes_table.c.name == name)).rowcount
    if removed:
        cfg = node.settings.nodes.get(name)
        return RegisteredNode(name, cfg.aet, cfg.host, cfg.port, "config", allow=cfg.allow,
                              tls=cfg.tls) if cfg else None
    if name in node.settings.nodes:
        raise ConfiguredNode(f"node {name!r} is defined in the configuration file "
                             "([nodes." + name + "]); change it there")
    raise LookupError(name)

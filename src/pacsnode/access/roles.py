"""Roles and permissions, as data (DESIGN.md §8).

Five roles, each including the ones before it.  A *permission* names a kind
of work ("query", "store", "delete", "remote" …) and the least role that may
do it.  The HTTP route table (:mod:`pacsnode.access.policy`) maps each route
to a permission; the DIMSE side can map its operations to the same names.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Role", "PERMISSIONS", "PUBLIC", "role_named", "highest_role"]


class Role(IntEnum):
    READER = 1
    WRITER = 2
    EDITOR = 3
    OPERATOR = 4
    ADMIN = 5

    @property
    def label(self) -> str:
        return self.name.lower()


#: The permission of routes that need no credentials.
PUBLIC = "public"

#: Permission → the least role that holds it.
PERMISSIONS: dict[str, Role] = {
    # reader: see what the archive holds
    "query": Role.READER,        # QIDO-RS, UPS search, series lists, changes, statistics
    "retrieve": Role.READER,     # WADO-RS/URI, metadata, rendered, thumbnails, tags, zip
    "ui": Role.READER,           # data the UI shows (summaries, classification)
    # writer: add to it
    "store": Role.WRITER,        # STOW-RS, upload
    "worklist": Role.WRITER,     # UPS create, update, state, cancel, subscriptions
    # editor: change or remove what is there
    "delete": Role.EDITOR,
    "modify": Role.EDITOR,       # server-side modify / anonymize
    # operator: talk to other nodes, run the machinery
    "remote": Role.OPERATOR,     # remote nodes: register, echo, find, retrieve, proxy
    "jobs": Role.OPERATOR,
    "export": Role.OPERATOR,
    "routes": Role.OPERATOR,
    "cmd": Role.OPERATOR,        # /api/v1/cmd (pfdcm)
    # admin: who may do what, and who did
    "tokens": Role.ADMIN,
    "audit": Role.ADMIN,
}


def role_named(name: str) -> Role | None:
    """The role called ``name`` (case-insensitive), or None."""
    try:
        return Role[name.strip().upper()]
    except (KeyError, AttributeError):
        return None


def highest_role(names: object) -> Role | None:
    """The highest known role among ``names`` (a list of strings, or one
    string of space- or comma-separated names); unknown names are ignored."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    if not isinstance(names, (list, tuple, set)):
        return None
    roles = [r for r in (role_named(n) for n in names if isinstance(n, str)) if r is not None]
    return max(roles) if roles else None

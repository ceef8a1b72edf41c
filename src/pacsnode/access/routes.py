"""HTTP routes of access control and audit: who am I, and the audit trail.

Their access is in the one table (access/policy.py) like every other route:
``/api/v1/me`` for any role, ``/api/v1/audit`` for admins.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from ..audit import AuditTrail, list_events
from ..web.api import ApiRoute

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["access"], route_class=ApiRoute)


class Me(BaseModel):
    """Who the request's credential says the caller is."""

    auth: Literal["on", "off"]
    #: Token name or OIDC subject; "" with auth off.
    user: str
    #: "token", "oidc", or "none" (auth off).
    kind: str
    #: reader … admin; null with auth off (everything is open).
    role: str | None


class AuditEventOut(BaseModel):
    seq: int
    time: str
    event: str
    outcome: int
    user: str
    address: str
    studies: list[str]
    patients: list[str]
    detail: dict[str, Any]


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next: int


@router.get("/me", response_model=Me, summary="The caller's identity and role")
def me(request: Request) -> Me:
    principal = request.scope.get("state", {}).get("principal")
    settings = request.app.state.node.settings
    if principal is None or principal.kind == "none":
        return Me(auth=settings.auth, user="", kind="none", role=None)
    return Me(auth=settings.auth, user=principal.name, kind=principal.kind,
              role=principal.role.label if principal.role else None)


@router.get("/audit", response_model=AuditPage, summary="The audit trail (admin)",
            responses={400: {"description": "since or limit out of range"}})
def get_audit(request: Request,
              since: int = Query(0, ge=0, description="Events with a seq above this."),
              limit: int = Query(100, ge=1, le=1000, description="At most this many.")
              ) -> AuditPage:
    """Security-relevant events in the order they were recorded (DESIGN.md
    §8): `event` is the PS3.15 A.5 event name, `outcome` the
    EventOutcomeIndicator (0, 4, 8, 12).  Continue with `since=<next>`.
    Reading it is itself an event (Audit Log Used)."""
    trail: AuditTrail = request.app.state.audit
    trail.flush()
    events, last = list_events(request.app.state.node.db, since, limit)
    return AuditPage(events=[AuditEventOut(**e) for e in events], next=last)

"""What the DIMSE associations (``dimse/association.py``) ask about
access control: the DIMSE policy of the node as it is now
(``access/dimse.py``, rebuilt from the registry at most every
:data:`POLICY_SECONDS`, off the event loop), the logging and auditing of
each refusal, and the DIMSE audit events (``dimse_audit``).

The server calls it at few points (see the hooks named in
``Association.admit`` and ``Association.refusal``): once per
association and once per operation, never per PDU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from ..node import Node
from .dimse import Admission, DimsePolicy, build_policy, operation_of, refusal
from .dimse_audit import DimseAudit

__all__ = ["DimseGate", "POLICY_SECONDS"]

log = logging.getLogger("pacsnode.dimse")

#: Seconds a policy built from the registry is used before it is built again
#: (a node registered, changed or removed counts within this time).
POLICY_SECONDS = 2.0


class DimseGate:
    def __init__(self, node: Node, audit: DimseAudit | None) -> None:
        self.node = node
        self.audit = audit
        self._policy: DimsePolicy | None = None
        self._built = 0.0

    def _build(self) -> DimsePolicy:
        return build_policy(self.node.settings, self.node.remote_nodes().values())

    async def policy(self, run: Callable[[Callable[[], DimsePolicy]], Awaitable[DimsePolicy]]
                     ) -> DimsePolicy:
        """The current policy; ``run`` runs the rebuild off the loop."""
        now = time.monotonic()
        if self._policy is None or now - self._built > POLICY_SECONDS:
            self._policy = await run(self._build)
            self._built = now
        return self._policy

    async def admit(self, run: Callable[[Callable[[], DimsePolicy]], Awaitable[DimsePolicy]],
                    calling: str, called: str, address: str,
                    port: int) -> Admission:
        """The admission of an association; a rejection is logged and audited."""
        admission = (await self.policy(run)).admit(calling, called, address)
        if admission.rejection is not None:
            log.warning("association from %s at %s:%s refused by the DIMSE policy: %s",
                        calling, address, port, admission.reason)
            if self.audit is not None:
                self.audit.rejected(calling, called, address, admission.reason)
        return admission

    def refused(self, admission: Admission, seen: set[str], command_field: int,
                calling: str, address: str) -> str | None:
        """Why this request is refused (status 0x0124), or None.  Each kind
        of refused operation is logged and audited once per association."""
        why = refusal(admission.allowed, command_field)
        if why is None:
            return None
        op = operation_of(command_field) or ""
        if op not in seen:
            seen.add(op)
            log.warning("DIMSE %s from %s at %s refused: %s", op, calling, address, why)
            if self.audit is not None:
                self.audit.refused(calling, address, op, why)
        return why

    def over_limit(self, calling: str, called: str, address: str, reason: str) -> None:
        """An association rejected for an association limit (the caller
        logs it): audited like a refusal of the policy."""
        if self.audit is not None:
            self.audit.rejected(calling, called, address, reason)

    def tls_refused(self, address: str, reason: str) -> None:
        """A DICOM TLS handshake that failed (no or an untrusted certificate)."""
        if self.audit is not None:
            self.audit.refused("", address, "TLS handshake", reason)

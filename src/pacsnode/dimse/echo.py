"""Verification SCP (PS3.4 A): a C-ECHO is answered with success."""

from __future__ import annotations

import logging

from .. import metrics
from . import messages as m
from .handle import AssociationHandle
from .negotiation import VERIFICATION

log = logging.getLogger("pacsnode.dimse")

__all__ = ["c_echo"]


async def c_echo(assoc: AssociationHandle, context_id: int, command: m.Command) -> None:
    log.info("C-ECHO from %s", assoc.origin.describe())
    metrics.operation("dimse", "echo", "ok", 0.0)
    await assoc.send(context_id, m.response(
        m.C_ECHO_RSP, command, 0x0000,
        affected_sop_class=command.affected_sop_class or VERIFICATION))

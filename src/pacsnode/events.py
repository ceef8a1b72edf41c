"""Events emitted after the index commits: stores and deletes.

Handlers are notified in the emitting thread, after commit; a failing
handler is logged and never undoes the write."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pacsnode.events")

__all__ = ["Origin", "Event", "EventBus"]


@dataclass(frozen=True)
class Origin:
    """Who brought an instance or asked for a change."""

    protocol: str  # "dimse", "stow", "import", "api", "check"
    peer_aet: str = ""
    address: str = ""
    called_aet: str = ""

    def describe(self) -> str:
        parts = [self.protocol]
        if self.peer_aet:
            parts.append(self.peer_aet)
        if self.address:
            parts.append(self.address)
        return "/".join(parts)


@dataclass(frozen=True)
class Event:
    action: str  # "stored", "replaced", "deleted"
    level: str  # "instance", "series", "study"
    study_uid: str
    series_uid: str = ""
    instance_uid: str = ""
    origin: Origin | None = None
    patient_id: str = ""
    seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        #: Some handler may wait (on the database, the network): an emitter
        #: that must not wait (the DIMSE event loop) emits on another thread.
        self.blocking = False

    def subscribe(self, handler: Callable[[Event], None], *, blocking: bool = False) -> None:
        with self._lock:
            self._handlers.append(handler)
            self.blocking = self.blocking or blocking

    def emit(self, event: Event) -> None:
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception:  # a listener must never break ingest
                log.exception("event handler %r failed on %s", handler, event)

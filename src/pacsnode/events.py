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
        #: (handler, may it wait, which events it would wait on: None, all).
        self._handlers: list[tuple[Callable[[Event], None], bool,
                                   Callable[[Event], bool] | None]] = []
        self._lock = threading.Lock()
        #: Some handler may wait (on the database, the network): an emitter
        #: that must not wait (the DIMSE event loop) asks ``must_wait``.
        self.blocking = False

    def subscribe(self, handler: Callable[[Event], None], *, blocking: bool = False,
                  wants: Callable[[Event], bool] | None = None) -> None:
        """``blocking``: the handler may wait.  ``wants``: a quick test of
        whether it has anything to do for an event (None: every event);
        an emitter that must not wait skips it for the others."""
        with self._lock:
            self._handlers.append((handler, blocking, wants))
            self.blocking = self.blocking or blocking

    def must_wait(self, event: Event) -> bool:
        """Whether some handler that may wait wants ``event``: if not, an
        emitter that must not wait can ``emit(event, waiting=False)`` where
        it is, rather than hand it to another thread (~0.05 ms of a small
        instance's C-STORE, most of whose events the arrival throttle of
        the automation lets by)."""
        return any(blocking and (wants is None or wants(event))
                   for _, blocking, wants in self._handlers)

    def emit(self, event: Event, *, waiting: bool = True) -> None:
        """Call the handlers; with ``waiting=False`` only those that never
        wait (``must_wait`` said the others want nothing of it)."""
        for handler, blocking, _ in list(self._handlers):
            if blocking and not waiting:
                continue
            try:
                handler(event)
            except Exception:  # a listener must never break ingest
                log.exception("event handler %r failed on %s", handler, event)

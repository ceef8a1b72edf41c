"""Security Alerts of refusals, bounded (DESIGN.md §8, docs/SECURITY.md):
a flood of refused associations must not become a flood of audit rows and
syslog messages.

Alerts are grouped by (address, user, request and reason).  The first of a
group is recorded at once; those that follow within :data:`ALERT_WINDOW`
seconds are counted, and recorded as one event when the window ends (its
``detail`` says ``count``, and the ``until`` time of the last one); the
next window starts then.  A group quiet for a whole window is forgotten, so
its next alert is recorded at once again.

An address that keeps changing what it sends (another calling AE title on
each association, say) could still make a group per attempt: beyond
:data:`GROUPS_PER_ADDRESS` groups at once, its further alerts go into one
group of that address ("other refusals"), and beyond :data:`MAX_GROUPS`
groups in all, into one group for every address.  So each DIMSE process
records at most ``2 * (MAX_GROUPS + 1)`` alerts per window, and every
refusal is counted in one of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from ..audit import AuditEvent

__all__ = ["AlertThrottle", "ALERT_WINDOW", "GROUPS_PER_ADDRESS", "MAX_GROUPS"]

#: Seconds during which the alerts of one group after the first are counted
#: rather than recorded one by one.
ALERT_WINDOW = 60.0
#: Groups one address may have at once before its alerts are folded into one.
GROUPS_PER_ADDRESS = 8
#: Groups in all before every further alert is folded into one.
MAX_GROUPS = 1024

#: The reason of a folded group.
_FOLDED_ADDRESS = "further refusals from this address (more kinds than are recorded apart)"
_FOLDED_ALL = "further refusals (from more addresses than are recorded apart)"

Key = tuple[str, str, str, str]


@dataclass
class _Group:
    #: When its last event was recorded (monotonic): its window's start.
    recorded: float
    #: Alerts counted since, not yet recorded: their number, the first one
    #: (whose event is recorded for them all) and the wall time of the last.
    count: int = 0
    first: AuditEvent | None = None
    last_time: float = 0.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


class AlertThrottle:
    """Records Security Alerts through ``record`` (``AuditTrail.record``),
    at most one per group and window.  ``clock`` is monotonic seconds;
    with ``background`` a thread calls :meth:`tick` when a window ends
    (without, the caller does)."""

    def __init__(self, record: Callable[[AuditEvent], None], window: float = ALERT_WINDOW,
                 clock: Callable[[], float] = time.monotonic, background: bool = True) -> None:
        self._record = record
        self.window = window
        self._clock = clock
        self._background = background
        self._groups: dict[Key, _Group] = {}
        self._per_address: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def alert(self, event: AuditEvent) -> None:
        """A refusal: recorded now, or counted for its group's next record."""
        with self._lock:
            if self._closed:
                due = [event]
            else:
                due = self._add(event, self._clock())
        for e in due:
            self._record(e)

    def _add(self, event: AuditEvent, now: float) -> list[AuditEvent]:
        key, event = self._key(event)
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = _Group(recorded=now)
            self._per_address[key[0]] = self._per_address.get(key[0], 0) + 1
            self._start()  # to forget the group after its window
            event.detail["count"] = 1
            return [event]
        group.count += 1
        group.last_time = event.time
        if group.first is None:
            group.first = event
        return []

    def _key(self, event: AuditEvent) -> tuple[Key, AuditEvent]:
        """The group of ``event`` (and the event as that group records it)."""
        detail = event.detail
        key = (event.address, event.user, str(detail.get("request", "")),
               str(detail.get("reason", "")))
        if key in self._groups:
            return key, event
        if len(self._groups) >= MAX_GROUPS:
            return self._folded(event, "", _FOLDED_ALL)
        if self._per_address.get(event.address, 0) >= GROUPS_PER_ADDRESS:
            return self._folded(event, event.address, _FOLDED_ADDRESS)
        return key, event

    @staticmethod
    def _folded(event: AuditEvent, address: str, reason: str) -> tuple[Key, AuditEvent]:
        detail = {"request": "refusals", "reason": reason,
                  "protocol": event.detail.get("protocol", "")}
        return (address, "", "refusals", reason), replace(event, user="", address=address,
                                                          detail=detail)

    # -- the windows' ends (one thread, started with the first group)

    def _start(self) -> None:
        """Have the thread look at the windows (started the first time)."""
        if not self._background:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pacsnode-alerts",
                                            daemon=True)
            self._thread.start()
        elif not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            wait = self.tick()
            self._wake.wait(wait)
            self._wake.clear()

    def tick(self) -> float:
        """Record the counted alerts of the windows that ended; the seconds
        to the next window end."""
        with self._lock:
            if self._closed:
                return self.window
            due, wait = self._due(self._clock())
        for e in due:
            self._record(e)
        return wait

    def _due(self, now: float) -> tuple[list[AuditEvent], float]:
        """The counted alerts of windows that ended (the groups quiet for
        a whole window forgotten), and the seconds to the next window end."""
        due: list[AuditEvent] = []
        wait = self.window
        for key, group in list(self._groups.items()):
            ends = group.recorded + self.window
            if ends > now:
                wait = min(wait, ends - now)
            elif group.first is not None:
                due.append(self._summary(group))
                self._groups[key] = _Group(recorded=now)
            else:
                del self._groups[key]
                left = self._per_address.get(key[0], 1) - 1
                if left:
                    self._per_address[key[0]] = left
                else:
                    self._per_address.pop(key[0], None)
        return due, max(0.05, wait)

    @staticmethod
    def _summary(group: _Group) -> AuditEvent:
        assert group.first is not None
        first = group.first
        detail = dict(first.detail, count=group.count)
        if group.count > 1:
            detail["until"] = _iso(group.last_time)
        return replace(first, detail=detail)

    def close(self) -> None:
        """Record every counted alert now (at shutdown)."""
        with self._lock:
            self._closed = True
            due = [self._summary(g) for g in self._groups.values() if g.first is not None]
            self._groups.clear()
            self._per_address.clear()
        self._wake.set()
        for e in due:
            self._record(e)
        if self._thread is not None:
            self._thread.join(5)

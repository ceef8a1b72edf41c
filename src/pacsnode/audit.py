"""The audit trail (DESIGN.md §8): security-relevant events, recorded in
the index table ``audit`` as DICOM audit events (PS3.15 A.5) and, with
``audit_syslog``, sent as RFC 5424 messages whose body is the A.5.1 audit
message XML (:mod:`pacsnode.audit_xml`).

Events are queued by the request that causes them and written by one
thread in batches (at most :data:`FLUSH_SECONDS` later): a QIDO or WADO
request never waits on a write.  The patients of the studies an event
names are looked up by that thread.  Reading the trail
(:func:`list_events`) first writes what is queued.  Rows are only ever
inserted: nothing in pacsnode updates or deletes them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

from sqlalchemy import bindparam, insert, select

from .index.access_tables import audit
from .index.db import Database, RawStatement
from .index.feeds import settled
from .index.schema import patients, studies

if TYPE_CHECKING:
    from .access.policy import Rule

__all__ = ["AuditEvent", "AuditTrail", "list_events", "EVENTS", "outcome_for_status"]

log = logging.getLogger("pacsnode.audit")

#: The PS3.15 A.5 event names used in the trail, exactly.
EVENTS = ("Application Activity", "User Authentication", "DICOM Instances Accessed",
          "DICOM Instances Transferred", "DICOM Study Deleted", "Query", "Export", "Import",
          "Security Alert", "Audit Log Used")

#: Seconds between writes of the queued events.
FLUSH_SECONDS = 0.5

#: Permission of an HTTP route (access/roles.py) → the event its use records.
EVENT_OF_PERMISSION = {
    "query": "Query",
    "retrieve": "DICOM Instances Accessed",
    "ui": "DICOM Instances Accessed",
    "store": "Import",
    "delete": "DICOM Study Deleted",
    "modify": "DICOM Instances Accessed",
    "export": "Export",
    "audit": "Audit Log Used",
}
#: Routes whose use is not an event (polled often, and they show no patient).
NOT_AUDITED = frozenset({"/api/v1/me", "/api/v1/changes", "/api/v1/changes/latest",
                         "/api/v1/changes/stream", "/api/v1/statistics", "/metrics"})
#: Routes that name their instance in the query string (WADO-URI):
#: (query parameter, path parameter name) pairs.
_WADO_URI_KEYS = (("studyUID", "study"), ("seriesUID", "series"), ("objectUID", "instance"))
_QUERY_NAMED = {"/wado": _WADO_URI_KEYS, "/dicomweb": _WADO_URI_KEYS}
#: Query parameters that page rather than match: left out of the keys.
_PAGING = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


def outcome_for_status(status: int) -> int:
    """EventOutcomeIndicator of an HTTP answer: 0 success, 4 minor failure
    (the request was refused), 8 serious failure (the node failed)."""
    if status < 400:
        return 0
    return 4 if status < 500 else 8


#: Study URLs in a STOW-RS answer (RetrieveURL of the study and instances).
_STUDY_URL = re.compile(r"/studies/([0-9][0-9.]{0,63})(?=[/\"])")
#: Most bytes of a STOW-RS answer kept to find its studies.
_BODY_MAX = 1 << 20


@dataclass
class RequestNote:
    """What the access middleware notes of a request for its audit event."""

    keep_body: bool = False
    status: int = 500
    started: float = field(default_factory=time.time)
    patients: list[str] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def add_body(self, chunk: bytes) -> None:
        if len(self.body) < _BODY_MAX:
            self.body += chunk[:_BODY_MAX - len(self.body)]


class _Answered(NamedTuple):
    """An answered HTTP request, as the access middleware leaves it for the
    writer thread to make its event of (``_event_of``)."""

    method: str
    path: str
    query_string: bytes
    address: str
    rule: Rule
    user: str
    note: RequestNote


@dataclass
class AuditEvent:
    event: str
    outcome: int = 0
    user: str = ""
    address: str = ""
    studies: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class AuditTrail:
    """Queue + writer thread for one process.  ``syslog`` is an
    :class:`pacsnode.audit_syslog.SyslogSender` or None."""

    def __init__(self, db: Database, *, ae_title: str = "PACSNODE", syslog: Any = None) -> None:
        self.db = db
        self.ae_title = ae_title
        self.syslog = syslog
        #: Events, and answered requests whose event the writer makes.
        self._queue: deque[AuditEvent | _Answered] = deque()
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._insert: RawStatement | None = None  # compiled on the first write

    # ------------------------------------------------------------- recording

    def record(self, event: AuditEvent) -> None:
        if self._closed:
            self._write([event])
            return
        self._enqueue(event)

    def _enqueue(self, item: "AuditEvent | _Answered") -> None:
        self._queue.append(item)  # (a deque's append needs no lock)
        if not self._pending.is_set():
            self._pending.set()
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pacsnode-audit",
                                                daemon=True)
                self._thread.start()

    def wants(self, rule: Rule) -> bool:
        """Whether answering a request under ``rule`` (access/policy.py) is an event."""
        return rule.permission in EVENT_OF_PERMISSION and rule.template not in NOT_AUDITED

    def begin(self, scope: Mapping[str, Any], rule: Rule) -> "RequestNote":
        """Before the request runs: what its event will need that the
        request itself may remove (the patients of a study being deleted)."""
        note = RequestNote(keep_body=rule.permission == "store")
        if rule.permission == "delete":
            # Events still queued name their patients through the study's
            # row, which this request may remove: write them first.
            self.flush()
            study = _path_params(rule, scope["path"]).get("study")
            if study:
                note.patients = self._patients_of([study]).get(study, [])
        return note

    def request(self, scope: Mapping[str, Any], rule: Rule, principal: Any,
                note: "RequestNote") -> None:
        """An answered HTTP request under ``rule``: its event is made by the
        writer thread (~10 µs that were the request's, of a ~1.2 ms QIDO)."""
        answered = _Answered(scope["method"], scope["path"], scope.get("query_string", b""),
                             _address(scope), rule, principal.name, note)
        if self._closed:
            self._write([_event_of(answered)])
        else:
            self._enqueue(answered)

    def security_alert(self, scope: Mapping[str, Any], user: str, reason: str) -> None:
        """A refused credential (401) or a refused request (403)."""
        self.record(AuditEvent("Security Alert", 4, user, _address(scope),
                               detail={"request": f"{scope['method']} {scope['path']}",
                                       "reason": reason}))

    def application(self, what: str, outcome: int = 0, **detail: Any) -> None:
        """Application Activity: ``what`` is "start" or "stop"."""
        self.record(AuditEvent("Application Activity", outcome, self.ae_title,
                               detail={"activity": what, **detail}))

    # ------------------------------------------------------------- writing

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._pending.wait()
            self._stopping.wait(FLUSH_SECONDS)  # gather a batch
            self._pending.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (the reader of the trail sees it)."""
        with self._write_lock:
            events = []
            while self._queue:
                item = self._queue.popleft()
                try:
                    events.append(item if isinstance(item, AuditEvent) else _event_of(item))
                except Exception:  # one odd request must not cost the batch
                    log.exception("could not make the audit event of %s", item)
            self._write(events)

    def _write(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        events = _coalesce(events)
        with self._write_lock:  # re-entrant: flush holds it too
            try:
                self._fill_patients(events)
                rows = [dict(time=e.time, event=e.event, outcome=e.outcome, user=e.user,
                             address=e.address, studies=_json_list(e.studies),
                             patients=_json_list(e.patients),
                             detail=_json_detail(e.detail)) for e in events]
                if self._insert is None:
                    self._insert = RawStatement(
                        insert(audit).values({name: bindparam(name) for name in rows[0]}),
                        self.db.engine)
                with self.db.raw_write() as cur:
                    self._insert.insert_many(cur, rows)
            except Exception:  # the trail must not break serving; say so loudly
                log.exception("could not record %d audit events", len(events))
            if self.syslog is not None:
                for e in events:
                    self.syslog.send(e, self.ae_title)

    def _fill_patients(self, events: list[AuditEvent]) -> None:
        wanted = {s for e in events if not e.patients for s in e.studies}
        if not wanted:
            return
        found = self._patients_of(sorted(wanted))
        for e in events:
            if not e.patients:
                e.patients = sorted({p for s in e.studies for p in found.get(s, [])})

    def _patients_of(self, study_uids: list[str]) -> dict[str, list[str]]:
        stmt = (select(studies.c.studyinstanceuid, patients.c.patientid)
                .join(patients, patients.c.id == studies.c.patient_fk)
                .where(studies.c.studyinstanceuid.in_(study_uids)))
        with self.db.read() as conn:
            return {row[0]: [row[1]] for row in conn.execute(stmt)}

    def close(self) -> None:
        """Write everything queued and stop the thread."""
        self._closed = True
        self._stopping.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()
        if self.syslog is not None:
            self.syslog.close()


def _event_of(answered: _Answered) -> AuditEvent:
    """The event of an answered request: what it asked for and of which study."""
    rule, note = answered.rule, answered.note
    params = _path_params(rule, answered.path)
    if rule.template in _QUERY_NAMED:  # WADO-URI names its instance in the query
        query = dict(parse_qsl(answered.query_string.decode("latin-1")))
        params.update({name: query[key] for key, name in _QUERY_NAMED[rule.template]
                       if query.get(key)})
    detail: dict[str, Any] = {"request": f"{answered.method} {answered.path}",
                              "status": note.status}
    event = EVENT_OF_PERMISSION[rule.permission]
    if event == "Query":
        keys = parse_qsl(answered.query_string.decode("latin-1"), keep_blank_values=True)
        detail["keys"] = {k: v for k, v in keys if k not in _PAGING}
    for name in ("series", "instance"):
        if params.get(name):
            detail[name] = params[name]
    studies_ = [params["study"]] if params.get("study") else []
    if note.keep_body:  # STOW-RS: the studies stored are in the answer's URLs
        found = _STUDY_URL.findall(bytes(note.body).decode("latin-1"))
        studies_ = sorted(set(studies_) | set(found))
    return AuditEvent(event, outcome_for_status(note.status), answered.user, answered.address,
                      studies_, list(note.patients), detail=detail, time=note.started)


def _coalesce(events: list[AuditEvent]) -> list[AuditEvent]:
    """One "DICOM Instances Accessed" event per user, address, outcome and
    study within a batch: a viewer loading a series asks for each frame,
    and the trail should say who saw which study, not count frames.  The
    first request is kept in ``detail``, with the number of requests."""
    out: list[AuditEvent] = []
    seen: dict[tuple[Any, ...], AuditEvent] = {}
    for e in events:
        if e.event != "DICOM Instances Accessed":
            out.append(e)
            continue
        key = (e.outcome, e.user, e.address, tuple(e.studies))
        first = seen.get(key)
        if first is None:
            seen[key] = e
            e.detail.setdefault("requests", 1)
            out.append(e)
        else:
            first.detail["requests"] += 1
    return out


#: ``json.dumps(detail, default=str)`` without making an encoder per call
#: (``dumps`` makes one whenever it is given an option).
_json_detail = json.JSONEncoder(default=str).encode


def _json_list(values: list[str]) -> str:
    return json.dumps(values) if values else "[]"


def _address(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _path_params(rule: Rule, path: str) -> dict[str, str]:
    match = rule.regex.match(path)
    return {k: v for k, v in match.groupdict().items() if v} if match else {}


def list_events(db: Database, since: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """Events with seq > ``since``, in order, at most ``limit``; and the last
    seq returned (``since`` when none)."""
    stmt = select(audit).where(audit.c.seq > since).order_by(audit.c.seq).limit(limit)
    with db.read() as conn:
        rows = settled(conn.execute(stmt).all(), since, time.time(), written_at="time",
                       grace=GAP_GRACE_SECONDS)
    events = [{"seq": int(r.seq), "time": _iso(r.time), "event": r.event,
               "outcome": int(r.outcome), "user": r.user, "address": r.address,
               "studies": json.loads(r.studies), "patients": json.loads(r.patients),
               "detail": json.loads(r.detail)} for r in rows]
    return events, (events[-1]["seq"] if events else since)


#: A gap in ``seq`` younger than this may still fill (``index.feeds.settled``).
GAP_GRACE_SECONDS = 10.0


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")



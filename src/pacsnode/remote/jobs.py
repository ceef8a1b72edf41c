"""Retrieve jobs: the gateway pulls a study or series from a remote node into
our own archive, in the background, with progress anyone can read.

A job is a row of the ``jobs`` table (``pacsnode.index.jobs_tables``), in the
database every ``pacsnode serve`` of a deployment shares.  ``submit`` adds a
pending row; worker threads inside ``serve`` (``start(node)``, called by
``serve`` at start-up) claim pending rows atomically and run them:

- ``method="move"``: C-MOVE to our own AE title (``settings.move_destination``:
  ``cluster_ae_title``, or ``ae_title`` when that is empty).  The peer must
  know that title (its modality list); the instances arrive at our C-STORE
  SCP, i.e. through the one ingest path.
- ``method="get"``: C-GET on one association; each instance received is
  handed to ``node.ingestor`` (written Part 10 into the store's temp area,
  or, when it comes as a file already there, that file renamed into the store).

A job row holds everything needed to run it (§12): the peer's AE title and
address as the registry had them when the job was made, and the destination
AE title of that moment — so whichever ``serve`` of a cluster claims it, the
peer is asked the same thing.

Every C-MOVE/C-GET response updates ``completed``/``failed``/``warning``/
``remaining`` of the row.  A SERIES job without a Study Instance UID first
asks the peer for it with a C-FIND (a retrieve in the Study Root model needs
it).  The job ends ``succeeded``, ``failed`` (with a reason in ``error``:
the peer refused, nothing matched, some instances failed …) or ``canceled``.

Claiming, the lease and the end of a job are the job runner's
(``runner.py``: ``UPDATE jobs SET state='running', owner=<me> WHERE id=… AND
state='pending'`` — one process wins, on SQLite and PostgreSQL alike; the
owner renews a lease (``lease_until``) every second while the job runs);
this module says what a retrieve job does (``RetrieveWork``).

Cancelling (``request_cancel``): a pending job is canceled at once; a running
one gets ``cancel_requested``, which its owner (this process or another)
notices within a second and turns into a C-CANCEL to the peer (PS3.7
9.3.2.3 / 9.3.3.3).  The job ends ``canceled`` with the counts reached.

Restarts: a job is *not* resumed.  When ``serve`` starts, jobs left
``running`` by a dead ``serve`` on this host (its pid is gone, or it is our
own pid from an earlier life) are set ``failed`` with the reason
"interrupted by restart"; jobs of another host fail the same way once their
lease has run out (``LEASE_SECONDS``).  Retrieving again is cheap: what is
already stored is recognised as such by ingest.  Stopping ``serve``
gracefully cancels running retrieves (C-CANCEL) and fails them with
"interrupted by shutdown".
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Row, func, select, update

from ..access.tls import peer_tls
from ..errors import PacsnodeError
from ..events import Origin
from ..index.db import Database
from ..index.jobs_tables import TERMINAL_STATES, jobs
from ..leases import owner_pid
from ..node import Node
from ..runner import (LEASE_SECONDS, WORKERS, Attempt, JobFailed, JobKind, Orphan, Outcome,
                      Runner, cancel_local, claim_due, orphans, rescue, wake)
from . import scu
from .errors import RemoteError
from .peer import Peer
from .scu import Progress

__all__ = ["Job", "JobNotFound", "JobFinished", "submit", "get_job", "list_jobs",
           "latest_for_series", "request_cancel", "claim_next", "recover", "reap_expired",
           "RetrieveWork", "RETRIEVE", "start", "LEASE_SECONDS", "WORKERS"]

log = logging.getLogger("pacsnode.jobs")

#: Longest wait for one C-MOVE/C-GET response (a peer that sends no pending
#: responses must finish the whole transfer within it).
DIMSE_TIMEOUT = 600.0

#: The ``kind`` of the jobs this module runs (route jobs share the table).
KIND = "retrieve"


class JobNotFound(PacsnodeError):
    http_status = 404


class JobFinished(PacsnodeError):
    """Cancelling a job that already ended (succeeded or failed)."""

    http_status = 409


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    node: str
    level: str
    study_uid: str
    series_uid: str
    method: str
    state: str
    completed: int
    failed: int
    warning: int
    remaining: int | None
    error: str
    created: float
    updated: float
    started: float | None
    finished: float | None
    owner: str
    cancel_requested: bool
    requested_by: str
    peer_aet: str = ""
    peer_host: str = ""
    peer_port: int = 0
    destination: str = ""
    #: Route jobs (``kind == "route"``, pacsnode.routes): the route's name,
    #: attempts made so far and when the next one is due.
    route: str = ""
    attempts: int = 0
    next_try: float | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Job:
        m = row._mapping
        return cls(id=m["id"], kind=m["kind"], node=m["node"], level=m["level"],
                   study_uid=m["study_uid"], series_uid=m["series_uid"], method=m["method"],
                   state=m["state"], completed=int(m["completed"]), failed=int(m["failed"]),
                   warning=int(m["warning"]),
                   remaining=None if m["remaining"] is None else int(m["remaining"]),
                   error=m["error"] or "", created=float(m["created"]),
                   updated=float(m["updated"]), started=m["started"], finished=m["finished"],
                   owner=m["owner"] or "", cancel_requested=bool(m["cancel_requested"]),
                   requested_by=m["requested_by"] or "", peer_aet=m["peer_aet"] or "",
                   peer_host=m["peer_host"] or "", peer_port=int(m["peer_port"] or 0),
                   destination=m["destination"] or "", route=m.get("route") or "",
                   attempts=int(m.get("attempts") or 0), next_try=m.get("next_try"))

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (times as ISO 8601 UTC, empty error as None)."""
        return {
            "id": self.id, "kind": self.kind, "node": self.node, "level": self.level,
            "study_uid": self.study_uid or None, "series_uid": self.series_uid or None,
            "method": self.method, "state": self.state, "completed": self.completed,
            "failed": self.failed, "warning": self.warning, "remaining": self.remaining,
            "error": self.error or None, "created": iso(self.created),
            "updated": iso(self.updated), "started": iso(self.started),
            "finished": iso(self.finished), "owner": self.owner or None,
            "cancel_requested": self.cancel_requested,
            "requested_by": self.requested_by or None,
            "destination": self.destination or None,
            **({"route": self.route, "attempts": self.attempts,
                "next_try": iso(self.next_try)} if self.kind == "route" else {}),
        }


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------ the table

def submit(node: Node, *, node_name: str, level: str, study_uid: str = "",
           series_uid: str = "", method: str = "move", requested_by: str = "") -> Job:
    """Add a pending retrieve job and wake this process's workers."""
    level = level.upper()
    if level not in ("STUDY", "SERIES"):
        raise ValueError(f"level must be STUDY or SERIES, not {level!r}")
    if method not in ("move", "get"):
        raise ValueError(f"method must be 'move' or 'get', not {method!r}")
    peer = node.remote_nodes().get(node_name)
    now = time.time()
    job_id = uuid.uuid4().hex
    with node.db.write() as conn:
        conn.execute(jobs.insert().values(
            id=job_id, kind="retrieve", node=node_name, level=level, study_uid=study_uid or "",
            series_uid=series_uid or "", method=method, state="pending", completed=0,
            failed=0, warning=0, remaining=None, error="", created=now, updated=now,
            owner="", cancel_requested=False, requested_by=requested_by,
            peer_aet=peer.aet if peer else "", peer_host=peer.host if peer else "",
            peer_port=peer.port if peer else 0,
            destination=node.settings.move_destination))
    wake(node, KIND)
    job = get_job(node.db, job_id)
    assert job is not None
    log.info("job %s: retrieve %s %s from %s by C-%s", job_id, level,
             series_uid or study_uid, node_name, method.upper())
    return job


def get_job(db: Database, job_id: str) -> Job | None:
    with db.read() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return Job.from_row(row) if row is not None else None


def list_jobs(db: Database, *, limit: int = 100, offset: int = 0, state: str | None = None,
              node_name: str | None = None, series_uid: str | None = None) -> list[Job]:
    """Jobs, newest first."""
    stmt = select(jobs)
    if state:
        stmt = stmt.where(jobs.c.state == state)
    if node_name:
        stmt = stmt.where(jobs.c.node == node_name)
    if series_uid:
        stmt = stmt.where(jobs.c.series_uid == series_uid)
    stmt = stmt.order_by(jobs.c.created.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
    with db.read() as conn:
        return [Job.from_row(r) for r in conn.execute(stmt).all()]


def latest_for_series(db: Database, series_uid: str, node_name: str | None = None) -> Job | None:
    found = list_jobs(db, limit=1, series_uid=series_uid, node_name=node_name)
    return found[0] if found else None


def count_jobs(db: Database, state: str | None = None) -> int:
    stmt = select(func.count()).select_from(jobs)
    if state:
        stmt = stmt.where(jobs.c.state == state)
    with db.read() as conn:
        return int(conn.execute(stmt).scalar_one())


def request_cancel(node: Node, job_id: str, wait: float = 10.0) -> Job:
    """Cancel a job: a pending one at once, a running one by C-CANCEL (its
    owner, in whichever process, notices within a second).  Waits up to
    ``wait`` seconds for a running job to end and returns it as it then is.
    Cancelling a canceled job is a no-op; an ended one raises JobFinished."""
    now = time.time()
    with node.db.write() as conn:
        row = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        state = row.state
        if state == "pending":
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == "pending")
                         .values(state="canceled", error="canceled before it started",
                                 cancel_requested=True, updated=now, finished=now))
        elif state == "running":
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(cancel_requested=True, updated=now))
    if state in ("succeeded", "failed"):
        raise JobFinished(f"job {job_id} has already {state}; nothing to cancel")
    if state == "running":
        cancel_local(node, job_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = get_job(node.db, job_id)
            if job is None or job.done:
                break
            time.sleep(0.05)
    job = get_job(node.db, job_id)
    assert job is not None
    return job


def claim_next(db: Database, owner: str, lease: float = LEASE_SECONDS) -> Job | None:
    """Claim the oldest pending retrieve job for ``owner``; None when there
    is none (``runner.claim_due``: atomic across processes)."""
    row = claim_due(db, KIND, owner, lease)
    return Job.from_row(row) if row is not None else None


def recover(db: Database, me: str) -> int:
    """Fail the running jobs of dead processes on this host ("interrupted by
    restart"); return how many."""
    return rescue(db, RETRIEVE, [o for o in orphans(db, KIND, me) if o.dead])


def reap_expired(db: Database) -> int:
    """Fail running jobs whose owner stopped renewing its lease (a process
    on another host that died)."""
    return rescue(db, RETRIEVE, [o for o in orphans(db, KIND, None) if o.expired])


# ------------------------------------------------------------ running one

def _label(job: Row[Any]) -> str:
    return f"job {job.id}"


def _started(attempt: Attempt) -> None:
    job = attempt.job
    log.info("job %s: running (%s %s from %s by C-%s)", job.id, job.level,
             job.series_uid or job.study_uid, job.node, job.method.upper())


def _ended(attempt: Attempt, outcome: Outcome) -> None:
    log.info("job %s: %s%s", attempt.job.id, outcome.state,
             f" ({outcome.error})" if outcome.error else "")


def _orphaned(orphan: Orphan) -> str:
    if orphan.dead:
        pid = owner_pid(orphan.job.owner)
        return (f"interrupted by restart: the pacsnode serve process running it (pid {pid}) "
                "stopped")
    return "interrupted: the pacsnode serve process running it stopped renewing its lease"


#: Retrieve jobs are not retried nor resumed: one interrupted fails with the
#: reason (retrieving again is cheap, see above).
RETRIEVE = JobKind(KIND, log, _label, _started, _ended, _orphaned)


def _counts(p: Progress) -> dict[str, int | None]:
    return dict(completed=p.completed, failed=p.failed, warning=p.warning, remaining=p.remaining)


def _destination(node: Node, job: Job) -> str:
    """The AE title the job asks its peer to send to (and calls it from)."""
    return job.destination or node.settings.move_destination


@dataclass
class _Retrieval:
    """One attempt at a retrieve job, and what the peer said last."""

    job: Job
    attempt: Attempt
    last: Progress = field(default_factory=Progress)
    store_errors: list[str] = field(default_factory=list)


class RetrieveWork:
    """What one retrieve job does (``runner.Work``): C-MOVE or C-GET it."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def __call__(self, attempt: Attempt) -> Outcome:
        retrieval = _Retrieval(Job.from_row(attempt.job), attempt)
        try:
            state, error = self._retrieve(retrieval)
        except RemoteError as exc:
            if isinstance(exc.result, Progress):
                retrieval.last = exc.result
            state, error = "failed", self._explain(exc, retrieval)
        attempt.note(**_counts(retrieval.last))
        return Outcome(state, error)

    def _explain(self, exc: RemoteError, retrieval: _Retrieval) -> str:
        text = str(exc)
        aet = _destination(self.node, retrieval.job)
        if exc.status == 0xA801:
            text += f" — the peer does not know our AE title {aet!r} as a destination"
        elif retrieval.job.method == "move" and exc.status is not None and \
                retrieval.last.completed == 0:
            # Some peers (Orthanc) answer an unknown destination with 0xC000.
            text += (f" — if the peer does not know our AE title {aet!r} as a destination "
                     "(its modality list), it cannot send to us; method 'get' needs no "
                     "such set-up")
        return text

    def _peer(self, job: Job) -> Peer:
        # TLS as the registry says now (a config file's or a registered
        # node's ``tls``); the address as the job recorded it.
        cfg = self.node.remote_nodes().get(job.node)
        if job.peer_aet and job.peer_host and job.peer_port:
            aet, host, port = job.peer_aet, job.peer_host, job.peer_port
        else:  # a row of an earlier release, or a node unknown when it was made
            if cfg is None:
                raise JobFailed(f"unknown node {job.node!r} (not in the registry any more)")
            aet, host, port = cfg.aet, cfg.host, cfg.port
        return Peer(aet=aet, host=host, port=port, calling_aet=_destination(self.node, job),
                    timeout=30.0, dimse_timeout=DIMSE_TIMEOUT,
                    tls=peer_tls(self.node.settings, cfg is not None and cfg.tls))

    def _retrieve(self, retrieval: _Retrieval) -> tuple[str, str]:
        job, attempt = retrieval.job, retrieval.attempt
        peer = self._peer(job)
        if attempt.cancel.is_set():
            return "canceled", ""
        study_uid = job.study_uid
        if job.level == "SERIES" and not study_uid:
            hits = scu.find(peer, "SERIES", {"SeriesInstanceUID": job.series_uid},
                            defaults=False)
            study_uid = next((str(h.get("StudyInstanceUID") or "") for h in hits
                              if h.get("StudyInstanceUID")), "")
            if not study_uid:
                raise JobFailed(f"{peer} has no series {job.series_uid} (C-FIND found nothing)")
            attempt.record(study_uid=study_uid)
        keys = {"StudyInstanceUID": study_uid}
        if job.level == "SERIES":
            keys["SeriesInstanceUID"] = job.series_uid
        what = f"series {job.series_uid}" if job.level == "SERIES" else f"study {study_uid}"

        def on_progress(progress: Progress) -> None:
            retrieval.last = progress
            attempt.record(**_counts(progress))

        if job.method == "move":
            progress = scu.move(peer, job.level, keys, _destination(self.node, job),
                                cancel=attempt.cancel, on_progress=on_progress)
        else:
            origin = Origin("dimse", peer_aet=peer.aet, address=peer.host,
                            called_aet=peer.calling_aet)
            result = scu.get(peer, job.level, keys, on_store=self._sink(origin),
                             on_progress=on_progress, cancel=attempt.cancel)
            progress = result.progress
            retrieval.store_errors = result.store_errors
        retrieval.last = progress
        log.info("job %s: C-%s of %s from %s: %d completed, %d failed, %d warning", job.id,
                 job.method.upper(), what, peer, progress.completed, progress.failed,
                 progress.warning)
        return self._verdict(retrieval, peer, what)

    def _verdict(self, retrieval: _Retrieval, peer: Peer, what: str) -> tuple[str, str]:
        p = retrieval.last
        if p.cancelled:
            return "canceled", ""
        if not p.done:
            if retrieval.attempt.cancel.is_set():
                return "canceled", ""
            return "failed", f"{peer} ended the retrieve without a final response"
        if p.completed + p.failed + p.warning == 0:
            return "failed", f"{peer} holds no instances of {what} (0 sub-operations)"
        if p.failed:
            detail = "; ".join(retrieval.store_errors[:3]) or ", ".join(
                p.failed_sop_instance_uids[:3])
            return "failed", (f"{p.failed} of {p.total} instances of {what} could not be "
                              f"retrieved" + (f" ({detail})" if detail else ""))
        if retrieval.attempt.cancel.is_set():
            return "succeeded", "the cancel request came after the retrieve had finished"
        return "succeeded", ""

    def _sink(self, origin: Origin) -> Callable[[Dataset], int]:
        """C-GET store callback: each instance through the one ingest path."""
        store = self.node.store
        ingestor = self.node.ingestor

        def keep(ds: Dataset) -> int:
            filename = getattr(ds, "filename", None)
            temp: Path | None = None
            if isinstance(filename, str) and os.path.isfile(filename):
                received = Path(filename)
                if received.parent == store.incoming:
                    temp = received  # already a Part 10 file in our temp area
                else:
                    fh, temp = store.new_temp()
                    with fh, open(received, "rb") as src:
                        shutil.copyfileobj(src, fh, 1 << 20)
                    received.unlink(missing_ok=True)
            if temp is None:
                fh, temp = store.new_temp()
                with fh:
                    ds.save_as(fh, enforce_file_format=True)
            sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
            sop_uid = str(ds.get("SOPInstanceUID", "") or "")
            result = ingestor.ingest_temp(temp, origin, expected_sop=(sop_class, sop_uid))
            if result.outcome.ok:
                return 0x0000
            raise RuntimeError(result.reason or "could not store")

        return keep


def start(node: Node, workers: int = WORKERS) -> Callable[[], None]:
    """Start the job workers of ``serve``; return the function that stops them."""
    runner = Runner(node, replace(RETRIEVE, workers=workers), RetrieveWork(node))
    runner.start()
    return runner.stop

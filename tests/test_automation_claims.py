"""The pieces of the arrival automation that need no server: command
building, and the claim that lets exactly one process fire a trigger (two
Nodes on one index stand in for two `serve` processes), on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicomfiles import make_ct
from pacsnode.automation import Automation, build_command
from pacsnode.config import Settings
from pacsnode.events import Origin
from pacsnode.index.automation_tables import automation_pending as pending
from pacsnode.node import Node


def test_placeholders_are_substituted_after_splitting() -> None:
    values = {"study_uid": "1.2.3", "path": "/data/studies/1.2.3",
              "patient_id": "$(rm -rf ~); `id` {path} 'x'", "calling_aet": "A B"}
    argv = build_command("run.sh --study={study_uid} '{path}/out dir' {patient_id} "
                         "\"{calling_aet}\" {unknown} {{literal}}", values)
    assert argv == ["run.sh", "--study=1.2.3", "/data/studies/1.2.3/out dir",
                    "$(rm -rf ~); `id` {path} 'x'", "A B", "{unknown}", "{{literal}}"]


def make_node(tmp_path: Path, url: str, **settings: object) -> Node:
    data = tmp_path / "data"
    return Node(Settings(data_dir=data, database_url=url, fsync=False, **settings))


@pytest.fixture
def two_nodes(tmp_path: Path, database_url: str):
    """Two nodes (as two processes) on one index and blob store, each with
    its automation recording arrivals but not polling on its own."""
    marker = tmp_path / "fired"
    # Series are always tracked now (each is classified once stable): keep
    # their quiet period out of these study-trigger counts.
    cfg = dict(stable_study_seconds=1, stable_series_seconds=3600,
               on_stable_study=f"sh -c 'echo {{study_uid}} >> {marker}'")
    nodes = [make_node(tmp_path, database_url, **cfg) for _ in range(2)]
    autos = [Automation(n) for n in nodes]
    for node, auto in zip(nodes, autos):
        node.bus.subscribe(auto.on_event)
    yield nodes, autos, marker
    for auto in autos:
        auto.stop()
    for node in nodes:
        node.close()


def store(node: Node, tmp_path: Path, study: str) -> None:
    path = tmp_path / f"{generate_uid()}.dcm"
    make_ct(path, study_uid=study, size=4)
    assert node.ingestor.ingest_path(path, Origin("dimse", peer_aet="X")).outcome.ok


def row(node: Node, study: str):
    with node.db.read() as conn:
        return conn.execute(select(pending).where(pending.c.kind == "study",
                                                  pending.c.uid == study)).one()


def test_exactly_one_process_claims_a_stable_study(two_nodes, tmp_path: Path) -> None:
    (a, b), (auto_a, auto_b), marker = two_nodes
    study = generate_uid()
    store(a, tmp_path, study)
    store(b, tmp_path, study)
    assert auto_a.poll_once() + auto_b.poll_once() == 0  # not quiet yet
    assert row(a, study).generation == 2
    time.sleep(1.3)
    fired: list[int] = []
    barrier = threading.Barrier(2)

    def poll(auto: Automation) -> None:
        barrier.wait()
        fired.append(auto.poll_once())
    threads = [threading.Thread(target=poll, args=(x,)) for x in (auto_a, auto_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fired) == [0, 1]
    deadline = time.monotonic() + 5
    while not row(a, study).done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row(a, study).done and marker.read_text().split() == [study]
    assert auto_a.poll_once() + auto_b.poll_once() == 0  # done stays done
    # A later arrival makes it pending again.
    store(b, tmp_path, study)
    r = row(a, study)
    assert (r.generation, r.fired, r.done) == (3, False, False)


def test_a_lapsed_claim_is_taken_over_and_a_live_one_is_not(two_nodes, tmp_path: Path) -> None:
    (a, _b), (_auto_a, auto_b), marker = two_nodes
    live, dead = generate_uid(), generate_uid()
    store(a, tmp_path, live)
    store(a, tmp_path, dead)
    now = time.time()
    with a.db.write() as conn:  # claimed by a process that then died (or still runs)
        conn.execute(update(pending).where(pending.c.uid == dead).values(
            fired=True, claimed_by="gone:1:x", claimed_at=now - 120, last_arrival=now - 130))
        conn.execute(update(pending).where(pending.c.uid == live).values(
            fired=True, claimed_by="alive:2:y", claimed_at=now - 5, last_arrival=now - 10))
    assert auto_b.poll_once() == 1
    deadline = time.monotonic() + 5
    while not row(a, dead).done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text().split() == [dead]
    assert row(a, dead).claimed_by == auto_b.me
    assert row(a, live).claimed_by == "alive:2:y" and not row(a, live).done


def _make_due(node: Node, study: str) -> None:
    with node.db.write() as conn:
        conn.execute(update(pending).where(pending.c.study_uid == study)
                     .values(last_arrival=time.time() - 30))


def _wait_done(node: Node, study: str) -> None:
    deadline = time.monotonic() + 5
    while not row(node, study).done and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_deleted_study_fires_nothing_and_its_row_goes(two_nodes, tmp_path: Path) -> None:
    from pacsnode.delete import delete_entities
    (a, _b), (auto_a, _auto_b), marker = two_nodes
    study = generate_uid()
    store(a, tmp_path, study)
    row(a, study)
    assert delete_entities(a, study) == 1
    _make_due(a, study)
    assert auto_a.poll_once() == 0
    assert not marker.exists()
    with a.db.read() as conn:  # (its series' row goes once the series' own period is over)
        assert conn.execute(select(pending).where(pending.c.study_uid == study,
                                                  pending.c.kind == "study")).all() == []


def test_a_resend_right_after_a_delete_still_fires(two_nodes, tmp_path: Path) -> None:
    """Store through A, delete (through B, then through A itself), store
    again through A within its coalescing window: the second arrival's write
    is skipped, yet the study must fire once (20 rounds each way)."""
    from pacsnode.delete import delete_entities
    (a, b), (auto_a, auto_b), marker = two_nodes
    fired: list[str] = []
    for deleter in [b] * 20 + [a] * 20:
        study = generate_uid()
        store(a, tmp_path, study)
        assert delete_entities(deleter, study) == 1
        store(a, tmp_path, study)  # within auto_a's throttle: coalesced
        _make_due(a, study)
        assert auto_a.poll_once() + auto_b.poll_once() == 1
        _wait_done(a, study)
        fired.append(study)
        assert marker.read_text().split() == fired

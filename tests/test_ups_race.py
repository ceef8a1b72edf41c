"""Claiming a Workitem is atomic: ten clients race to move one SCHEDULED
Workitem to IN PROGRESS, each with its own Transaction UID.  On SQLite they
talk to one node; on PostgreSQL they are split between a `pacsnode serve`
process and a second node in this process, both on one database (the
scale-out of DESIGN §2).  Exactly one wins; the others are told the
Transaction UID is incorrect (PS3.4 CC.2.1.2 note 2); the change feed holds
exactly one claim; only the winner can go on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from pacsnode.index.schema import changes
from test_ups import (DICOM_JSON, STATE, TRANSACTION, UPSNode, performed_info, state_body, value,
                      workitem)

CLIENTS = 10
ROUNDS = 3


def _claim_race(bases: list[str], uid: str) -> tuple[list[int], list[str], dict[str, str]]:
    barrier = threading.Barrier(CLIENTS)
    results: dict[int, httpx.Response] = {}
    txs = {i: f"1.2.826.0.1.3680043.8.498.77{uid.rsplit('.', 1)[1]}.{i + 1}"
           for i in range(CLIENTS)}

    def claim(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            body = json.dumps(state_body("IN PROGRESS", txs[i]))
            barrier.wait()
            base = bases[i % len(bases)]
            results[i] = c.put(f"{base}/workitems/{uid}/state", content=body,
                               headers=DICOM_JSON)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = [results[i].status_code for i in range(CLIENTS)]
    winners = [txs[i] for i in range(CLIENTS) if statuses[i] == 200]
    for i in range(CLIENTS):
        r = results[i]
        if r.status_code != 200:
            assert r.headers["warning"].startswith("299 ")
            assert "Transaction UID is incorrect" in r.json()["error"]
        for tx in txs.values():
            assert tx not in r.text
    return statuses, winners, {str(i): txs[i] for i in range(CLIENTS)}


def _run(bases: list[str], database_url: str) -> None:
    with httpx.Client(base_url=bases[0], timeout=30) as c:
        uids = [f"1.2.826.0.1.3680043.8.498.5{n}" for n in range(ROUNDS)]
        for uid in uids:
            r = c.post(f"/workitems?{uid}", content=json.dumps(workitem()), headers=DICOM_JSON)
            assert r.status_code == 201, r.text
        for uid in uids:
            statuses, winners, txs = _claim_race(bases, uid)
            assert sorted(statuses) == [200] + [400] * (CLIENTS - 1), statuses
            [owner] = winners
            item = c.get(f"/workitems/{uid}").json()[0]
            assert value(item, STATE) == "IN PROGRESS"
            assert TRANSACTION not in item
            # Only the winner's Transaction UID opens the Workitem.
            loser = next(tx for tx in txs.values() if tx != owner)
            r = c.post(f"/workitems/{uid}?{loser}", content=json.dumps(performed_info()),
                       headers=DICOM_JSON)
            assert r.status_code == 400
            r = c.post(f"/workitems/{uid}?{owner}", content=json.dumps(performed_info()),
                       headers=DICOM_JSON)
            assert r.status_code == 200, r.text
            r = c.put(f"/workitems/{uid}/state",
                      content=json.dumps(state_body("COMPLETED", owner)), headers=DICOM_JSON)
            assert r.status_code == 200, r.text
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(changes.c.action, changes.c.instance_uid)
                                .where(changes.c.level == "workitem")
                                .order_by(changes.c.seq)).all()
    finally:
        engine.dispose()
    for uid in uids:
        assert [a for a, u in rows if u == uid] == [
            "created", "state:IN PROGRESS", "updated", "state:COMPLETED"]


def test_claim_race_sqlite(tmp_path: Path) -> None:
    node = UPSNode(tmp_path / "data")
    try:
        _run([node.base], f"sqlite:///{tmp_path / 'data' / 'index.sqlite'}")
    finally:
        node.stop()


@pytest.mark.timeout(120)
def test_claim_race_postgresql_two_nodes(pacsnode_factory, postgres, tmp_path: Path) -> None:
    url = postgres.new_database()
    server = pacsnode_factory(database_url=url, extra_env={"PACSNODE_FSYNC": "false"})
    other = UPSNode(tmp_path / "other", database_url=url)
    try:
        _run([server.base_url + "/dicomweb", other.base], url)
    finally:
        other.stop()

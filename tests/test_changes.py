"""The change feed (/api/v1/changes) of a real `pacsnode serve`: stores,
replacements and deletions in order, paging, the latest sequence number, and
the server-sent event stream followed live."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

import conftest
from conftest import PacsnodeServer
from dicomfiles import make_ct


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsnodeServer]:
    data = tmp_path_factory.mktemp("changes") / "data"
    data.mkdir()
    config = data.parent / "pacsnode.toml"
    # DEBUG: the line of each stored instance (INFO has one per association)
    config.write_text('fsync = false\nlog_level = "DEBUG"\n')
    node = PacsnodeServer(data, config=str(config)).start()
    yield node
    node.stop()


def storescu(server: PacsnodeServer, files: list[Path]) -> None:
    conftest.storescu(server, files, "FEEDER")


def make_series(folder: Path, count: int, study: str | None = None,
                series: str | None = None) -> tuple[str, str, list[str], list[Path]]:
    study = study or generate_uid()
    series = series or generate_uid()
    sops, files = [], []
    for n in range(1, count + 1):
        sop = generate_uid()
        files.append(folder / f"{sop}.dcm")
        make_ct(files[-1], study_uid=study, series_uid=series, sop_uid=sop, instance=n, size=8)
        sops.append(sop)
    return study, series, sops, files


def latest(server: PacsnodeServer) -> int:
    r = httpx.get(f"{server.base_url}/api/v1/changes/latest", timeout=10)
    assert r.status_code == 200
    return int(r.json()["seq"])


def page(server: PacsnodeServer, **params: object) -> dict:
    r = httpx.get(f"{server.base_url}/api/v1/changes", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_stores_replacements_and_deletes_in_order(server: PacsnodeServer,
                                                  tmp_path: Path) -> None:
    start = latest(server)
    study_a, series_a, sops_a, files_a = make_series(tmp_path / "a", 3)
    study_b, series_b, sops_b, files_b = make_series(tmp_path / "b", 2)
    storescu(server, files_a)
    storescu(server, files_b)
    # The same SOP Instance with other bytes replaces it (default policy).
    make_ct(tmp_path / "again.dcm", study_uid=study_a, series_uid=series_a, sop_uid=sops_a[0],
            instance=9, size=8)
    storescu(server, [tmp_path / "again.dcm"])
    r = httpx.delete(f"{server.base_url}/dicomweb/studies/{study_b}", timeout=10)
    assert r.status_code == 204, r.text

    body = page(server, since=start)
    got = body["changes"]
    assert [(c["action"], c["level"], c["study_uid"], c["series_uid"], c["instance_uid"])
            for c in got] == (
        [("stored", "instance", study_a, series_a, s) for s in sops_a]
        + [("stored", "instance", study_b, series_b, s) for s in sops_b]
        + [("replaced", "instance", study_a, series_a, sops_a[0])]
        + [("deleted", "instance", study_b, series_b, s) for s in sops_b])
    seqs = [c["seq"] for c in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > start
    assert body["last"] == seqs[-1] == latest(server)
    times = [datetime.fromisoformat(c["at"]) for c in got]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert set(got[0]) == {"seq", "action", "level", "study_uid", "series_uid",
                           "instance_uid", "at"}
    # Nothing after the last one.
    assert page(server, since=seqs[-1]) == {"changes": [], "last": seqs[-1]}


def test_paging_neither_repeats_nor_skips(server: PacsnodeServer, tmp_path: Path) -> None:
    start = latest(server)
    _study, _series, sops, files = make_series(tmp_path, 7)
    storescu(server, files)
    everything = page(server, since=start, limit=1000)["changes"]
    assert [c["instance_uid"] for c in everything] == sops
    walked, since, pages = [], start, 0
    while True:
        body = page(server, since=since, limit=3)
        assert len(body["changes"]) <= 3
        if not body["changes"]:
            assert body["last"] == since
            break
        walked += body["changes"]
        since = body["last"]
        pages += 1
    assert walked == everything and pages == 3
    # The default page and the ceiling.
    assert len(page(server)["changes"]) == min(100, latest(server))
    assert len(page(server, limit=5000)["changes"]) == min(1000, latest(server))


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "limit=0", "limit=-5",
                                   "limit=ten", "since=1.5"])
def test_bad_parameters_are_refused(server: PacsnodeServer, query: str) -> None:
    r = httpx.get(f"{server.base_url}/api/v1/changes?{query}", timeout=10)
    assert r.status_code == 400
    assert query.split("=")[0] in r.json()["error"]
    r = httpx.get(f"{server.base_url}/api/v1/changes/stream?since=-1", timeout=10)
    assert r.status_code == 400


def test_openapi_describes_the_feed(server: PacsnodeServer) -> None:
    doc = httpx.get(f"{server.base_url}/api/v1/openapi.json", timeout=10).json()
    op = doc["paths"]["/api/v1/changes"]["get"]
    params = {p["name"]: p["schema"]["type"] for p in op["parameters"]}
    assert params == {"since": "integer", "limit": "integer"}
    assert set(op["responses"]) == {"200", "400"}
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page_schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page_schema["properties"]) == {"changes", "last"}
    change = doc["components"]["schemas"]["Change"]
    assert set(change["properties"]) == {"seq", "action", "level", "study_uid", "series_uid",
                                         "instance_uid", "at"}
    assert "/api/v1/changes/latest" in doc["paths"]
    assert "text/event-stream" in \
        doc["paths"]["/api/v1/changes/stream"]["get"]["responses"]["200"]["content"]


def read_events(lines: Iterator[str], count: int) -> list[dict]:
    """The next `count` SSE events (id + data), comments skipped."""
    events: list[dict] = []
    current: dict = {}
    for line in lines:
        if line == "":
            if "data" in current:
                events.append(current)
                if len(events) == count:
                    return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"stream ended after {len(events)} of {count} events")


def test_stream_follows_live(server: PacsnodeServer, tmp_path: Path) -> None:
    before = latest(server)
    _study, _series, sops, files = make_series(tmp_path, 4)
    url = f"{server.base_url}/api/v1/changes/stream"
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client, \
            client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")  # connected; nothing stored yet
        sender = threading.Thread(target=storescu, args=(server, files))
        sender.start()
        events = read_events(lines, 4)
        sender.join()
    changes = [json.loads(e["data"]) for e in events]
    assert [c["instance_uid"] for c in changes] == sops
    assert [int(e["id"]) for e in events] == [c["seq"] for c in changes]
    assert changes[0]["seq"] > before and all(c["action"] == "stored" for c in changes)
    # since= (or Last-Event-ID) replays from there, then follows.
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        with client.stream("GET", url, params={"since": before}) as response:
            replay = read_events(response.iter_lines(), 4)
        with client.stream("GET", url, headers={"Last-Event-ID": events[1]["id"]}) as response:
            resumed = read_events(response.iter_lines(), 2)
    assert [e["id"] for e in replay] == [e["id"] for e in events]
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]


# -- the feed over the index directly, on both databases ------------------------

def test_concurrent_writers_page_without_repeats_or_skips(tmp_path: Path,
                                                          database_url: str) -> None:
    """Eight threads ingesting at once (on PostgreSQL their transactions
    commit out of sequence order) while a reader pages with a small limit."""
    from concurrent.futures import ThreadPoolExecutor

    from pacsnode.config import Settings
    from pacsnode.events import Origin
    from pacsnode.node import Node
    from pacsnode.web.changes import _fetch, _latest

    node = Node(Settings(data_dir=tmp_path / "data", database_url=database_url, fsync=False))
    try:
        start = _latest(node)
        study = generate_uid()
        files = []
        for n in range(40):
            files.append(tmp_path / f"{n}.dcm")
            make_ct(files[-1], study_uid=study, instance=n + 1, size=4)
        seen: list[str] = []
        done = threading.Event()

        def read() -> None:
            since = start
            while True:
                finished = done.is_set()
                batch = _fetch(node, since, 3)
                seen.extend(c.instance_uid for c in batch)
                since = batch[-1].seq if batch else since
                if finished and not batch:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda f: node.ingestor.ingest_path(f, Origin("import")),
                                    files))
        done.set()
        reader.join(30)
        stored = sorted(r.sop_instance_uid for r in results if r.outcome.ok)
        assert len(stored) == 40
        assert sorted(seen) == stored and len(seen) == len(set(seen))
        assert _latest(node) >= start + 40
    finally:
        node.close()


def test_a_gap_holds_back_later_changes_until_it_is_settled() -> None:
    from types import SimpleNamespace

    from pacsnode.index.feeds import settled
    from pacsnode.web.changes import GAP_GRACE_SECONDS

    def _settled(rows: list[SimpleNamespace], since: int, now: float) -> list[SimpleNamespace]:
        return settled(rows, since, now, written_at="at", grace=GAP_GRACE_SECONDS)

    now = 1000.0
    rows = [SimpleNamespace(seq=s, at=at) for s, at in ((5, now - 1), (6, now - 1),
                                                         (8, now - 1), (9, now))]
    # seq 7 may still be committing: stop before 8.
    assert [r.seq for r in _settled(rows, 4, now)] == [5, 6]
    # The same gap, long enough ago: a rolled-back transaction; go on.
    old = [SimpleNamespace(seq=r.seq, at=r.at - GAP_GRACE_SECONDS) for r in rows]
    assert [r.seq for r in _settled(old, 4, now)] == [5, 6, 8, 9]
    # A gap right after `since` counts too.
    assert _settled(rows[2:], 6, now) == []


def test_each_stored_instance_is_logged_after_its_answer(server: PacsnodeServer,
                                                         tmp_path: Path) -> None:
    """The log line of an instance stored by C-STORE (at DEBUG; a
    replacement's at INFO) is written once the response has gone (so not
    before storescu has it, but always): one per instance, in order, saying
    stored or replaced and from whom; the association's closing line counts
    them."""
    study, _series, sops, files = make_series(tmp_path, 4)
    storescu(server, files)
    make_ct(tmp_path / "again.dcm", study_uid=study, series_uid=_series, sop_uid=sops[1],
            instance=9, size=8)
    storescu(server, [tmp_path / "again.dcm"])
    deadline = time.monotonic() + 10
    pattern = re.compile(r"(stored|replaced) instance (\S+) \(study (\S+)\) from dimse/FEEDER/")
    while True:
        lines = [m.groups() for m in pattern.finditer(server.log()) if m.group(3) == study]
        if len(lines) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines == [("stored", sop, study) for sop in sops] + [("replaced", sops[1], study)]
    log = server.log()
    assert re.search(r"association released: FEEDER from 127\.0\.0\.1:\d+; C-STORE 4 stored\n",
                     log)
    assert re.search(r"association released: FEEDER from 127\.0\.0\.1:\d+; C-STORE 1 replaced\n",
                     log)
    assert re.search(r"INFO pacsnode\.ingest: replaced instance " + re.escape(sops[1]), log)

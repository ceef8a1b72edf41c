"""Routes (DESIGN §10) against real peers: a route sending only the T1 series,
anonymized, to a real Orthanc; a destination (DCMTK storescp) that is down
and comes up (back-off); a route job surviving `kill -9` of the serve running
it; two serves on one PostgreSQL doing each route job once; routes that
cannot work refused at start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import PacsnodeServer, dcmtk, free_port, stop_process, wait_port
from orthanc_peer import Orthanc, start_orthanc
from test_automation_stable import wait_until
from test_series_classes import storescu, write_series


def toml_config(tmp_path: Path, routes: list[dict[str, Any]], nodes: dict[str, tuple] = {},
                name: str = "pacsnode.toml", **settings: Any) -> str:
    """A TOML file: settings, [nodes.X] and [[routes]] (values as JSON, which
    TOML reads alike for strings, numbers, booleans, lists and inline tables)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = ["fsync = false", "stable_series_seconds = 1", "stable_study_seconds = 2"]
    lines += [f"{k} = {value(v)}" for k, v in settings.items()]
    for node_name, (aet, port) in nodes.items():
        lines += [f"[nodes.{node_name}]", f'aet = "{aet}"', 'host = "127.0.0.1"',
                  f"port = {port}"]
    for route in routes:
        lines.append("[[routes]]")
        lines += [f"{k} = {value(v)}" for k, v in route.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def route_jobs(server: PacsnodeServer) -> list[dict[str, Any]]:
    r = httpx.get(server.base_url + "/api/v1/jobs", params={"limit": 1000}, timeout=10)
    assert r.status_code == 200, r.text
    return [j for j in r.json()["jobs"] if j["kind"] == "route"]


def settled(server: PacsnodeServer, count: int) -> list[dict[str, Any]] | None:
    jobs = route_jobs(server)
    if len(jobs) == count and all(j["state"] in ("succeeded", "failed", "canceled")
                                  for j in jobs):
        return jobs
    return None


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with start_orthanc(tmp_path_factory.mktemp("orthanc"), aet="RESEARCH") as peer:
        yield peer


def test_t1_series_arrive_anonymized_with_consistent_pseudonyms(
        tmp_path: Path, pacsnode_factory, orthanc: Orthanc) -> None:
    config = toml_config(tmp_path, nodes={"RESEARCH": (orthanc.aet, orthanc.dicom_port)},
                         routes=[{"name": "t1-research", "on": "stable_series",
                                  "match": {"classes": "t1", "Modality": "M?"},
                                  "send_to": ["RESEARCH"], "anonymize": True}])
    server = pacsnode_factory(config=config)
    study = generate_uid()
    picks = {"sie-t1-se-1": ["T1"], "ge-t1-fse-2": ["T1"], "sie-t2-tse-2": ["T2"],
             "sie-loc-1": ["localizer"]}
    made = write_series(tmp_path / "in", study, picks, patient_id="SECRET-PID-42")
    storescu(server.dicom_port, server.aet, [f for _, files in made.values() for f in files])
    jobs = wait_until(lambda: settled(server, 2), 90, "two route jobs to finish")
    t1 = {made["sie-t1-se-1"][0]: len(made["sie-t1-se-1"][1]),
          made["ge-t1-fse-2"][0]: len(made["ge-t1-fse-2"][1])}
    assert {(j["series_uid"], j["state"], j["completed"], j["failed"], j["route"], j["node"],
             j["method"]) for j in jobs} == {
        (uid, "succeeded", n, 0, "t1-research", "RESEARCH", "send") for uid, n in t1.items()}
    # Orthanc holds the two T1 series only, of one pseudonymous patient and study.
    patients = orthanc.get("/patients", expand="true")
    assert len(patients) == 1
    pid = patients[0]["MainDicomTags"]["PatientID"]
    assert pid.startswith("ANON-") and "SECRET" not in json.dumps(patients)
    studies = orthanc.get("/studies", expand="true")
    assert len(studies) == 1
    assert studies[0]["MainDicomTags"]["StudyInstanceUID"] != study
    series = orthanc.get("/series", expand="true")
    assert sorted(len(s["Instances"]) for s in series) == sorted(t1.values())
    sent_uids = {s["MainDicomTags"]["SeriesInstanceUID"] for s in series}
    assert not sent_uids & set(uid for uid, _ in made.values())  # replaced, all of them
    one = orthanc.client.get(f"/instances/{series[0]['Instances'][0]}/file")
    ds = dcmread(__import__("io").BytesIO(one.content))
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == pid


def test_a_destination_down_is_retried_with_backoff_and_canceled_jobs_stay(
        tmp_path: Path, pacsnode_factory) -> None:
    port = free_port()
    config = toml_config(tmp_path, nodes={"STORE": ("STORESCP", port)},
                         route_attempts=30, route_backoff_seconds=0.3,
                         routes=[{"name": "archive-copy", "on": "stable_series",
                                  "send_to": ["STORE"]},
                                 {"name": "to-cancel", "on": "stable_series",
                                  "match": {"calling_aet": "MODALITY?"},
                                  "send_to": ["STORE"]}])
    server = pacsnode_factory(config=config)
    made = write_series(tmp_path / "in", generate_uid(), {"sie-loc-1": ["localizer"]})
    uid, files = made["sie-loc-1"]
    storescu(server.dicom_port, server.aet, files)

    def retrying() -> list[dict[str, Any]] | None:
        jobs = route_jobs(server)
        if len(jobs) == 2 and all(j["attempts"] >= 2 and j["state"] == "pending"
                                  for j in jobs):
            return jobs
        return None

    jobs = wait_until(retrying, 60, "both jobs to fail twice while storescp is down")
    assert all(j["error"] and j["next_try"] for j in jobs)
    doomed = next(j for j in jobs if j["route"] == "to-cancel")
    r = httpx.delete(f"{server.base_url}/api/v1/jobs/{doomed['id']}", timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "canceled"
    out = tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen([dcmtk("storescp"), "--aetitle", "STORESCP", "--output-directory",
                             str(out), "--accept-all", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TCP_NODELAY="1"))
    try:
        wait_port(port, proc=proc)
        jobs = wait_until(lambda: settled(server, 2), 90, "the retried job to succeed")
        states = {j["route"]: (j["state"], j["completed"], j["failed"]) for j in jobs}
        assert states == {"archive-copy": ("succeeded", len(files), 0),
                          "to-cancel": ("canceled", 0, 0)}
        received = sorted(dcmread(p).SOPInstanceUID for p in out.iterdir())
        assert received == sorted(dcmread(f).SOPInstanceUID for f in files)
    finally:
        stop_process(proc)


def test_a_study_route_exports_only_its_matching_series(tmp_path: Path,
                                                       pacsnode_factory) -> None:
    root = tmp_path / "exports"
    (root / "loc").mkdir(parents=True)
    config = toml_config(tmp_path, export_roots=[str(root)],
                         routes=[{"name": "localizers", "on": "stable_study",
                                  "match": {"classes": "LOCALIZER"},
                                  "export_to": str(root / "loc")}])
    server = pacsnode_factory(config=config)
    study = generate_uid()
    made = write_series(tmp_path / "in", study, {"sie-loc-1": ["localizer"],
                                                 "sie-fmap-se-1": ["fieldmap"]})
    storescu(server.dicom_port, server.aet, [f for _, fs in made.values() for f in fs])
    jobs = wait_until(lambda: settled(server, 1), 60, "the export job to finish")
    uid, files = made["sie-loc-1"]
    assert [(j["state"], j["method"], j["level"], j["completed"]) for j in jobs] == \
        [("succeeded", "export", "STUDY", len(files))]
    written = sorted((root / "loc").rglob("*.dcm"))
    assert {p.parent.relative_to(root / "loc") for p in written} == {Path(study) / uid}
    stored = {p.stem: p.read_bytes()  # the archive's blobs, byte for byte
              for p in (server.data_dir / "studies" / study / uid).glob("*.dcm")}
    assert {p.stem: p.read_bytes() for p in written} == stored
    assert set(stored) == {str(dcmread(f).SOPInstanceUID) for f in files}


def gated_script(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A command that records its start (with its pid), waits for a gate
    file, then records its end."""
    log, gate, script = tmp_path / "runs.log", tmp_path / "gate", tmp_path / "gated.sh"
    script.write_text("#!/bin/sh\n"
                      f'echo "start $$ $1" >> "{log}"\n'
                      f'while [ ! -e "{gate}" ]; do sleep 0.1; done\n'
                      f'echo "done $$ $1" >> "{log}"\n')
    script.chmod(0o755)
    return script, log, gate


def lines(log: Path, word: str) -> list[list[str]]:
    if not log.exists():
        return []
    return [ln.split() for ln in log.read_text().splitlines() if ln.startswith(word + " ")]


def test_a_route_job_survives_kill_9_of_its_serve(tmp_path: Path) -> None:
    script, log, gate = gated_script(tmp_path)
    config = toml_config(tmp_path, routes=[{"name": "pipeline", "on": "stable_study",
                                            "run": f"{script} {{study_uid}}"}])
    data = tmp_path / "data"
    data.mkdir()
    first = PacsnodeServer(data, config=config).start()
    study = generate_uid()
    made = write_series(tmp_path / "in", study, {"sie-loc-1": ["localizer"]})
    try:
        storescu(first.dicom_port, first.aet, made["sie-loc-1"][1])
        started = wait_until(lambda: lines(log, "start"), 60, "the route command to start")
        running = route_jobs(first)
        assert [(j["state"], j["route"], j["study_uid"], j["method"]) for j in running] == \
            [("running", "pipeline", study, "run")]
    finally:
        first.kill()
    os.kill(int(started[0][1]), signal.SIGKILL)  # the orphaned command of the dead serve
    second = PacsnodeServer(data, config=config).start()
    try:
        wait_until(lambda: len(lines(log, "start")) == 2, 60, "the job to be resumed")
        gate.touch()
        jobs = wait_until(lambda: settled(second, 1), 60, "the resumed job to finish")
        assert jobs[0]["state"] == "succeeded" and jobs[0]["id"] == running[0]["id"]
        assert [ln[2] for ln in lines(log, "done")] == [study]
    finally:
        second.stop()


def test_a_running_route_command_is_canceled(tmp_path: Path, pacsnode_factory) -> None:
    script, log, gate = gated_script(tmp_path)
    config = toml_config(tmp_path, routes=[{"name": "slow", "on": "stable_series",
                                            "run": f"{script} {{series_uid}}"}])
    server = pacsnode_factory(config=config)
    made = write_series(tmp_path / "in", generate_uid(), {"sie-loc-1": ["localizer"]})
    storescu(server.dicom_port, server.aet, made["sie-loc-1"][1])
    started = wait_until(lambda: lines(log, "start"), 60, "the route command to start")
    job = route_jobs(server)[0]
    assert job["state"] == "running"
    r = httpx.delete(f"{server.base_url}/api/v1/jobs/{job['id']}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "canceled" and "canceled" in r.json()["error"]
    with pytest.raises(ProcessLookupError):  # the command was ended, not left running
        os.kill(int(started[0][1]), 0)
    gate.touch()
    time.sleep(1)
    assert lines(log, "done") == [] and len(lines(log, "start")) == 1
    assert route_jobs(server)[0]["state"] == "canceled"


def test_two_serves_on_postgres_do_each_route_job_once(tmp_path: Path, postgres) -> None:
    log = tmp_path / "runs.log"
    script = tmp_path / "record.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\n')
    script.chmod(0o755)
    config = toml_config(tmp_path, routes=[{"name": "each-series", "on": "stable_series",
                                            "run": f"{script} {{series_uid}}"}])
    url = postgres.new_database()
    data = tmp_path / "data"
    data.mkdir()
    a = PacsnodeServer(data, aet="NODE_A", database_url=url, config=config).start()
    b = PacsnodeServer(data, aet="NODE_B", database_url=url, config=config).start()
    try:
        picks = {"sie-loc-1": ["localizer"], "sie-fmap-se-1": ["fieldmap"]}
        sent = []
        for server in (a, b, a, b):
            made = write_series(tmp_path / "in" / generate_uid(), generate_uid(), picks)
            storescu(server.dicom_port, server.aet, [f for _, fs in made.values() for f in fs])
            sent += [uid for uid, _ in made.values()]
        jobs = wait_until(lambda: settled(a, len(sent)), 120, "every route job to finish")
        assert {j["series_uid"] for j in jobs} == set(sent)
        assert all(j["state"] == "succeeded" for j in jobs)
        time.sleep(2)  # a second run would have to come now: none may
        assert sorted(log.read_text().split()) == sorted(sent)
        assert len(settled(b, len(sent)) or []) == len(sent)  # B sees the same jobs
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("route, settings, reason", [
    ({"name": "r", "send_to": ["NOWHERE"]}, {}, "send_to names node 'NOWHERE'"),
    ({"name": "r", "export_to": "/etc/pacsnode-out"}, {"export_roots": ["/tmp/roots"]},
     "is not an absolute folder under export_roots"),
    ({"name": "r", "on": "arrival", "run": "true"}, {}, "on must be stable_study or"),
    ({"name": "r"}, {}, "no action"),
    ({"name": "r", "match": {"NoSuchKeyword": "x"}, "run": "true"}, {},
     "not a DICOM keyword"),
])
def test_a_route_that_cannot_work_is_refused_at_start(tmp_path: Path, route, settings,
                                                      reason) -> None:
    config = toml_config(tmp_path, routes=[route], **settings)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(RuntimeError) as refused:
        PacsnodeServer(data, config=config).start()
    assert reason in str(refused.value) and "Traceback" not in str(refused.value)

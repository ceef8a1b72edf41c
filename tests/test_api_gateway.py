"""The gateway REST API against real peers: a running ``pacsnode serve`` (its
retrieve workers included) and a real Orthanc that knows our AE title, plus
DCMTK tools to look at what landed in our archive."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import PacsnodeServer, dcmtk, free_port
from dicomfiles import dataset_bytes, make_ct
from orthanc_peer import Orthanc, start_orthanc

TERMINAL = {"succeeded", "failed", "canceled"}
BIG = 400  # instances of the long series (cancel, kill -9)


def write_series(folder: Path, n: int, *, patient_id: str, study_uid: str,
                 description: str, size: int = 16, **kw: Any) -> tuple[str, list[Path]]:
    series_uid = generate_uid()
    paths = []
    for i in range(1, n + 1):
        path = folder / series_uid / f"{i:04d}.dcm"
        make_ct(path, patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                instance=i, size=size, series_description=description, **kw)
        paths.append(path)
    return series_uid, paths


def toml(orthanc: Orthanc, **extra: Any) -> str:
    lines = [f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool)
             else f"{k} = {str(v).lower()}" for k, v in extra.items()]
    lines += ["[nodes.ORTHANC]", 'aet = "ORTHANC"', 'host = "127.0.0.1"',
              f"port = {orthanc.dicom_port}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("api-gw")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", aet="PACSNODE")
    modalities = {"PACSNODE": ["PACSNODE", "127.0.0.1", server.dicom_port]}
    with start_orthanc(work / "orthanc", modalities=modalities) as orthanc:
        study1 = generate_uid()
        s_move, f_move = write_series(work / "src", 5, patient_id="APIP1", study_uid=study1,
                                      description="AX MOVE", patient_name="Api^One")
        s_get, f_get = write_series(work / "src", 4, patient_id="APIP1", study_uid=study1,
                                    description="COR GET", patient_name="Api^One")
        study2 = generate_uid()
        s_two, f_two = write_series(work / "src", 2, patient_id="APIP2", study_uid=study2,
                                    description="SAG OTHER", patient_name="Api^Two",
                                    study_date="20210305")
        study3 = generate_uid()
        s_big, f_big = write_series(work / "src", BIG, patient_id="APIBIG", study_uid=study3,
                                    description="MANY", patient_name="Api^Big", size=4)
        orthanc.upload(f_move + f_get + f_two + f_big)
        config = work / "pacsnode.toml"
        config.write_text(toml(orthanc, fsync=False))
        server.config = str(config)
        server.start()
        client = httpx.Client(base_url=server.base_url, timeout=60)
        try:
            yield {"server": server, "orthanc": orthanc, "client": client, "work": work,
                   "study1": study1, "study2": study2, "study3": study3,
                   "move": (s_move, f_move), "get": (s_get, f_get), "two": (s_two, f_two),
                   "big": (s_big, f_big)}
        finally:
            client.close()
            server.stop()


def wait_job(client: httpx.Client, job_id: str,
             until: Callable[[dict[str, Any]], bool] = lambda j: j["state"] in TERMINAL,
             timeout: float = 60.0, interval: float = 0.02) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there in {timeout}s: {job}")
        time.sleep(interval)


def findscu_sops(server: PacsnodeServer, study: str, series_uid: str) -> list[str]:
    """SOP Instance UIDs our archive answers to DCMTK findscu at IMAGE level."""
    proc = subprocess.run([dcmtk("findscu"), "-S", "-aec", server.aet,
                           "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                           "-k", f"SeriesInstanceUID={series_uid}", "-k", "SOPInstanceUID",
                           "127.0.0.1", str(server.dicom_port)],
                          capture_output=True, encoding="latin-1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    sops = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if "(0008,0018)" in line and "[" in line:
            sops.append(line[line.index("[") + 1:line.rindex("]")].rstrip(" \x00"))
    return sops


def orthanc_file(orthanc: Orthanc, sop: str) -> bytes:
    r = orthanc.client.post("/tools/lookup", content=sop)
    r.raise_for_status()
    (entry,) = [i for i in r.json() if i["Type"] == "Instance"]
    r = orthanc.client.get(f"/instances/{entry['ID']}/file")
    r.raise_for_status()
    return r.content


def assert_archived_like_orthanc(env: dict[str, Any], study: str, series_uid: str,
                                 files: list[Path]) -> None:
    server: PacsnodeServer = env["server"]
    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    sops = findscu_sops(server, study, series_uid)
    assert sorted(sops) == sorted(expected)
    for sop in expected:
        ours = server.data_dir / "studies" / study / series_uid / f"{sop}.dcm"
        tmp = env["work"] / "cmp.dcm"
        tmp.write_bytes(orthanc_file(env["orthanc"], sop))
        mine = env["work"] / "mine.dcm"
        mine.write_bytes(ours.read_bytes())
        assert dataset_bytes(mine) == dataset_bytes(tmp), sop


# ------------------------------------------------------------------ nodes

def test_nodes_list_and_validation(env: dict[str, Any]) -> None:
    client = env["client"]
    nodes = client.get("/api/v1/nodes").json()["nodes"]
    assert {"name": "ORTHANC", "aet": "ORTHANC", "host": "127.0.0.1",
            "port": env["orthanc"].dicom_port, "source": "config",
            "overrides_config": False, "allow": ["echo", "store", "find", "get", "move"], "tls": False} in nodes
    for body, word in (({"aet": "", "host": "h", "port": 1}, "empty"),
                       ({"aet": "A" * 17, "host": "h", "port": 1}, "16"),
                       ({"aet": "A\\B", "host": "h", "port": 1}, "backslash"),
                       ({"aet": "A\x01B", "host": "h", "port": 1}, "control"),
                       ({"aet": "AB", "host": "h", "port": 0}, "port"),
                       ({"aet": "AB", "host": "h", "port": 70000}, "port"),
                       ({"aet": "AB", "host": "h", "port": "104"}, "port"),
                       ({"aet": "AB", "host": "bad host", "port": 104}, "host"),
                       ({"aet": "AB", "host": "h"}, "port"),
                       ({"aet": "AB", "host": "h", "port": 104, "x": 1}, "x")):
        r = client.put("/api/v1/nodes/N1", json=body)
        assert r.status_code == 400, (body, r.text)
        assert word in r.json()["error"], (body, r.json())
    r = client.put("/api/v1/nodes/bad name!", json={"aet": "AB", "host": "h", "port": 104})
    assert r.status_code == 400 and "name" in r.json()["error"]
    assert client.get("/api/v1/nodes/N1").status_code == 404
    assert client.delete("/api/v1/nodes/N1").status_code == 404
    r = client.delete("/api/v1/nodes/ORTHANC")
    assert r.status_code == 409 and "configuration file" in r.json()["error"]


def test_nodes_crud_persists_and_feeds_the_move_scp(
        env: dict[str, Any], pacsnode_factory: Any, storescp_factory: Any,
        tmp_path: Path) -> None:
    """Runtime nodes survive a restart of serve and are C-MOVE destinations
    of our SCP (one registry)."""
    config = tmp_path / "n.toml"
    config.write_text(toml(env["orthanc"], fsync=False))
    server = pacsnode_factory(aet="PNCRUD", config=str(config))
    client = httpx.Client(base_url=server.base_url, timeout=30)
    scp_port, scp_dir = storescp_factory("DESTSCP")
    r = client.put("/api/v1/nodes/DEST", json={"aet": "DESTSCP", "host": "127.0.0.1",
                                               "port": scp_port})
    assert r.status_code == 201 and r.json()["source"] == "runtime"
    r = client.put("/api/v1/nodes/ORTHANC", json={"aet": "ORTHANC", "host": "127.0.0.1",
                                                  "port": env["orthanc"].dicom_port})
    assert r.status_code == 201 and r.json()["overrides_config"] is True
    r = client.put("/api/v1/nodes/DEST", json={"aet": "  DESTSCP ", "host": "127.0.0.1",
                                               "port": scp_port})
    assert r.status_code == 200 and r.json()["aet"] == "DESTSCP"
    server.stop()
    server.start()
    nodes = {n["name"]: n for n in client.get("/api/v1/nodes").json()["nodes"]}
    assert nodes["DEST"] == {"name": "DEST", "aet": "DESTSCP", "host": "127.0.0.1",
                             "port": scp_port, "source": "runtime", "overrides_config": False,
                             "allow": ["echo", "store", "find", "get", "move"], "tls": False}
    assert nodes["ORTHANC"]["source"] == "runtime" and nodes["ORTHANC"]["overrides_config"]
    assert client.get("/api/v1/nodes/DEST").json()["port"] == scp_port
    # Our C-MOVE SCP sends to the runtime node.
    src = tmp_path / "one.dcm"
    ds = make_ct(src, patient_id="CRUD1")
    subprocess.run([dcmtk("storescu"), "-aec", server.aet, "127.0.0.1",
                    str(server.dicom_port), str(src)], check=True, capture_output=True)
    proc = subprocess.run([dcmtk("movescu"), "-S", "-aec", server.aet, "-aem", "DESTSCP",
                           "-k", "QueryRetrieveLevel=STUDY",
                           "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                           "127.0.0.1", str(server.dicom_port)],
                          capture_output=True, encoding="latin-1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    received = [dcmread(p, stop_before_pixels=True).SOPInstanceUID
                for p in scp_dir.iterdir() if p.is_file()]
    assert received == [ds.SOPInstanceUID]
    # Orthanc does not know PNCRUD: a move retrieve fails and says why.
    s_move, _ = env["move"]
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study1"], "SeriesInstanceUID": s_move})
    job = wait_job(client, r.json()["job"])
    assert job["state"] == "failed" and "C-MOVE failed" in job["error"]
    assert "our AE title 'PNCRUD'" in job["error"]
    # Delete: the runtime override goes, the TOML node comes back.
    assert client.delete("/api/v1/nodes/DEST").status_code == 204
    assert client.delete("/api/v1/nodes/ORTHANC").status_code == 204
    nodes = {n["name"]: n for n in client.get("/api/v1/nodes").json()["nodes"]}
    assert "DEST" not in nodes and nodes["ORTHANC"]["source"] == "config"
    client.close()


# ------------------------------------------------------------------ echo, find

def test_echo(env: dict[str, Any]) -> None:
    client = env["client"]
    r = client.post("/api/v1/nodes/ORTHANC/echo")
    assert r.status_code == 200 and r.json()["ok"] is True
    assert 0 < r.json()["ms"] < 5000 and r.json()["error"] is None
    dead = free_port()
    client.put("/api/v1/nodes/DEAD", json={"aet": "DEAD", "host": "127.0.0.1", "port": dead})
    r = client.post("/api/v1/nodes/DEAD/echo")
    assert r.status_code == 200 and r.json()["ok"] is False
    assert "DEAD@127.0.0.1" in r.json()["error"] and "connect" in r.json()["error"]
    assert client.post("/api/v1/nodes/NOPE/echo").status_code == 404
    r = client.post("/api/v1/nodes/DEAD/find", json={"level": "STUDY"})
    assert r.status_code == 502 and "DEAD@" in r.json()["error"]
    client.delete("/api/v1/nodes/DEAD")


def test_find_at_every_level_matches_orthanc(env: dict[str, Any]) -> None:
    client, orthanc = env["client"], env["orthanc"]

    def find(level: str, query: dict[str, Any], fields: list[str] = ()) -> list[dict]:
        r = client.post("/api/v1/nodes/ORTHANC/find",
                        json={"level": level, "query": query, "fields": list(fields)})
        assert r.status_code == 200, r.text
        return r.json()["results"]  # type: ignore[no-any-return]

    def orthanc_find(level: str, query: dict[str, str]) -> list[dict]:
        return orthanc.post("/tools/find", {"Level": level, "Query": query,  # type: ignore
                                            "Expand": True})

    # PATIENT
    ours = find("PATIENT", {"PatientID": "APIP*"}, ["PatientName"])
    theirs = orthanc_find("Patient", {"PatientID": "APIP*"})
    assert sorted((r["PatientID"], r["PatientName"]) for r in ours) == sorted(
        (t["MainDicomTags"]["PatientID"], t["MainDicomTags"]["PatientName"]) for t in theirs)
    assert len(ours) == 2
    # STUDY (with a date range)
    ours = find("study", {"PatientID": "APIP*", "StudyDate": "20210101-"},
                ["StudyDescription"])
    theirs = orthanc_find("Study", {"PatientID": "APIP*", "StudyDate": "20210101-"})
    assert [r["StudyInstanceUID"] for r in ours] == [env["study2"]]
    assert {t["MainDicomTags"]["StudyInstanceUID"] for t in theirs} == {env["study2"]}
    assert ours[0]["StudyDescription"] == theirs[0]["MainDicomTags"]["StudyDescription"]
    # SERIES
    ours = find("SERIES", {"StudyInstanceUID": env["study1"]}, ["SeriesDescription"])
    theirs = orthanc.get(f"/studies/{orthanc_find('Study', {'StudyInstanceUID': env['study1']})[0]['ID']}/series")
    assert sorted((r["SeriesInstanceUID"], r["SeriesDescription"]) for r in ours) == sorted(
        (t["MainDicomTags"]["SeriesInstanceUID"], t["MainDicomTags"]["SeriesDescription"])
        for t in theirs)
    counts = {r["SeriesInstanceUID"]: r["NumberOfSeriesRelatedInstances"] for r in ours}
    assert counts == {env["move"][0]: 5, env["get"][0]: 4}
    # IMAGE
    s_move, f_move = env["move"]
    ours = find("IMAGE", {"StudyInstanceUID": env["study1"], "SeriesInstanceUID": s_move},
                ["InstanceNumber"])
    theirs = orthanc_find("Instance", {"SeriesInstanceUID": s_move})
    assert sorted(r["SOPInstanceUID"] for r in ours) == sorted(
        t["MainDicomTags"]["SOPInstanceUID"] for t in theirs)
    assert sorted(r["InstanceNumber"] for r in ours) == [1, 2, 3, 4, 5]


def test_find_bad_requests(env: dict[str, Any]) -> None:
    client = env["client"]
    r = client.post("/api/v1/nodes/ORTHANC/find", json={"level": "STUDY",
                                                       "query": {"NoSuchKeyword": "x"}})
    assert r.status_code == 400 and "NoSuchKeyword" in r.json()["error"]
    r = client.post("/api/v1/nodes/ORTHANC/find", json={"level": "GALAXY"})
    assert r.status_code == 400 and "level" in r.json()["error"]
    r = client.post("/api/v1/nodes/ORTHANC/find", json={"query": {}})
    assert r.status_code == 400 and "level" in r.json()["error"]
    assert client.post("/api/v1/nodes/NOPE/find", json={"level": "STUDY"}).status_code == 404


# ------------------------------------------------------------------ retrieve jobs

def test_retrieve_series_by_move(env: dict[str, Any]) -> None:
    client = env["client"]
    s_move, f_move = env["move"]
    seen: list[int] = []
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"level": "SERIES", "StudyInstanceUID": env["study1"],
                          "SeriesInstanceUID": s_move, "method": "move"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]
    assert r.headers["location"] == f"/api/v1/jobs/{job_id}"
    job = wait_job(client, job_id, lambda j: seen.append(j["completed"]) is None and
                   j["state"] in TERMINAL)
    assert job["state"] == "succeeded", job
    assert job["completed"] == 5 and job["failed"] == 0 and job["remaining"] == 0
    assert job["error"] is None and job["method"] == "move" and job["node"] == "ORTHANC"
    assert seen == sorted(seen)  # counts only grow
    assert_archived_like_orthanc(env, env["study1"], s_move, f_move)


def test_retrieve_series_by_get_without_study_uid(env: dict[str, Any]) -> None:
    client = env["client"]
    s_get, f_get = env["get"]
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"SeriesInstanceUID": s_get, "method": "get"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"])
    assert job["state"] == "succeeded", job
    assert job["completed"] == 4 and job["failed"] == 0 and job["remaining"] == 0
    assert job["study_uid"] == env["study1"] and job["level"] == "SERIES"
    assert_archived_like_orthanc(env, env["study1"], s_get, f_get)
    # Nothing left behind in the store's temp area.
    assert not list((env["server"].data_dir / "incoming").glob("*"))


def test_retrieve_study_by_get(env: dict[str, Any]) -> None:
    client = env["client"]
    s_two, f_two = env["two"]
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study2"], "method": "get"})
    job = wait_job(client, r.json()["job"])
    assert job["state"] == "succeeded" and job["level"] == "STUDY" and job["completed"] == 2
    assert_archived_like_orthanc(env, env["study2"], s_two, f_two)


def test_retrieve_of_what_the_peer_does_not_have_fails_with_a_reason(
        env: dict[str, Any]) -> None:
    client = env["client"]
    missing = generate_uid()
    for body in ({"StudyInstanceUID": env["study1"], "SeriesInstanceUID": missing},
                 {"StudyInstanceUID": env["study1"], "SeriesInstanceUID": missing,
                  "method": "get"},
                 {"SeriesInstanceUID": missing}):
        r = client.post("/api/v1/nodes/ORTHANC/retrieve", json=body)
        assert r.status_code == 202
        job = wait_job(client, r.json()["job"])
        assert job["state"] == "failed", (body, job)
        assert job["error"] and "ORTHANC@" in job["error"], (body, job)
        assert job["completed"] == 0
    assert findscu_sops(env["server"], env["study1"], missing) == []


def test_retrieve_validation(env: dict[str, Any]) -> None:
    client = env["client"]
    for body, word in (({}, "StudyInstanceUID"),
                       ({"level": "SERIES", "StudyInstanceUID": env["study1"]},
                        "SeriesInstanceUID"),
                       ({"SeriesInstanceUID": "1.2.x"}, "valid UID"),
                       ({"SeriesInstanceUID": "1.2.3", "method": "teleport"}, "method"),
                       ({"level": "IMAGE", "SeriesInstanceUID": "1.2.3"}, "level")):
        r = client.post("/api/v1/nodes/ORTHANC/retrieve", json=body)
        assert r.status_code == 400, (body, r.text)
        assert word in r.json()["error"], (body, r.json())
    r = client.post("/api/v1/nodes/NOPE/retrieve", json={"SeriesInstanceUID": "1.2.3"})
    assert r.status_code == 404


def test_job_listing(env: dict[str, Any]) -> None:
    client = env["client"]
    listed = client.get("/api/v1/jobs").json()["jobs"]
    assert len(listed) >= 6
    created = [j["created"] for j in listed]
    assert created == sorted(created, reverse=True)
    succeeded = client.get("/api/v1/jobs", params={"state": "succeeded"}).json()["jobs"]
    assert succeeded and all(j["state"] == "succeeded" for j in succeeded)
    by_series = client.get("/api/v1/jobs",
                           params={"series_uid": env["move"][0]}).json()["jobs"]
    assert by_series and all(j["series_uid"] == env["move"][0] for j in by_series)
    assert len(client.get("/api/v1/jobs", params={"limit": 2}).json()["jobs"]) == 2
    one = client.get(f"/api/v1/jobs/{listed[0]['id']}").json()
    assert one == listed[0] or one["id"] == listed[0]["id"]
    # A finished job cannot be canceled.
    r = client.delete(f"/api/v1/jobs/{succeeded[0]['id']}")
    assert r.status_code == 409 and "succeeded" in r.json()["error"]


def test_cancel_a_long_retrieve(env: dict[str, Any]) -> None:
    client = env["client"]
    s_big, _ = env["big"]
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study3"], "SeriesInstanceUID": s_big})
    job_id = r.json()["job"]
    job = wait_job(client, job_id, lambda j: j["completed"] >= 5 or j["state"] in TERMINAL,
                   interval=0.005)
    assert job["state"] == "running", job
    assert job["owner"] and job["started"]
    r = client.delete(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "canceled", job
    assert job["cancel_requested"] is True
    assert job["completed"] < BIG and (job["remaining"] or 0) > 0, job
    # It stays canceled, and the archive holds exactly what was completed.
    time.sleep(0.5)
    again = client.get(f"/api/v1/jobs/{job_id}").json()
    assert again["state"] == "canceled" and again["completed"] == job["completed"]
    stored = findscu_sops(env["server"], env["study3"], s_big)
    assert job["completed"] <= len(stored) < BIG


# ------------------------------------------------------------------ restart

def test_job_left_running_by_a_killed_serve_fails_after_restart(
        env: dict[str, Any], pacsnode_factory: Any, tmp_path: Path) -> None:
    orthanc: Orthanc = env["orthanc"]
    config = tmp_path / "k.toml"
    config.write_text(toml(orthanc, fsync=False))
    server = pacsnode_factory(aet="PNKILL", config=str(config))
    orthanc.client.put("/modalities/PNKILL",
                       json=["PNKILL", "127.0.0.1", server.dicom_port]).raise_for_status()
    client = httpx.Client(base_url=server.base_url, timeout=30)
    s_big, _ = env["big"]
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study3"], "SeriesInstanceUID": s_big})
    job_id = r.json()["job"]
    job = wait_job(client, job_id, lambda j: j["completed"] >= 3 or j["state"] in TERMINAL,
                   interval=0.005)
    assert job["state"] == "running", job
    server.kill()
    server.start()
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed", job
    assert job["error"].startswith("interrupted by restart"), job
    assert job["completed"] >= 3 and job["finished"]
    # The node works on: a new retrieve of the same series completes it.
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study3"], "SeriesInstanceUID": s_big,
                          "method": "get"})
    job = wait_job(client, r.json()["job"], timeout=90)
    assert job["state"] == "succeeded" and job["completed"] == BIG, job
    # A graceful stop (SIGTERM) cancels a running retrieve and says so.
    r = client.post("/api/v1/nodes/ORTHANC/retrieve",
                    json={"StudyInstanceUID": env["study3"], "SeriesInstanceUID": s_big})
    job_id = r.json()["job"]
    wait_job(client, job_id, lambda j: j["completed"] >= 3 or j["state"] in TERMINAL,
             interval=0.005)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 8
    server.start()
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"] == "interrupted by shutdown", job
    assert 3 <= job["completed"] < BIG
    client.close()


# ------------------------------------------------------------------ pfdcm PACSinteract

def test_pfdcm_pacsinteract_query_retrieve_status_tags(env: dict[str, Any]) -> None:
    client, orthanc = env["client"], env["orthanc"]

    def cmd(meta: dict[str, Any], action: str = "PACSinteract") -> httpx.Response:
        return client.post("/api/v1/cmd", json={"payload": {"action": action, "meta": meta}})

    r = cmd({"do": "query", "on": {"PatientID": "APIP2"}, "PACS": "ORTHANC"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] is True and body["query"]["status"] is True
    data = body["query"]["data"]
    theirs = orthanc.post("/tools/find", {"Level": "Series", "Expand": True,  # type: ignore
                                          "Query": {"PatientID": "APIP2"}})
    assert [d["SeriesInstanceUID"] for d in data] == [
        t["MainDicomTags"]["SeriesInstanceUID"] for t in theirs]
    record = data[0]
    assert record["PatientID"] == "APIP2" and record["StudyInstanceUID"] == env["study2"]
    assert record["SeriesDescription"] == "SAG OTHER" and record["Modality"] == "CT"
    assert record["NumberOfSeriesRelatedInstances"] == 2
    r = cmd({"do": "query", "on": {"SeriesDescription": "AX*", "PatientID": "APIP1"},
             "PACS": "ORTHANC"})
    assert [d["SeriesInstanceUID"] for d in r.json()["query"]["data"]] == [env["move"][0]]
    r = cmd({"do": "query", "on": {"Bogus": "1"}, "PACS": "ORTHANC"})
    assert r.status_code == 400 and r.json()["status"] is False

    # retrieve (series only: the study is found by C-FIND) and follow it
    s_two, f_two = env["two"]
    r = cmd({"do": "retrieve", "on": {"series_uid": s_two}, "PACS": "ORTHANC"})
    assert r.status_code == 200, r.text
    retrieve = r.json()["retrieve"]
    assert r.json()["status"] is True and retrieve["status"] is True and retrieve["job"]
    wait_job(client, retrieve["job"])
    r = cmd({"do": "retrieveStatus", "on": {"series_uid": s_two}, "PACS": "ORTHANC"})
    status = r.json()["retrieveStatus"]
    assert r.json()["status"] is True and status["status"] is True
    assert status["job"] == retrieve["job"] and status["state"] == "succeeded"
    assert status["completed"] == 2 and status["failed"] == 0 and status["archived"] == 2
    # and the tags of what arrived, seed shape
    r = cmd({"do": "DICOMtagsGet", "on": {"series_uid": s_two}}, action="internalDB")
    d_dicom = r.json()["DICOMtagsGet"]["d_dicom"]
    first = dcmread(sorted(f_two)[0])
    assert d_dicom == {e.keyword: str(e.value) for e in first
                       if e.keyword and isinstance(e.value, str)}
    r = cmd({"do": "retrieve", "on": {"series_uid": s_two}, "PACS": "NOPE"})
    assert r.status_code == 404 and r.json()["status"] is False
    r = cmd({"do": "retrieve", "on": {}, "PACS": "ORTHANC"})
    assert r.status_code == 400 and "series_uid" in r.json()["message"]

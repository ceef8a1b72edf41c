"""Two `pacsnode serve` processes, one PostgreSQL, one blob root, one
configuration: one node (DESIGN §12).  A real Orthanc plays the hospital
PACS; it knows the cluster by its `cluster_ae_title`, whose address is
process A's (what a load balancer in front of both would give it)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

from conftest import PacsnodeServer, storescu
from dicomfiles import make_ct
from orthanc_peer import Orthanc, start_orthanc
from test_automation_stable import recording_script, runs, wait_until
from test_ups import DICOM_JSON, workitem
from test_ups_race import CLIENTS, _claim_race

CLUSTER_AET = "CLUSTER"
ROUNDS = 20


def config_text(orthanc: Orthanc, script: Path, **extra: Any) -> str:
    lines = ["fsync = false", f'cluster_ae_title = "{CLUSTER_AET}"',
             "stable_study_seconds = 1", f'on_stable_study = "{script} {{study_uid}}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += ["[nodes.ORTHANC]", f'aet = "{orthanc.aet}"', 'host = "127.0.0.1"',
              f"port = {orthanc.dicom_port}"]
    return "\n".join(lines) + "\n"


class Cluster:
    def __init__(self, a: PacsnodeServer, b: PacsnodeServer, orthanc: Orthanc,
                 work: Path, log: Path, url: str) -> None:
        self.a, self.b, self.orthanc, self.work, self.log, self.url = a, b, orthanc, work, log, url

    def fired(self, study: str) -> int:
        return sum(1 for r in runs(self.log) if r[-1] == study)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cluster")
    url = postgres.new_database()
    data = work / "data"
    data.mkdir()
    script, log = recording_script(work)
    with start_orthanc(work / "orthanc") as orthanc:
        config = work / "pacsnode.toml"
        config.write_text(config_text(orthanc, script))
        a = PacsnodeServer(data, aet="NODE_A", database_url=url, config=str(config))
        b = PacsnodeServer(data, aet="NODE_B", database_url=url, config=str(config))
        # The PACS knows the cluster by one AE title at A's address.
        orthanc.client.put(f"/modalities/{CLUSTER_AET}", json={
            "AET": CLUSTER_AET, "Host": "127.0.0.1", "Port": a.dicom_port}).raise_for_status()
        a.start()
        b.start()
        try:
            yield Cluster(a, b, orthanc, work, log, url)
        finally:
            a.stop()
            b.stop()


def test_a_process_with_another_configuration_refuses_to_join(cluster: Cluster) -> None:
    other = cluster.work / "other.toml"
    other.write_text(config_text(cluster.orthanc, cluster.work / "x.sh",
                                 duplicate_policy="reject"))
    third = PacsnodeServer(cluster.work / "data", aet="NODE_C", database_url=cluster.url,
                           config=str(other))
    with pytest.raises(RuntimeError) as info:
        third.start(timeout=20)
    message = str(info.value)
    assert "configuration differs" in message and "duplicate_policy" in message
    assert "on_stable_study" in message
    assert "NODE_A" in message or "NODE_B" in message
    third.stop()


def test_what_one_stores_the_other_finds_retrieves_and_feeds(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    study = generate_uid()
    files = [tmp_path / f"{n}.dcm" for n in range(3)]
    for n, f in enumerate(files):
        make_ct(f, study_uid=study, instance=n + 1, patient_id="CLU1", size=8)
    storescu(cluster.a, files)
    with httpx.Client(timeout=30) as http:
        r = http.get(f"{cluster.b.base_url}/dicomweb/studies/{study}/instances")
        assert r.status_code == 200
        assert {i["00080018"]["Value"][0] for i in r.json()} == \
            {dcmread(f).SOPInstanceUID for f in files}
        sop = dcmread(files[1]).SOPInstanceUID
        r = http.get(f"{cluster.b.base_url}/dicomweb/studies/{study}/series/"
                     f"{dcmread(files[1]).SeriesInstanceUID}/instances/{sop}",
                     headers={"Accept": 'multipart/related; type="application/dicom"; '
                                        'transfer-syntax=*'})
        assert r.status_code == 200
        assert dcmread(files[1]).PixelData in r.content
        feeds = [http.get(f"{s.base_url}/api/v1/changes", params={"limit": 1000}).json()
                 for s in (cluster.a, cluster.b)]
        assert feeds[0] == feeds[1]
    # C-FIND through B.
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", cluster.b.dicom_port, ae_title=cluster.b.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "CLU1"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    found = [ident for status, ident in assoc.send_c_find(
        query, StudyRootQueryRetrieveInformationModelFind) if status.Status == 0xFF00]
    assoc.release()
    assert [(d.StudyInstanceUID, int(d.NumberOfStudyRelatedInstances)) for d in found] == \
        [(study, 3)]


def test_a_delete_through_b_is_seen_by_a(cluster: Cluster, tmp_path: Path) -> None:
    study = generate_uid()
    f = tmp_path / "d.dcm"
    make_ct(f, study_uid=study, size=8)
    storescu(cluster.a, [f])
    with httpx.Client(timeout=30) as http:
        assert http.delete(f"{cluster.b.base_url}/dicomweb/studies/{study}").status_code \
            in (200, 204)
        r = http.get(f"{cluster.a.base_url}/dicomweb/studies",
                     params={"StudyInstanceUID": study})
        assert r.status_code == 204


def test_a_study_sent_to_both_fires_once(cluster: Cluster, tmp_path: Path) -> None:
    study = generate_uid()
    files = [tmp_path / f"{n}.dcm" for n in range(4)]
    for n, f in enumerate(files):
        make_ct(f, study_uid=study, instance=n + 1, size=8)
    storescu(cluster.a, files[:2])
    storescu(cluster.b, files[2:])
    wait_until(lambda: cluster.fired(study), 20, "the stable-study trigger")
    time.sleep(2.5)  # a second firing would come within this
    assert cluster.fired(study) == 1


def test_delete_then_resend_at_once_always_fires(cluster: Cluster, tmp_path: Path) -> None:
    """Send one instance of a new study, delete the study, send it again at
    once (within the 0.5 s coalescing window), through B and through A:
    every round's study fires exactly once."""
    studies: list[str] = []
    with httpx.Client(timeout=30) as http:
        for n in range(ROUNDS):
            server = cluster.b if n % 2 else cluster.a
            study = generate_uid()
            f = tmp_path / f"r{n}.dcm"
            make_ct(f, study_uid=study, size=8)
            storescu(server, [f])
            deleter = cluster.a if n % 4 < 2 else cluster.b
            assert http.delete(f"{deleter.base_url}/dicomweb/studies/{study}").status_code \
                in (200, 204)
            storescu(server, [f])
            studies.append(study)
    wait_until(lambda: all(cluster.fired(s) for s in studies), 60, "every round's trigger")
    time.sleep(2)
    assert [cluster.fired(s) for s in studies] == [1] * ROUNDS


def test_ups_claim_race_across_both(cluster: Cluster) -> None:
    bases = [f"{s.base_url}/dicomweb" for s in (cluster.a, cluster.b)]
    uid = "1.2.826.0.1.3680043.8.498.9" + str(int(time.time()))
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{bases[0]}/workitems?{uid}", content=json.dumps(workitem()),
                      headers=DICOM_JSON)
        assert r.status_code == 201, r.text
    statuses, winners, _ = _claim_race(bases, uid)
    assert sorted(statuses) == [200] + [400] * (CLIENTS - 1)
    assert len(winners) == 1


def test_a_burst_of_move_jobs_all_succeed_whoever_runs_them(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    """Six C-MOVE retrieve jobs at once, ROUNDS times: every one asks Orthanc
    to send to the cluster's AE title and succeeds, whichever process runs
    it.  Even rounds are posted to A's REST API (A's own workers, woken at
    once, usually take them all: a move of an already stored study is a
    few milliseconds); odd rounds are queued in the shared database by a
    third party — this test process, as a `pacsnode` command on another
    host would — so both A's and B's workers find them by polling, and B
    must run some of them."""
    from pacsnode.config import load_settings
    from pacsnode.node import Node
    from pacsnode.remote import jobs as job_table

    uids: list[str] = []
    files = []
    for n in range(6):
        study = generate_uid()
        f = tmp_path / f"m{n}.dcm"
        make_ct(f, study_uid=study, patient_id=f"MOVE{n}", size=8)
        files.append(f)
        uids.append(study)
    cluster.orthanc.upload(files)
    owners: list[str] = []
    third = Node(load_settings(cluster.work / "pacsnode.toml", overrides={
        "data_dir": cluster.work / "data", "database_url": cluster.url}))
    try:
        with httpx.Client(timeout=30) as http:
            for round_ in range(ROUNDS):
                if round_ % 2 == 0:
                    ids = [http.post(f"{cluster.a.base_url}/api/v1/nodes/ORTHANC/retrieve",
                                     json={"level": "STUDY", "StudyInstanceUID": s}).json()["job"]
                           for s in uids]
                else:
                    ids = [job_table.submit(third, node_name="ORTHANC", level="STUDY",
                                            study_uid=s).id for s in uids]

                def done() -> list[dict[str, Any]] | None:
                    jobs = [http.get(f"{cluster.a.base_url}/api/v1/jobs/{i}").json()
                            for i in ids]
                    return jobs if all(j["state"] not in ("pending", "running")
                                       for j in jobs) else None
                jobs = wait_until(done, 60, "the burst of retrieve jobs")
                assert [(j["state"], j["error"], j["destination"]) for j in jobs] == \
                    [("succeeded", None, CLUSTER_AET)] * 6
                owners += [j["owner"] for j in jobs]
    finally:
        third.close()
    pid_b = str(cluster.b.proc.pid)  # type: ignore[union-attr]
    ran_by_b = sum(1 for o in owners if o.split(":")[1] == pid_b)
    assert 0 < ran_by_b < len(owners), f"B ran {ran_by_b} of {len(owners)}"
    with httpx.Client(timeout=30) as http:
        for study in uids:
            r = http.get(f"{cluster.b.base_url}/dicomweb/studies",
                         params={"StudyInstanceUID": study})
            assert r.status_code == 200


def test_kill_9_of_one_during_ingest_loses_nothing_acknowledged(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    study = generate_uid()
    files = []
    for n in range(60):
        f = tmp_path / f"k{n}.dcm"
        make_ct(f, study_uid=study, instance=n + 1, size=64)
        files.append(f)
    acked: list[str] = []
    from pynetdicom.sop_class import CTImageStorage  # type: ignore

    def send() -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", cluster.a.dicom_port, ae_title=cluster.a.aet)
        if not assoc.is_established:
            return
        for f in files:
            ds = dcmread(f)
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                break
            if status and getattr(status, "Status", None) == 0x0000:
                acked.append(ds.SOPInstanceUID)
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(acked) >= 10, 30, "the first acknowledgements")
    cluster.a.kill()
    sender.join(30)
    assert 10 <= len(acked) < 60
    with httpx.Client(timeout=30) as http:
        r = http.get(f"{cluster.b.base_url}/dicomweb/studies/{study}/instances",
                     params={"limit": 1000})
        assert r.status_code == 200
        stored = {i["00080018"]["Value"][0] for i in r.json()}
    assert set(acked) <= stored
    # B keeps serving: it takes the rest of the study.
    storescu(cluster.b, files)
    with httpx.Client(timeout=30) as http:
        r = http.get(f"{cluster.b.base_url}/dicomweb/studies/{study}/instances",
                     params={"limit": 1000})
        assert len(r.json()) == 60
    # A comes back (a new process) and joins again.
    cluster.a.start()

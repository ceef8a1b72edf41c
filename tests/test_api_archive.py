"""REST API on the archive side, with the ASGI app in-process (the wire does
not matter here): series tags, export under the export roots, the pfdcm
``/api/v1/cmd`` actions that need no remote node, jobs bookkeeping (atomic
claims on SQLite and PostgreSQL, restart recovery, pending cancel), and the
OpenAPI document."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import update

from dicomfiles import make_ct
from web_server import WebServer

from pacsnode.config import load_settings
from pacsnode.events import Origin
from pacsnode.index.db import Database
from pacsnode.index.jobs_tables import jobs as jobs_table
from pacsnode.node import Node
from pacsnode import leases
from pacsnode.remote import jobs
from pacsnode.retrieve import locate


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("api-archive")
    root = base / "exports"
    root.mkdir()
    server = WebServer(base / "data", export_roots=[str(root)]).start()
    study = "1.2.826.0.1.3680043.10.1466.77.1"
    series_uid = study + ".2"
    files = []
    # Stored out of order: the "first instance" is the one with InstanceNumber 1.
    for number in (3, 1, 2):
        path = base / "in" / f"{number}.dcm"
        make_ct(path, patient_id="ARCH1", study_uid=study, series_uid=series_uid,
                sop_uid=f"{series_uid}.{number}", instance=number,
                InstitutionName="", ImageType=["ORIGINAL", "PRIMARY"],
                ReferringPhysicianName="Ref^Doc", OperatorsName="")
        files.append(path)
    for path in files:
        result = server.node.ingestor.ingest_path(path, Origin("import"))
        assert result.outcome.ok, result.reason
    client = httpx.Client(base_url=server.base_url, timeout=30)
    yield {"server": server, "client": client, "root": root, "base": base, "study": study,
           "series": series_uid, "files": {f.stem: f for f in files}}
    client.close()
    server.stop()


def pydicom_string_tags(path: Path) -> dict[str, str]:
    """pfdcm's definition: attributes whose pydicom value is a str."""
    ds = dcmread(path)
    return {e.keyword: str(e.value) for e in ds if e.keyword and isinstance(e.value, str)}


# ------------------------------------------------------------------ tags

def test_series_tags_are_the_string_tags_of_the_first_instance(site: dict[str, Any]) -> None:
    r = site["client"].get(f"/api/v1/series/{site['series']}/tags")
    assert r.status_code == 200, r.text
    tags = r.json()
    expected = pydicom_string_tags(site["files"]["1"])
    assert tags == expected
    assert tags["SOPInstanceUID"] == f"{site['series']}.1"
    assert tags["InstitutionName"] == "" and tags["PatientID"] == "ARCH1"
    # not strings in pydicom, so not in pfdcm's answer either
    for absent in ("PatientName", "ReferringPhysicianName", "InstanceNumber", "ImageType",
                   "Rows", "PixelData"):
        assert absent not in tags


def test_series_tags_unknown_and_invalid(site: dict[str, Any]) -> None:
    r = site["client"].get("/api/v1/series/1.2.3.999/tags")
    assert r.status_code == 404 and "not in the archive" in r.json()["error"]
    r = site["client"].get("/api/v1/series/not-a-uid/tags")
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]


# ------------------------------------------------------------------ export

def stored_blobs(site: dict[str, Any]) -> dict[str, bytes]:
    refs = locate(site["server"].node, series_uid=site["series"])
    return {f"{r.sop_instance_uid}.dcm": r.path.read_bytes() for r in refs}


def test_export_inside_a_root_writes_exactly_the_stored_files(site: dict[str, Any]) -> None:
    target = site["root"] / "case1" / "deeper"
    r = site["client"].post(f"/api/v1/series/{site['series']}/export",
                            json={"path": str(target), "create_dir": True})
    assert r.status_code == 200, r.text
    body = r.json()
    blobs = stored_blobs(site)
    assert body["count"] == 3 and sorted(body["files"]) == sorted(blobs)
    assert body["path"] == os.path.realpath(target) and body["anonymized"] is False
    written = {p.name: p.read_bytes() for p in target.iterdir()}
    assert written == blobs  # exactly these files, byte for byte, no temp left
    assert body["bytes"] == sum(len(b) for b in blobs.values())


def test_export_needs_create_dir_for_a_missing_folder(site: dict[str, Any]) -> None:
    target = site["root"] / "missing"
    r = site["client"].post(f"/api/v1/series/{site['series']}/export",
                            json={"path": str(target), "create_dir": False})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    assert not target.exists()


def test_export_outside_the_roots_is_forbidden(site: dict[str, Any]) -> None:
    base: Path = site["base"]
    root: Path = site["root"]
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(base / "nowhere")
    attempts = {
        "absolute elsewhere": str(base / "elsewhere"),
        "dot-dot": str(root / ".." / "escaped"),
        "dot-dot back inside": str(root / "x" / ".." / "y"),
        "symlink out": str(root / "link"),
        "below a symlink out": str(root / "link" / "sub"),
        "dangling symlink out": str(root / "dangling"),
        "relative": "exports/rel",
        "root's parent": str(base),
    }
    for label, path in attempts.items():
        r = site["client"].post(f"/api/v1/series/{site['series']}/export",
                                json={"path": path, "create_dir": True})
        assert r.status_code == 403, (label, r.text)
        assert r.json()["error"], label
    assert list(outside.iterdir()) == []
    for name in ("elsewhere", "escaped", "nowhere"):
        assert not (base / name).exists(), name
    assert not Path("exports/rel").exists() and not (root / "rel").exists()
    assert not (root / "x").exists() and not (root / "y").exists()


def test_export_never_writes_through_a_symlinked_file(site: dict[str, Any]) -> None:
    base: Path = site["base"]
    victim = base / "victim.txt"
    victim.write_bytes(b"precious")
    target = site["root"] / "case2"
    target.mkdir()
    name = f"{site['series']}.1.dcm"
    (target / name).symlink_to(victim)
    r = site["client"].post(f"/api/v1/series/{site['series']}/export",
                            json={"path": str(target)})
    assert r.status_code == 200, r.text
    assert victim.read_bytes() == b"precious"
    assert not (target / name).is_symlink()
    assert (target / name).read_bytes() == stored_blobs(site)[name]


def test_export_unknown_series_and_no_roots(site: dict[str, Any]) -> None:
    client = site["client"]
    r = client.post("/api/v1/series/1.2.3.999/export", json={"path": str(site["root"])})
    assert r.status_code == 404
    r = client.post(f"/api/v1/series/{site['series']}/export", json={"pathx": "/tmp"})
    assert r.status_code == 400 and "path" in r.json()["error"]
    settings = site["server"].node.settings
    saved = settings.export_roots
    settings.export_roots = []
    try:
        r = client.post(f"/api/v1/series/{site['series']}/export",
                        json={"path": str(site["root"] / "z")})
        assert r.status_code == 403 and "no export_roots" in r.json()["error"]
    finally:
        settings.export_roots = saved
    assert not (site["root"] / "z").exists()


def test_export_anonymized(site: dict[str, Any]) -> None:
    target = site["root"] / "anon"
    r = site["client"].post(f"/api/v1/series/{site['series']}/export",
                            json={"path": str(target), "anonymize": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["anonymized"] is True and body["count"] == 3
    originals = {f"{site['series']}.{n}" for n in (1, 2, 3)}
    written = sorted(target.iterdir())
    assert [p.name for p in written] == sorted(body["files"])
    for path in written:
        ds = dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert str(ds.SOPInstanceUID) not in originals
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID != "ARCH1"
    assert len({dcmread(p).SeriesInstanceUID for p in written}) == 1


# ------------------------------------------------------------------ pfdcm /cmd (local)

def test_cmd_dicomtagsget_in_the_seed_shape(site: dict[str, Any]) -> None:
    client = site["client"]
    msg = {"action": "internalDB",
           "meta": {"do": "DICOMtagsGet", "on": {"series_uid": site["series"]}}}
    wrapped = client.post("/api/v1/cmd", json={"payload": msg})
    bare = client.post("/api/v1/cmd", json=msg)
    assert wrapped.status_code == bare.status_code == 200
    body = wrapped.json()
    assert body == bare.json()
    assert set(body) == {"status", "DICOMtagsGet"} and body["status"] is True
    assert set(body["DICOMtagsGet"]) == {"status", "d_dicom"}
    assert body["DICOMtagsGet"]["status"] is True
    assert body["DICOMtagsGet"]["d_dicom"] == pydicom_string_tags(site["files"]["1"])
    r = client.post("/api/v1/cmd", json={"payload": {
        "action": "internalDB", "meta": {"do": "DICOMtagsGet",
                                         "on": {"series_uid": "1.2.3.999"}}}})
    assert r.status_code == 404
    assert r.json()["status"] is False and r.json()["DICOMtagsGet"]["status"] is False


def test_cmd_pullpath(site: dict[str, Any]) -> None:
    client = site["client"]
    target = site["root"] / "pulled"
    r = client.post("/api/v1/cmd", json={"payload": {"action": "pullPath", "meta": {
        "on": {"series_uid": site["series"]},
        "to": {"path": str(target), "createDir": True}}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] is True and body["pullPath"]["status"] is True
    assert body["pullPath"]["count"] == 3 and body["pullPath"]["path"] == str(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == stored_blobs(site)
    escape = site["base"] / "pull-escape"
    r = client.post("/api/v1/cmd", json={"payload": {"action": "pullPath", "meta": {
        "on": {"series_uid": site["series"]}, "to": {"path": str(escape), "createDir": True}}}})
    assert r.status_code == 403
    assert r.json()["status"] is False and r.json()["pullPath"]["status"] is False
    assert not escape.exists()


def test_cmd_bad_requests(site: dict[str, Any]) -> None:
    client = site["client"]
    r = client.post("/api/v1/cmd", json={"payload": {"action": "frobnicate", "meta": {}}})
    assert r.status_code == 400
    assert r.json()["status"] is False and "unknown action" in r.json()["message"]
    r = client.post("/api/v1/cmd", json={"nothing": 1})
    assert r.status_code == 400 and r.json()["status"] is False
    r = client.post("/api/v1/cmd", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["status"] is False
    r = client.post("/api/v1/cmd", json={"action": "PACSinteract",
                                         "meta": {"do": "query", "PACS": "NOPE", "on": {}}})
    assert r.status_code == 404 and "NOPE" in r.json()["message"]
    r = client.post("/api/v1/cmd", json={"action": "PACSinteract", "meta": {"do": "dance"}})
    assert r.status_code == 400 and "unknown 'do'" in r.json()["message"]
    r = client.post("/api/v1/cmd", json={"action": "hello"})
    assert r.status_code == 200 and r.json()["hello"]["name"] == "pacsnode"


def test_cmd_retrieve_status_of_an_archived_series(site: dict[str, Any]) -> None:
    r = site["client"].post("/api/v1/cmd", json={"payload": {
        "action": "PACSinteract", "meta": {"do": "retrieveStatus",
                                           "on": {"series_uid": site["series"]}}}})
    assert r.status_code == 200, r.text
    status = r.json()["retrieveStatus"]
    assert status["status"] is True and status["archived"] == 3 and "job" not in status
    r = site["client"].post("/api/v1/cmd", json={"payload": {
        "action": "PACSinteract", "meta": {"do": "retrieveStatus",
                                           "on": {"series_uid": "1.2.3.999"}}}})
    assert r.json()["retrieveStatus"]["status"] is False
    assert r.json()["retrieveStatus"]["archived"] == 0


# ------------------------------------------------------------------ jobs bookkeeping

def test_pending_job_cancel_and_listing(site: dict[str, Any]) -> None:
    """No workers run in this process: jobs stay pending, so a cancel is immediate."""
    client = site["client"]
    r = client.put("/api/v1/nodes/FAR", json={"aet": "FAR", "host": "127.0.0.1", "port": 9})
    assert r.status_code in (200, 201)
    ids = []
    for n in range(3):
        r = client.post("/api/v1/nodes/FAR/retrieve",
                        json={"level": "SERIES", "SeriesInstanceUID": f"1.2.3.{n}",
                              "method": "get" if n else "move"})
        assert r.status_code == 202 and r.headers["location"] == f"/api/v1/jobs/{r.json()['job']}"
        ids.append(r.json()["job"])
        time.sleep(0.002)
    listed = client.get("/api/v1/jobs", params={"node": "FAR"}).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]  # newest first
    assert client.get("/api/v1/jobs", params={"node": "FAR", "limit": 2}).json()["jobs"] \
        == listed[:2]
    job = client.get(f"/api/v1/jobs/{ids[1]}").json()
    assert job["state"] == "pending" and job["method"] == "get" and job["level"] == "SERIES"
    assert job["series_uid"] == "1.2.3.1" and job["study_uid"] is None
    r = client.delete(f"/api/v1/jobs/{ids[1]}")
    assert r.status_code == 200 and r.json()["state"] == "canceled"
    assert r.json()["error"] == "canceled before it started"
    assert client.delete(f"/api/v1/jobs/{ids[1]}").status_code == 200  # idempotent
    assert client.get("/api/v1/jobs", params={"state": "canceled", "node": "FAR"}) \
        .json()["jobs"][0]["id"] == ids[1]
    assert client.get("/api/v1/jobs/nope").status_code == 404
    assert client.delete("/api/v1/jobs/nope").status_code == 404
    assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 400
    assert client.get("/api/v1/jobs", params={"state": "sleeping"}).status_code == 400
    for job_id in ids:
        client.delete(f"/api/v1/jobs/{job_id}")


def _node_on(url: str, data_dir: Path) -> Node:
    return Node(load_settings(overrides={"data_dir": data_dir, "database_url": url,
                                         "fsync": False}, environ={}))


def test_claims_are_atomic_across_processes(database_url: str, tmp_path: Path) -> None:
    """Several claimers, each with its own engine (as separate serve processes
    would have), race for the same pending jobs: each job goes to exactly one."""
    node = _node_on(database_url, tmp_path / "d")
    try:
        ids = {jobs.submit(node, node_name="X", level="SERIES", series_uid=f"1.2.{n}").id
               for n in range(24)}
        claimed: dict[str, list[str]] = {}
        lock = threading.Lock()
        start = threading.Barrier(4)

        def claimer(k: int) -> None:
            db = Database(node.settings.index_url)
            owner = f"test:{k}:x"
            start.wait()
            try:
                while (job := jobs.claim_next(db, owner)) is not None:
                    with lock:
                        claimed.setdefault(job.id, []).append(owner)
            finally:
                db.dispose()

        threads = [threading.Thread(target=claimer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(claimed) == ids
        assert all(len(owners) == 1 for owners in claimed.values())
        states = {j.state for j in jobs.list_jobs(node.db, limit=100)}
        assert states == {"running"}
    finally:
        node.close()


def test_recovery_of_jobs_left_running(tmp_path: Path) -> None:
    node = Node(load_settings(overrides={"data_dir": tmp_path / "d", "fsync": False},
                              environ={}))
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        a = jobs.submit(node, node_name="X", level="SERIES", series_uid="1.2.1")
        b = jobs.submit(node, node_name="X", level="SERIES", series_uid="1.2.2")
        c = jobs.submit(node, node_name="X", level="SERIES", series_uid="1.2.3")
        owners = {a.id: f"{leases.HOST}:{dead.pid}:dead", b.id: "otherhost:1:x",
                  c.id: f"{leases.HOST}:{os.getpid()}:alive"}
        with node.db.write() as conn:
            for job_id, owner in owners.items():
                conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(
                    state="running", owner=owner, lease_until=time.time() + 3600))
        me = f"{leases.HOST}:{os.getpid()}:alive"
        assert jobs.recover(node.db, me) == 1  # c is our own (alive) claim
        got = jobs.get_job(node.db, a.id)
        assert got is not None and got.state == "failed"
        assert got.error.startswith("interrupted by restart")
        assert jobs.get_job(node.db, b.id).state == "running"  # type: ignore[union-attr]
        # Another host's job fails only once its lease has run out.
        assert jobs.reap_expired(node.db) == 0
        with node.db.write() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == b.id)
                         .values(lease_until=time.time() - 1))
        assert jobs.reap_expired(node.db) == 1
        got = jobs.get_job(node.db, b.id)
        assert got is not None and got.state == "failed" and "lease" in got.error
        # A restart that got our pid (a container's pid 1) is not "alive".
        assert jobs.recover(node.db, f"{leases.HOST}:{os.getpid()}:newlife") == 1
        assert jobs.get_job(node.db, c.id).state == "failed"  # type: ignore[union-attr]
    finally:
        node.close()


# ------------------------------------------------------------------ OpenAPI

def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        assert name in spec["components"]["schemas"], f"dangling $ref {schema['$ref']}"
        return spec["components"]["schemas"][name]  # type: ignore[no-any-return]
    return schema


def test_openapi_documents_every_api_route(site: dict[str, Any]) -> None:
    from fastapi.routing import APIRoute

    from pacsnode.web.api import router

    spec = site["client"].get("/api/v1/openapi.json").json()
    paths = spec["paths"]
    ours = [r for r in router.routes if isinstance(r, APIRoute)]
    assert len(ours) >= 13
    for route in ours:
        assert route.path.startswith("/api/v1/")
        for method in route.methods:
            op = paths.get(route.path, {}).get(method.lower())
            where = f"{method} {route.path}"
            assert op is not None, f"{where} is not in the OpenAPI document"
            assert op.get("summary"), f"{where} has no summary"
            assert op.get("tags"), f"{where} has no tag"
            responses = op["responses"]
            assert "422" not in responses, f"{where} documents 422; it answers 400"
            ok = [c for c in responses if c.startswith("2")]
            assert ok, f"{where} documents no success status"
            for code in ok:
                if code == "204":
                    continue
                schema = responses[code]["content"]["application/json"]["schema"]
                assert _resolve(spec, schema), f"{where} {code} has an empty schema"
            for code, entry in responses.items():
                if code[0] in "45" or code == "default":
                    schema = _resolve(spec, entry["content"]["application/json"]["schema"])
                    assert schema.get("properties"), f"{where} {code} has no error schema"
            if route.body_field is not None:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                resolved = _resolve(spec, body)
                assert resolved.get("properties"), f"{where} request body undocumented"
            for param in route.dependant.path_params + route.dependant.query_params:
                names = {p["name"] for p in op.get("parameters", [])}
                assert param.alias in names, f"{where}: parameter {param.alias} undocumented"
    # Every /api/v1 path the app serves is in the document.
    from pacsnode.web.app import create_app
    app = create_app(site["server"].node)
    served = {r.path for r in app.routes if isinstance(r, APIRoute)
              and r.path.startswith("/api/v1/") and r.include_in_schema}
    assert served <= set(paths)
    # Spot checks of the contract.
    assert paths["/api/v1/nodes/{name}/retrieve"]["post"]["responses"].keys() >= {"202"}
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert {"id", "state", "completed", "failed", "remaining", "error"} <= set(job)
    assert set(job["state"]["enum"]) == {"pending", "running", "succeeded", "failed",
                                         "canceled"}
    node_in = spec["components"]["schemas"]["NodeIn"]
    assert set(node_in["required"]) == {"aet", "host", "port"}
    assert node_in["properties"]["aet"]["maxLength"] == 16

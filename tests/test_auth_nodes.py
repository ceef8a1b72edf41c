"""Nodes registered over HTTP carry the access keys of `[nodes.NAME]`
(DESIGN.md §8): `allow` (what their AE may do when it calls us from their
host, checked by the DIMSE policy — shown with DCMTK's tools) and `tls`
(our associations to them use DICOM TLS — shown against DCMTK's
`storescp +tls` as a C-MOVE destination and with the echo of the API);
both kept in the index's `nodes` table, which an index of an earlier
release gains when it is opened."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from conftest import dcmtk, free_port
from pacsnode.access.dimse_gate import POLICY_SECONDS
from dicomfiles import dataset_bytes, make_ct
from test_auth_dimse import NOT_AUTHORIZED, _out
from test_dimse import run
from test_tls import TlsPacsnode, _tls_config, pki, tls_storescp  # noqa: F401 (fixtures)
from tls_pki import Pki

ALL = ["echo", "store", "find", "get", "move"]


def _settle() -> None:
    """Wait until every DIMSE process uses the registry as changed (each
    rebuilds its policy when it is older than POLICY_SECONDS)."""
    time.sleep(POLICY_SECONDS + 0.5)


def test_registered_allow_is_the_dimse_policy(pacsnode_factory, tmp_path: Path) -> None:
    config = tmp_path / "closed.toml"
    config.write_text("dimse_unknown_ae = []\n")
    node = pacsnode_factory(config=str(config))
    port = str(node.dicom_port)
    url = node.base_url + "/api/v1/nodes/MOD"
    ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-ALLOW")
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"

    def echo() -> subprocess.CompletedProcess[str]:
        return run(dcmtk("echoscu"), "-v", "-aet", "MOD", "-aec", node.aet, "127.0.0.1", port,
                   check=False)

    def store() -> subprocess.CompletedProcess[str]:
        return run(dcmtk("storescu"), "-v", "-aet", "MOD", "-aec", node.aet, "127.0.0.1",
                   port, str(tmp_path / "ct.dcm"), check=False)

    # Not registered yet: an unknown AE, and unknown AEs may do nothing.
    assert "Calling AE Title Not Recognized" in _out(echo())

    # Registered with allow = ["echo"]: echo yes, store 0x0124.
    r = httpx.put(url, json={"aet": "MOD", "host": "127.0.0.1", "port": 104,
                             "allow": ["echo"]}, timeout=30)
    assert r.status_code == 201, r.text
    assert (r.json()["allow"], r.json()["tls"]) == (["echo"], False)
    got = httpx.get(url, timeout=30).json()
    assert (got["allow"], got["tls"], got["source"]) == (["echo"], False, "runtime")
    _settle()
    assert "Received Echo Response (Success)" in _out(echo())
    refused = store()
    assert NOT_AUTHORIZED.search(_out(refused)), _out(refused)
    assert not blob.exists()

    # Replaced with store too (in any order: kept in the usual one): stored.
    r = httpx.put(url, json={"aet": "MOD", "host": "127.0.0.1", "port": 104,
                             "allow": ["store", "echo"]}, timeout=30)
    assert r.status_code == 200 and r.json()["allow"] == ["echo", "store"], r.text
    _settle()
    assert store().returncode == 0
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "ct.dcm")

    # allow = []: its associations are rejected, as the TOML's would be.
    r = httpx.put(url, json={"aet": "MOD", "host": "127.0.0.1", "port": 104, "allow": []},
                  timeout=30)
    assert r.status_code == 200 and r.json()["allow"] == []
    _settle()
    assert "Calling AE Title Not Recognized" in _out(echo())
    assert "association from MOD at 127.0.0.1" in node.log()

    # Registered with another host: MOD calling from here is unknown again.
    r = httpx.put(url, json={"aet": "MOD", "host": "192.0.2.7", "port": 104}, timeout=30)
    assert r.status_code == 200 and r.json()["allow"] == ALL
    _settle()
    assert "Calling AE Title Not Recognized" in _out(echo())

    # Bad values are refused with the reason; nothing changes.
    for body, word in (({"allow": ["echo", "delete"]}, "allow"),
                       ({"allow": "echo"}, "allow"),
                       ({"tls": "yes"}, "tls")):
        r = httpx.put(url, json={"aet": "MOD", "host": "127.0.0.1", "port": 104, **body},
                      timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert word in r.json()["error"], (body, r.json())
    assert httpx.get(url, timeout=30).json()["host"] == "192.0.2.7"


def test_registered_tls_node_with_dcmtk(pki: Pki, tls_storescp: tuple[int, Path],  # noqa: F811
                                        tmp_path: Path) -> None:
    scp_port, scp_dir = tls_storescp
    data = tmp_path / "data"
    data.mkdir()
    node = TlsPacsnode(data, config=_tls_config(tmp_path, pki, free_port())).start()
    try:
        ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-TLSNODE")
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(tmp_path / "ct.dcm"))
        url = node.base_url + "/api/v1/nodes/SCP"
        body: dict[str, Any] = {"aet": "TLSSCP", "host": "localhost", "port": scp_port}

        # Without tls: a plain association to a TLS port gets nowhere.
        assert httpx.put(url, json=body, timeout=30).status_code == 201
        r = httpx.post(url + "/echo", timeout=60)
        assert r.status_code == 200 and r.json()["ok"] is False, r.text

        # With tls = true: echo, and a C-MOVE to it, go over TLS.
        r = httpx.put(url, json={**body, "tls": True}, timeout=30)
        assert r.status_code == 200 and r.json()["tls"] is True, r.text
        assert httpx.get(url, timeout=30).json()["tls"] is True
        r = httpx.post(url + "/echo", timeout=60)
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        run(dcmtk("movescu"), "-S", "-aec", node.aet, "-aem", "TLSSCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
            "127.0.0.1", str(node.dicom_port))
        moved = [p for p in scp_dir.iterdir() if p.is_file()]
        assert len(moved) == 1 and dcmread(moved[0]).PixelData == ds.PixelData

        # Kept across a restart (the index's nodes table).
        node.stop()
        node.start()
        got = httpx.get(url, timeout=30).json()
        assert (got["tls"], got["allow"], got["port"]) == (True, ALL, scp_port)
    finally:
        node.stop()


def test_an_earlier_nodes_table_gains_allow_and_tls(pacsnode_factory, tmp_path: Path) -> None:
    """An index whose `nodes` table predates the access keys: opened by
    serve, the columns are added; its rows allow everything, without TLS."""
    data = tmp_path / "old"
    data.mkdir()
    with sqlite3.connect(data / "index.sqlite") as db:
        db.execute("CREATE TABLE nodes (name VARCHAR(64) PRIMARY KEY, aet VARCHAR(16) NOT "
                   "NULL, host TEXT NOT NULL, port INTEGER NOT NULL)")
        db.execute("INSERT INTO nodes VALUES ('OLD', 'OLDAE', '127.0.0.1', 104)")
    config = tmp_path / "closed.toml"
    config.write_text("dimse_unknown_ae = []\n")
    node = pacsnode_factory(data_dir=data, config=str(config))
    got = httpx.get(node.base_url + "/api/v1/nodes/OLD", timeout=30).json()
    assert (got["aet"], got["allow"], got["tls"]) == ("OLDAE", ALL, False)
    with sqlite3.connect(data / "index.sqlite") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(nodes)")]
    assert columns[-2:] == ["allow", "tls"]
    ok = run(dcmtk("echoscu"), "-aet", "OLDAE", "-aec", node.aet, "127.0.0.1",
             str(node.dicom_port))
    assert ok.returncode == 0


def test_an_earlier_nodes_table_upgrades_on_both_databases(database_url: str,
                                                           tmp_path: Path) -> None:
    """The same upgrade on SQLite and PostgreSQL, through the registry and
    what the DIMSE policy reads (Node.remote_nodes); then a row written
    with the new columns reads back."""
    from sqlalchemy import MetaData, Table, create_engine

    from pacsnode.config import Settings
    from pacsnode.index.schema import nodes
    from pacsnode.node import Node
    from pacsnode.remote import registry

    old = MetaData()
    Table("nodes", old, *[c._copy() for c in nodes.columns if c.name not in ("allow", "tls")])
    engine = create_engine(database_url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["nodes"].insert().values(name="OLD", aet="OLDAE",
                                                         host="127.0.0.1", port=104))
    engine.dispose()
    node = Node(Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        old_row = registry.get_node(node, "OLD")
        assert old_row is not None and (old_row.allow, old_row.tls) == (tuple(ALL), False)
        registry.put_node(node, "NEW", "NEWAE", "localhost", 2762, ["find", "echo"], True)
        known = node.remote_nodes()
        assert (known["OLD"].allow, known["OLD"].tls) == (tuple(ALL), False)
        assert (known["NEW"].allow, known["NEW"].tls) == (("echo", "find"), True)
    finally:
        node.close()


def test_a_route_sends_over_tls_to_a_tls_node(pki: Pki,  # noqa: F811
                                              tls_storescp: tuple[int, Path],  # noqa: F811
                                              tmp_path: Path) -> None:
    """A route job's C-STOREs to a node with ``tls = true`` go over TLS (the
    storescp takes nothing else)."""
    scp_port, scp_dir = tls_storescp
    data = tmp_path / "data"
    data.mkdir()
    config = _tls_config(tmp_path, pki, free_port(),
                         "fsync = false\nstable_series_seconds = 1\n"
                         f'[nodes.TLSSCP]\naet = "TLSSCP"\nhost = "localhost"\n'
                         f"port = {scp_port}\ntls = true\n"
                         '[[routes]]\nname = "copy"\non = "stable_series"\n'
                         'send_to = ["TLSSCP"]\n')
    node = TlsPacsnode(data, config=config).start()
    try:
        ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-TLSROUTE")
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(tmp_path / "ct.dcm"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [j for j in httpx.get(node.base_url + "/api/v1/jobs", timeout=30)
                    .json()["jobs"] if j["kind"] == "route"]
            if jobs and jobs[0]["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.3)
        assert [(j["state"], j["completed"]) for j in jobs] == [("succeeded", 1)], jobs
        sent = [p for p in scp_dir.iterdir() if p.is_file()]
        assert len(sent) == 1 and dcmread(sent[0]).PixelData == ds.PixelData
    finally:
        node.stop()

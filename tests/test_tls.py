"""TLS (DESIGN.md §8): HTTPS with tls_cert/tls_key; a DICOM TLS listener on
dicom_tls_port (TLS 1.2+, BCP 195) that requires a client certificate
signed by tls_ca; our own associations to a node with `tls = true` — with
DCMTK (storescu/findscu +tls, storescp +tls as a C-MOVE destination; C-GET
with pynetdicom, DCMTK 3.6.7's getscu having no TLS) and Orthanc's DICOM
TLS.  The certificates are made by the test (tls_pki.py)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from conftest import PacsnodeServer, dcmtk, free_port, stop_process, wait_port
from dicomfiles import dataset_bytes, make_ct
from pacsnode.access.tls import BCP195_CIPHERS
from test_auth_dimse import _events
from test_dimse import run
from tls_pki import Pki, make_pki


class TlsPacsnode(PacsnodeServer):
    """`pacsnode serve` whose HTTP side is HTTPS (trusting the test CA)."""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pki:
    made = make_pki(tmp_path / "pki")
    monkeypatch.setenv("SSL_CERT_FILE", str(made.ca))  # httpx trusts the test CA
    return made


@pytest.fixture
def tls_storescp(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on TLS, asking for a client certificate of the test CA."""
    out = tmp_path / "tls-scp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "--aetitle", "TLSSCP", "--output-directory",
                             str(out), "--accept-all", "+tls", str(pki.server_key),
                             str(pki.server_cert), "+cf", str(pki.ca), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield port, out
    finally:
        stop_process(proc)


def _tls_config(tmp_path: Path, pki: Pki, tls_port: int, nodes: str = "") -> str:
    path = tmp_path / "tls.toml"
    path.write_text(f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
                    f'tls_ca = "{pki.ca}"\ndicom_tls_port = {tls_port}\n' + nodes)
    return str(path)


@pytest.fixture
def tls_node(pki: Pki, tls_storescp: tuple[int, Path], tmp_path: Path) -> Iterator[Any]:
    scp_port, scp_dir = tls_storescp
    tls_port = free_port()
    config = _tls_config(tmp_path, pki, tls_port,
                         f'[nodes.TLSSCP]\naet = "TLSSCP"\nhost = "localhost"\n'
                         f'port = {scp_port}\ntls = true\n')
    data = tmp_path / "data"
    data.mkdir()
    server = TlsPacsnode(data, config=config).start()
    server.tls_port, server.scp_dir = tls_port, scp_dir
    try:
        yield server
    finally:
        server.stop()


def _negotiated(pki: Pki, port: int, version: ssl.TLSVersion | None) -> str:
    """With ``version``, the cipher suite a client capped at that TLS version
    gets from the node; without, the TLS version a current client gets."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    if version is not None:
        context.maximum_version = version
        context.set_ciphers("ALL")  # offer everything: the server chooses
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.cipher()[0] if version is not None else str(tls.version())


def _c_get_over_tls(pki: Pki, node: Any, study: str) -> list[Dataset]:
    """The study's instances, fetched with C-GET on the node's TLS port
    (pynetdicom, presenting the client certificate)."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assoc = ae.associate("127.0.0.1", node.tls_port, ae_title=node.aet,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)],
                         tls_args=(context, "localhost"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    statuses = [status.Status for status, _ in
                assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if status]
    assoc.release()
    assert statuses[-1] == 0x0000, statuses
    return received


def _tls_args(cert: Path, key: Path, ca: Path) -> list[str]:
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def test_https_and_dicom_tls_with_dcmtk(tls_node: Any, pki: Pki, tmp_path: Path) -> None:
    node = tls_node
    # HTTPS, with the node's certificate; plain HTTP on that port gets nowhere.
    r = httpx.get(node.base_url + "/api/v1/health", timeout=10)
    assert r.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{node.http_port}/api/v1/health", timeout=10)
    for port in (node.http_port, node.tls_port):  # TLS 1.2 offered: a BCP 195 suite
        assert _negotiated(pki, port, ssl.TLSVersion.TLSv1_2) in \
            BCP195_CIPHERS.split(":")
    assert _negotiated(pki, node.tls_port, None) == "TLSv1.3"

    ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-TLS")
    study = ds.StudyInstanceUID
    blob = node.data_dir / "studies" / study / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    tls_port = str(node.tls_port)
    client = _tls_args(pki.client_cert, pki.client_key, pki.ca)

    # A client certificate of the CA: store, find, get over TLS.
    run(dcmtk("storescu"), *client, "-aec", node.aet, "127.0.0.1", tls_port,
        str(tmp_path / "ct.dcm"))
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "ct.dcm")
    found = run(dcmtk("findscu"), "-v", *client, "-S", "-aec", node.aet,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                "-k", "PatientID", "127.0.0.1", tls_port)
    assert "PAT-TLS" in found.stdout + found.stderr
    # (DCMTK 3.6.7's getscu and movescu have no TLS: C-GET with pynetdicom.)
    got = _c_get_over_tls(pki, node, study)
    assert [g.SOPInstanceUID for g in got] == [ds.SOPInstanceUID]
    assert got[0].PixelData == ds.PixelData

    # No certificate, another CA's, or no TLS at all: nothing gets in.
    other = make_ct(tmp_path / "other.dcm", patient_id="PAT-NO")
    other_blob = node.data_dir / "studies" / other.StudyInstanceUID
    for how in (["+tla", "-ic"],
                _tls_args(pki.stranger_cert, pki.stranger_key, pki.ca),
                []):
        proc = run(dcmtk("storescu"), *how, "-aec", node.aet, "127.0.0.1", tls_port,
                   str(tmp_path / "other.dcm"), check=False)
        assert proc.returncode != 0, how
    assert not other_blob.exists()
    assert "DICOM TLS connection from 127.0.0.1 refused: TLS handshake failed" in node.log()

    # The plain port still works, and a C-MOVE to a node with tls = true goes over TLS.
    run(dcmtk("movescu"), "-S", "-aec", node.aet, "-aem", "TLSSCP",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(node.dicom_port))
    moved = [p for p in node.scp_dir.iterdir() if p.is_file()]
    assert len(moved) == 1 and dcmread(moved[0]).PixelData == ds.PixelData

    # Three refused handshakes; store, find, get and move recorded.
    events = _events(node, 7)
    alerts = [e for e in events if e["event"] == "Security Alert"]
    assert len(alerts) == 3 and all(e["detail"]["request"] == "TLS handshake" and
                                    e["address"] == "127.0.0.1" for e in alerts)
    assert sorted(e["event"] for e in events if e["event"] != "Security Alert") == [
        "DICOM Instances Transferred"] * 3 + ["Query"]


def test_orthanc_dicom_tls_both_ways(pki: Pki, tmp_path: Path) -> None:
    """Orthanc 1.10 with DicomTlsEnabled as a node with tls = true: our
    C-ECHO and C-FIND reach it over TLS, and it stores to our TLS port
    with its own certificate."""
    from orthanc_peer import start_orthanc
    tls_port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    orthanc_dir = tmp_path / "orthanc"
    extra = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.client_cert),
             "DicomTlsPrivateKey": str(pki.client_key),
             "DicomTlsTrustedCertificates": str(pki.ca),
             "DicomTlsRemoteCertificateRequired": True}
    modalities = {"PACS": {"AET": "PACSNODE", "Host": "127.0.0.1", "Port": tls_port,
                           "UseDicomTls": True}}
    with start_orthanc(orthanc_dir, modalities=modalities, extra=extra) as orthanc:
        config = _tls_config(tmp_path, pki, tls_port,
                             f'[nodes.ORTHANC]\naet = "{orthanc.aet}"\nhost = "localhost"\n'
                             f'port = {orthanc.dicom_port}\ntls = true\n')
        node = TlsPacsnode(data, config=config).start()
        try:
            ds = make_ct(tmp_path / "o.dcm", patient_id="PAT-ORTHANC")
            ids = orthanc.upload([tmp_path / "o.dcm"])
            r = httpx.post(node.base_url + "/api/v1/nodes/ORTHANC/echo", timeout=60)
            assert r.status_code == 200 and r.json()["ok"], r.text
            r = httpx.post(node.base_url + "/api/v1/nodes/ORTHANC/find", timeout=60,
                           json={"level": "STUDY",
                                 "query": {"StudyInstanceUID": ds.StudyInstanceUID,
                                           "PatientID": ""}})
            assert r.status_code == 200, r.text
            assert [m["PatientID"] for m in r.json()["results"]] == ["PAT-ORTHANC"]
            # The DICOMweb gateway's C-FIND goes over TLS too.
            r = httpx.get(node.base_url + "/dicomweb/remote/ORTHANC/studies", timeout=60,
                          params={"StudyInstanceUID": ds.StudyInstanceUID})
            assert r.status_code == 200, r.text
            assert [s["00100020"]["Value"] for s in r.json()] == [["PAT-ORTHANC"]]
            job = orthanc.post("/modalities/PACS/store", {"Resources": ids,
                                                           "Synchronous": True})
            assert job["FailedInstancesCount"] == 0, job
            blob = data / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
                f"{ds.SOPInstanceUID}.dcm"
            deadline = time.monotonic() + 10
            while not blob.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert dcmread(blob).PixelData == ds.PixelData
        finally:
            node.stop()


def test_dicom_tls_served_by_every_dimse_process(pki: Pki, tmp_path: Path) -> None:
    """With dimse_processes = 2 the worker process serves dicom_tls_port
    too: held TLS associations spread over both processes (each takes a
    connection when the other has more), and DCMTK's storescu +tls stores
    beside them."""
    tls_port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    node = TlsPacsnode(data, config=_tls_config(tmp_path, pki, tls_port),
                       extra_env={"PACSNODE_DIMSE_PROCESSES": "2"}).start()
    try:
        deadline = time.monotonic() + 20
        while node.log().count("DICOM TLS listening") < 2:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        ae = AE(ae_title="TLSHOLD")
        ae.add_requested_context("1.2.840.10008.1.1")  # Verification
        held = [ae.associate("127.0.0.1", tls_port, ae_title=node.aet,
                             tls_args=(context, "localhost")) for _ in range(3)]
        assert all(a.is_established for a in held)
        assert all(a.send_c_echo().Status == 0 for a in held)
        pids = {line.rsplit("pid ", 1)[1].rstrip(")") for line in node.log().splitlines()
                if "association accepted: TLSHOLD" in line}
        assert len(pids) == 2, node.log()

        ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-TLS2")
        run(dcmtk("storescu"), *_tls_args(pki.client_cert, pki.client_key, pki.ca),
            "-aec", node.aet, "127.0.0.1", str(tls_port), str(tmp_path / "ct.dcm"))
        blob = data / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
            f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(blob) == dataset_bytes(tmp_path / "ct.dcm")
        # Still TLS only on that port, in every process: plain gets nowhere.
        for _ in range(2):
            plain = run(dcmtk("echoscu"), "-aec", node.aet, "127.0.0.1", str(tls_port),
                        check=False)
            assert plain.returncode != 0
        for a in held:
            a.release()
    finally:
        node.stop()

"""/dicomweb/remote/{node}: DICOMweb in front of a DIMSE-only node (§11),
against a real Orthanc holding studies our archive does not, a running
``pacsnode serve`` (its retrieve workers, access control on), DCMTK findscu
for Orthanc's own C-FIND answer, dicomweb-client, and a pynetdicom peer that
answers C-FIND but refuses every C-MOVE (the failing pull)."""

from __future__ import annotations

import io
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove)

from conftest import PacsnodeServer, cli_token, dcmtk, free_port
from orthanc_peer import Orthanc, start_orthanc
from test_api_gateway import findscu_sops, orthanc_file, write_series
from web_server import dataset_bytes, parse_multipart

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "StudyInstanceUID")


def _refusing_peer(port: int) -> AE:
    """A DIMSE peer whose C-FIND finds whatever is asked for and whose
    C-MOVE knows no destination (0xA801)."""
    ae = AE(ae_title="REFUSER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        answer = Dataset()
        for elem in event.identifier:
            answer.add(elem)
        yield 0xFF00, answer

    def on_move(event: evt.Event) -> Iterator[Any]:
        yield None, None

    ae.start_server(("127.0.0.1", port), block=False,
                    evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)])
    return ae


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("dw-gw")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", aet="PACSNODE")
    refuser_port, down_port = free_port(), free_port()
    refuser = _refusing_peer(refuser_port)
    modalities = {"PACSNODE": ["PACSNODE", "127.0.0.1", server.dicom_port]}
    with start_orthanc(work / "orthanc", modalities=modalities) as orthanc:
        study_a = generate_uid()
        a1, f_a1 = write_series(work / "src", 3, patient_id="GWP1", study_uid=study_a,
                                description="AX GATE", patient_name="Gateway^Alice",
                                study_date="20200301")
        a2, f_a2 = write_series(work / "src", 2, patient_id="GWP1", study_uid=study_a,
                                description="COR GATE", patient_name="Gateway^Alice",
                                study_date="20200301")
        study_b = generate_uid()
        b1, f_b1 = write_series(work / "src", 4, patient_id="GWP2", study_uid=study_b,
                                description="SAG GATE", patient_name="Portal^Bob",
                                study_date="20210704")
        study_c = generate_uid()
        c1, f_c1 = write_series(work / "src", 2, patient_id="GWP3", study_uid=study_c,
                                description="LOC GATE", patient_name="Door^Carol",
                                study_date="20220101")
        orthanc.upload(f_a1 + f_a2 + f_b1 + f_c1)
        config = work / "pacsnode.toml"
        port = orthanc.dicom_port
        config.write_text(
            'auth = "on"\nfsync = false\ngateway_cache_seconds = 30\n'
            f'[nodes.ORTHANC]\naet = "ORTHANC"\nhost = "127.0.0.1"\nport = {port}\n'
            'retrieve_method = "move"\n'
            f'[nodes.ORTHANCGET]\naet = "ORTHANC"\nhost = "127.0.0.1"\nport = {port}\n'
            'retrieve_method = "get"\ngateway_pull = "reader"\n'
            f'[nodes.REFUSER]\naet = "REFUSER"\nhost = "127.0.0.1"\nport = {refuser_port}\n'
            'gateway_pull = "reader"\n'
            f'[nodes.DOWN]\naet = "DOWN"\nhost = "127.0.0.1"\nport = {down_port}\n')
        server.config = str(config)
        reader = cli_token(server, "gw-reader", "reader")
        operator = cli_token(server, "gw-operator", "operator")
        server.start()
        # Orthanc logs each association it accepts once verbose.
        orthanc.client.put("/tools/log-level", content="verbose").raise_for_status()
        clients = {role: httpx.Client(base_url=server.base_url, timeout=120,
                                      headers={"Authorization": f"Bearer {token}"})
                   for role, token in (("reader", reader), ("operator", operator))}
        try:
            yield {"server": server, "orthanc": orthanc, "work": work,
                   "reader": clients["reader"], "operator": clients["operator"],
                   "tokens": {"reader": reader, "operator": operator},
                   "a": (study_a, {a1: f_a1, a2: f_a2}), "b": (study_b, {b1: f_b1}),
                   "c": (study_c, {c1: f_c1})}
        finally:
            for client in clients.values():
                client.close()
            server.stop()
            refuser.shutdown()


def _orthanc_findscu(env: dict[str, Any], level: str, keys: dict[str, str],
                     returns: tuple[str, ...]) -> list[Dataset]:
    """Orthanc's own C-FIND answer, asked by DCMTK findscu (-X: one file per
    response)."""
    orthanc: Orthanc = env["orthanc"]
    out = env["work"] / f"findscu-{time.monotonic_ns()}"
    out.mkdir()
    args = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", orthanc.aet, "-X", "-od",
            str(out), "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    for k in returns:
        if k not in keys:
            args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(orthanc.dicom_port)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _value(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value")


def _associations(orthanc: Orthanc) -> int:
    """Associations Orthanc accepted from pacsnode (its verbose log)."""
    return len(re.findall(r"Association Received from AET PACSNODE ", orthanc.log()))


# ------------------------------------------------------------------ QIDO-RS

def test_qido_studies_equal_orthancs_cfind(env: dict[str, Any]) -> None:
    r = env["reader"].get("/dicomweb/remote/ORTHANC/studies",
                          params={"PatientID": "GWP1", "includefield": "StudyDescription"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    ours = r.json()
    theirs = _orthanc_findscu(env, "STUDY", {"PatientID": "GWP1"}, STUDY_KEYS)
    assert len(ours) == len(theirs) == 1
    expected = theirs[0].to_json_dict()
    for keyword in STUDY_KEYS:
        tag = f"{tag_for_keyword(keyword):08X}"
        assert _value(ours[0], tag) == expected.get(tag, {}).get("Value"), keyword
    study_a = env["a"][0]
    assert _value(ours[0], "0020000D") == [study_a]
    assert _value(ours[0], "00081190") == [
        f"{env['server'].base_url}/dicomweb/remote/ORTHANC/studies/{study_a}"]
    # pacsnode's own archive holds none of it
    assert env["reader"].get("/dicomweb/studies", params={"PatientID": "GWP1"}).status_code \
        == 204


def test_qido_series_wildcard_range_limit_offset(env: dict[str, Any]) -> None:
    study_a, series_a = env["a"]
    client = env["reader"]
    r = client.get(f"/dicomweb/remote/ORTHANC/studies/{study_a}/series")
    assert r.status_code == 200, r.text
    theirs = _orthanc_findscu(env, "SERIES", {"StudyInstanceUID": study_a},
                              ("SeriesInstanceUID", "SeriesDescription",
                               "NumberOfSeriesRelatedInstances"))
    got = {_value(i, "0020000E")[0]: (_value(i, "0008103E"), _value(i, "00201209"))
           for i in r.json()}
    want = {str(d.SeriesInstanceUID): ([d.SeriesDescription],
                                       [int(d.NumberOfSeriesRelatedInstances)])
            for d in theirs}
    assert got == want and set(got) == set(series_a)
    # wildcard on a series attribute, from the top
    r = client.get("/dicomweb/remote/ORTHANC/series", params={"SeriesDescription": "COR*",
                                                               "PatientID": "GWP1"})
    assert r.status_code == 200, r.text
    assert [_value(i, "0008103E") for i in r.json()] == [["COR GATE"]]
    # a date range over the studies of all three patients
    r = client.get("/dicomweb/remote/ORTHANC/studies",
                   params={"StudyDate": "20210101-20221231", "PatientID": "GWP*"})
    assert sorted(_value(i, "00100020")[0] for i in r.json()) == ["GWP2", "GWP3"]
    # limit/offset applied to what the node answered (in its order)
    every = client.get("/dicomweb/remote/ORTHANC/studies", params={"PatientID": "GWP*"}).json()
    assert len(every) == 3
    page = client.get("/dicomweb/remote/ORTHANC/studies",
                      params={"PatientID": "GWP*", "limit": "1", "offset": "1"}).json()
    assert [_value(i, "0020000D") for i in page] == [_value(every[1], "0020000D")]
    # instances of a series, with a RetrieveURL under the gateway
    sa1 = next(iter(series_a))
    r = client.get(f"/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa1}/instances")
    assert r.status_code == 200
    sops = sorted(_value(i, "00080018")[0] for i in r.json())
    assert sops == sorted(str(dcmread(p).SOPInstanceUID) for p in series_a[sa1])
    assert all(_value(i, "00081190")[0].startswith(
        f"{env['server'].base_url}/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa1}/"
        "instances/") for i in r.json())


def test_qido_fuzzy_matching_is_done_here(env: dict[str, Any]) -> None:
    client = env["reader"]
    r = client.get("/dicomweb/remote/ORTHANC/studies",
                   params={"PatientName": "ali", "fuzzymatching": "true"})
    assert r.status_code == 200, r.text
    assert [_value(i, "00100010") for i in r.json()] == [[{"Alphabetic": "Gateway^Alice"}]]
    # without fuzzy matching, "ali" is an exact name nobody has
    r = client.get("/dicomweb/remote/ORTHANC/studies", params={"PatientName": "ali"})
    assert r.status_code == 204


def test_qido_no_match_and_bad_queries(env: dict[str, Any]) -> None:
    client = env["reader"]
    assert client.get("/dicomweb/remote/ORTHANC/studies",
                      params={"PatientID": "NOBODY"}).status_code == 204
    for params in ({"StudyDate": "2020xx"}, {"limit": "abc"}, {"offset": "-1"},
                   {"NoSuchAttribute": "1"}):
        r = client.get("/dicomweb/remote/ORTHANC/studies", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]


def test_the_answer_is_cached_for_a_few_seconds(env: dict[str, Any]) -> None:
    client, orthanc = env["reader"], env["orthanc"]
    params = {"PatientID": "GWP3", "includefield": "StudyDescription"}
    first = client.get("/dicomweb/remote/ORTHANC/studies", params=params)
    assert first.status_code == 200
    before = _associations(orthanc)
    again = client.get("/dicomweb/remote/ORTHANC/studies", params=params)
    assert again.json() == first.json()
    assert _associations(orthanc) == before


# ------------------------------------------------------------------ WADO-RS

def test_wado_series_pulls_by_move_then_serves_locally(env: dict[str, Any]) -> None:
    study_a, series_a = env["a"]
    sa1 = next(iter(series_a))
    client, orthanc, server = env["operator"], env["orthanc"], env["server"]
    url = f"/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa1}"
    r = client.get(url, headers={"Accept": ACCEPT_DICOM})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == 3
    for _headers, body in parts:
        sop = str(dcmread(io.BytesIO(body), stop_before_pixels=True)
                  .SOPInstanceUID)
        theirs = orthanc_file(orthanc, sop)
        assert dataset_bytes(body) == dataset_bytes(theirs), sop
    # they are in the archive now
    expected = sorted(str(dcmread(p).SOPInstanceUID) for p in series_a[sa1])
    assert sorted(findscu_sops(server, study_a, sa1)) == expected
    jobs = client.get("/api/v1/jobs", params={"series_uid": sa1}).json()["jobs"]
    assert [(j["method"], j["state"]) for j in jobs] == [("move", "succeeded")]
    # a second request, and the series' metadata, come from the archive:
    # no new association to Orthanc
    before = _associations(orthanc)
    assert before >= 2  # the C-FIND and the C-MOVE of the pull were counted
    again = client.get(url, headers={"Accept": ACCEPT_DICOM})
    assert [b for _h, b in parse_multipart(again)] == [b for _h, b in parts]
    meta = env["reader"].get(url + "/metadata")
    assert meta.status_code == 200
    assert sorted(_value(m, "00080018")[0] for m in meta.json()) == expected
    assert _associations(orthanc) == before
    assert len(client.get("/api/v1/jobs", params={"series_uid": sa1}).json()["jobs"]) == 1


def test_frames_rendered_thumbnail_through_the_gateway(env: dict[str, Any]) -> None:
    study_a, series_a = env["a"]
    sa2 = list(series_a)[1]
    sop = str(dcmread(series_a[sa2][0]).SOPInstanceUID)
    client = env["operator"]
    base = f"/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa2}/instances/{sop}"
    frames = client.get(base + "/frames/1",
                        headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert frames.status_code == 200, frames.text
    local = client.get(f"/dicomweb/studies/{study_a}/series/{sa2}/instances/{sop}/frames/1",
                       headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert parse_multipart(frames)[0][1] == parse_multipart(local)[0][1]
    assert parse_multipart(frames)[0][1] == dcmread(series_a[sa2][0]).PixelData
    rendered = client.get(base + "/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    thumb = client.get(f"/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa2}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
    # one pull of the series served the three requests
    assert len(client.get("/api/v1/jobs", params={"series_uid": sa2}).json()["jobs"]) == 1


def test_concurrent_requests_share_one_pull(env: dict[str, Any]) -> None:
    """dicomweb-client on a node whose pulls readers may cause (C-GET):
    four requests for one series at once make one job."""
    study_b, series_b = env["b"]
    (sb1, files), = series_b.items()
    sops = [str(dcmread(p).SOPInstanceUID) for p in files]
    client = env["reader"]
    results: dict[str, int] = {}

    def fetch(sop: str) -> None:
        r = client.get(f"/dicomweb/remote/ORTHANCGET/studies/{study_b}/series/{sb1}/"
                       f"instances/{sop}/metadata")
        results[sop] = r.status_code

    threads = [threading.Thread(target=fetch, args=(sop,)) for sop in sops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {sop: 200 for sop in sops}
    jobs = env["operator"].get("/api/v1/jobs", params={"series_uid": sb1}).json()["jobs"]
    assert [(j["method"], j["state"], j["completed"]) for j in jobs] == [("get", "succeeded", 4)]


def test_dicomweb_client_against_the_remote_url(env: dict[str, Any]) -> None:
    study_c, series_c = env["c"]
    (sc1, files), = series_c.items()
    dw = DICOMwebClient(url=f"{env['server'].base_url}/dicomweb/remote/ORTHANCGET",
                        headers={"Authorization": f"Bearer {env['tokens']['reader']}"})
    found = dw.search_for_studies(search_filters={"PatientID": "GWP3"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study_c]
    series_found = dw.search_for_series(study_c)
    assert [s["0020000E"]["Value"][0] for s in series_found] == [sc1]
    datasets = dw.retrieve_series(study_c, sc1)
    assert sorted(str(d.SOPInstanceUID) for d in datasets) == \
        sorted(str(dcmread(p).SOPInstanceUID) for p in files)
    for ds in datasets:
        original = dcmread(next(p for p in files if dcmread(p).SOPInstanceUID
                                == ds.SOPInstanceUID))
        assert ds.PixelData == original.PixelData
    metadata = dw.retrieve_series_metadata(study_c, sc1)
    assert len(metadata) == len(files)


def test_a_reader_may_not_cause_a_pull_where_the_node_says_operator(
        env: dict[str, Any]) -> None:
    study_b, series_b = env["b"]
    study_a, series_a = env["a"]
    sa2 = list(series_a)[1]
    fresh_study, fresh_series = generate_uid(), generate_uid()
    reader = env["reader"]
    # not held here: refused (before the node is even asked)
    r = reader.get(f"/dicomweb/remote/ORTHANC/studies/{fresh_study}/series/{fresh_series}")
    assert r.status_code == 403
    assert "gateway_pull" in r.json()["error"]
    # held here (pulled by an earlier test): a reader reads it
    r = reader.get(f"/dicomweb/remote/ORTHANC/studies/{study_a}/series/{sa2}/metadata")
    assert r.status_code == 200
    # anonymous: 401 as for any route
    assert httpx.get(env["server"].base_url + "/dicomweb/remote/ORTHANC/studies"
                     ).status_code == 401


# ------------------------------------------------------------------ failures

def test_unknown_node_is_404(env: dict[str, Any]) -> None:
    for path in ("/dicomweb/remote/NOPE/studies",
                 f"/dicomweb/remote/NOPE/studies/{generate_uid()}/series/{generate_uid()}"):
        r = env["operator"].get(path)
        assert r.status_code == 404, r.text
        assert "not registered" in r.json()["error"]


def test_what_neither_holds_is_404(env: dict[str, Any]) -> None:
    r = env["operator"].get(f"/dicomweb/remote/ORTHANC/studies/{generate_uid()}/series/"
                            f"{generate_uid()}")
    assert r.status_code == 404
    assert "neither this archive nor node ORTHANC holds" in r.json()["error"]


def test_a_node_that_does_not_answer_is_504(env: dict[str, Any]) -> None:
    client = env["operator"]
    r = client.get("/dicomweb/remote/DOWN/studies", params={"PatientID": "X"})
    assert r.status_code == 504, r.text
    assert "does not answer" in r.json()["error"]
    r = client.get(f"/dicomweb/remote/DOWN/studies/{generate_uid()}")
    assert r.status_code == 504
    # and the node keeps serving
    assert client.get("/api/v1/health").status_code == 200


def test_a_failed_pull_is_502_with_the_remote_status(env: dict[str, Any]) -> None:
    study, series_uid = generate_uid(), generate_uid()
    r = env["reader"].get(f"/dicomweb/remote/REFUSER/studies/{study}/series/{series_uid}")
    assert r.status_code == 502, r.text
    reason = r.json()["error"]
    assert "0xA801" in reason and "REFUSER" in reason
    # nothing stored
    assert env["reader"].get(f"/dicomweb/studies/{study}/series/{series_uid}/metadata"
                             ).status_code == 404

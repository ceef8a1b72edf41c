"""STOW-RS: multipart/related application/dicom in, PS3.18 10.5 statuses out."""

from __future__ import annotations

import io
import logging
import tracemalloc
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import text

from web_server import (BOUNDARY, STOW_TYPE, WebServer, sample_bytes, make_instance,
                        multipart_body, sample_path, uid, web)  # noqa: F401

REFERENCED, FAILED = "00081199", "00081198"
SOP_CLASS, SOP_UID, RETRIEVE_URL, FAILURE = "00081150", "00081155", "00081190", "00081197"


def _values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def _stored_uids(server: WebServer) -> set[str]:
    r = httpx.get(server.dicomweb + "/instances", params={"limit": "1000"})
    if r.status_code == 204:
        return set()
    return {_values(i, "00080018")[0] for i in r.json()}


def test_all_stored_is_200_with_references(web: WebServer) -> None:
    ct, mr = dcmread(sample_path("CT_small.dcm")), dcmread(sample_path("MR_small.dcm"))
    r = web.stow([sample_bytes("CT_small.dcm"), sample_bytes("MR_small.dcm")])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    refs = _values(body, REFERENCED)
    assert [(_values(i, SOP_CLASS)[0], _values(i, SOP_UID)[0]) for i in refs] == [
        (ct.SOPClassUID, ct.SOPInstanceUID), (mr.SOPClassUID, mr.SOPInstanceUID)]
    assert _values(refs[0], RETRIEVE_URL) == [
        f"{web.dicomweb}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        f"/instances/{ct.SOPInstanceUID}"]
    assert FAILED not in body
    # Two studies: no single study RetrieveURL at the top.
    assert RETRIEVE_URL not in body
    assert _stored_uids(web) == {ct.SOPInstanceUID, mr.SOPInstanceUID}
    # The instance URL answers with the stored instance.
    got = httpx.get(_values(refs[0], RETRIEVE_URL)[0],
                    headers={"Accept": 'multipart/related; type="application/dicom"; '
                                       "transfer-syntax=*"})
    assert got.status_code == 200


def test_one_study_gets_study_retrieve_url_and_zeroed_preamble(web: WebServer) -> None:
    raw = sample_bytes("CT_small.dcm")
    assert raw[:128] != b"\x00" * 128  # a TIFF header in the preamble
    ct = dcmread(sample_path("CT_small.dcm"))
    r = web.stow([raw])
    assert r.status_code == 200
    assert _values(r.json(), RETRIEVE_URL) == [f"{web.dicomweb}/studies/{ct.StudyInstanceUID}"]
    stored = web.node.store.path(f"studies/{ct.StudyInstanceUID}/{ct.SeriesInstanceUID}/"
                                 f"{ct.SOPInstanceUID}.dcm").read_bytes()
    assert stored[:128] == b"\x00" * 128
    assert stored[128:] == raw[128:]


def test_some_failed_is_202_with_failure_reasons(web: WebServer) -> None:
    good = make_instance(uid(), uid(), uid())
    parts = [good, b"this is not DICOM at all" * 10]
    body = multipart_body(parts)
    # A third part that is not application/dicom.
    body = body.replace(f"--{BOUNDARY}--".encode(),
                        f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
                        f"--{BOUNDARY}--".encode())
    r = httpx.post(web.dicomweb + "/studies", content=body,
                   headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 202, r.text
    result = r.json()
    assert len(_values(result, REFERENCED)) == 1
    failed = _values(result, FAILED)
    assert [_values(f, FAILURE) for f in failed] == [[0xC000], [0xC000]]
    assert "not DICOM" in r.headers["warning"] or "cannot understand" in r.headers["warning"]
    assert len(_stored_uids(web)) == 1


def test_none_stored_is_409(web: WebServer) -> None:
    r = web.stow([b"garbage", b"\x00" * 500])
    assert r.status_code == 409
    assert REFERENCED in r.json() and FAILED in r.json()
    assert [_values(f, FAILURE) for f in _values(r.json(), FAILED)] == [[0xC000], [0xC000]]
    assert _stored_uids(web) == set()


def test_wrong_study_in_url_is_43265(web: WebServer) -> None:
    study, other = uid(), uid()
    inside = make_instance(study, uid(), uid())
    outside_sop = uid()
    outside = make_instance(other, uid(), outside_sop)
    r = web.stow([outside], study=study)
    assert r.status_code == 409
    failed = _values(r.json(), FAILED)
    assert _values(failed[0], FAILURE) == [43265]
    assert _values(failed[0], SOP_UID) == [outside_sop]
    r = web.stow([inside, outside], study=study)
    assert r.status_code == 202
    assert _values(r.json(), RETRIEVE_URL) == [f"{web.dicomweb}/studies/{study}"]
    assert len(_values(r.json(), REFERENCED)) == 1
    assert _values(_values(r.json(), FAILED)[0], FAILURE) == [43265]
    assert outside_sop not in _stored_uids(web)


def test_bad_study_uid_in_url_is_400(web: WebServer) -> None:
    r = web.stow([make_instance(uid(), uid(), uid())], study="1.2.abc")
    assert r.status_code == 400
    assert "not a valid UID" in r.json()["error"]


def test_wrong_media_types_are_415(web: WebServer) -> None:
    data = make_instance(uid(), uid(), uid())
    r = httpx.post(web.dicomweb + "/studies", content=data,
                   headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415
    assert "multipart/related" in r.json()["error"]
    r = httpx.post(web.dicomweb + "/studies", content=multipart_body([b"[]"], "application/dicom+json"),
                   headers={"Content-Type": f'multipart/related; type="application/dicom+json"; '
                                            f"boundary={BOUNDARY}"})
    assert r.status_code == 415
    assert "BulkDataURI" in r.json()["error"]
    assert _stored_uids(web) == set()


def test_malformed_multipart_is_400_and_stores_nothing(web: WebServer) -> None:
    body = multipart_body([make_instance(uid(), uid(), uid())])
    r = httpx.post(web.dicomweb + "/studies", content=body[:-20],
                   headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 400
    assert "multipart" in r.json()["error"]
    r = httpx.post(web.dicomweb + "/studies", content=body,
                   headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 400
    assert "boundary" in r.json()["error"]
    assert _stored_uids(web) == set()
    assert list(web.node.store.incoming.iterdir()) == []


def test_too_large_is_413_up_front_and_while_streaming(tmp_path: Path) -> None:
    server = WebServer(tmp_path / "data", max_stow_bytes=20_000).start()
    try:
        small = make_instance(uid(), uid(), uid())
        big = make_instance(uid(), uid(), uid(), rows=100, columns=100)  # ~20 KB of pixels
        body = multipart_body([small, big])
        assert len(body) > 20_000
        r = httpx.post(server.dicomweb + "/studies", content=body,
                       headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 413
        assert "max_stow_bytes" in r.json()["error"]

        def chunked():  # no Content-Length: the server has to count
            for i in range(0, len(body), 4096):
                yield body[i:i + 4096]
        r = httpx.post(server.dicomweb + "/studies", content=chunked(),
                       headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 413
        assert _stored_uids(server) == set()
        assert list(server.node.store.incoming.iterdir()) == []
        assert server.stow([small]).status_code == 200
    finally:
        server.stop()


def test_duplicate_refused_by_policy_is_45070(tmp_path: Path) -> None:
    server = WebServer(tmp_path / "data", duplicate_policy="reject").start()
    try:
        study, series, sop = uid(), uid(), uid()
        first = make_instance(study, series, sop, StudyDescription="first")
        assert server.stow([first]).status_code == 200
        assert server.stow([first]).status_code == 200  # same bytes: already stored
        r = server.stow([make_instance(study, series, sop, StudyDescription="second")])
        assert r.status_code == 409
        assert _values(_values(r.json(), FAILED)[0], FAILURE) == [45070]
    finally:
        server.stop()


def test_dicomweb_client_store_instances(web: WebServer) -> None:
    client = web.dicomweb_client()
    datasets = [dcmread(sample_path("CT_small.dcm")), dcmread(sample_path("MR_small_RLE.dcm"))]
    result = client.store_instances(datasets)
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == \
        [ds.SOPInstanceUID for ds in datasets]
    assert "FailedSOPSequence" not in result
    found = client.search_for_instances()
    assert {ds["00080018"]["Value"][0] for ds in found} == {d.SOPInstanceUID for d in datasets}


def test_large_body_is_streamed_not_held_in_memory(web: WebServer) -> None:
    """A 48 MiB instance, sent chunked, goes through with a small peak of
    Python memory: the body is never assembled."""
    size = 48 * 1024 * 1024
    sop = uid()
    header = make_instance(uid(), uid(), sop, rows=4096, columns=6144, pixels=b"")
    # make_instance wrote an empty Pixel Data: patch in the real length.
    assert header.endswith(b"\xe0\x7f\x10\x00OW\x00\x00\x00\x00\x00\x00")
    header = header[:-4] + size.to_bytes(4, "little")
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + header
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = bytes(range(256)) * 256  # 64 KiB

    def body():
        yield head
        for _ in range(size // len(block)):
            yield block
        yield tail

    tracemalloc.start()
    try:
        r = httpx.post(web.dicomweb + "/studies", content=body(),
                       headers={"Content-Type": STOW_TYPE}, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert peak < 16 * 1024 * 1024, f"peak Python memory {peak} bytes"
    refs = r.json()[REFERENCED]["Value"]
    assert refs[0][SOP_UID]["Value"] == [sop]
    stored = next(web.node.store.root.glob(f"studies/*/*/{sop}.dcm"))
    assert stored.stat().st_size == len(header) + size
    with open(stored, "rb") as fh:
        fh.seek(len(header) + size - len(block))
        assert fh.read() == block


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
                                  "image_dfl.dcm"])
def test_stored_file_matches_upload(web: WebServer, name: str) -> None:
    raw = sample_bytes(name)
    r = web.stow([raw])
    assert r.status_code == 200, r.text
    ds = dcmread(io.BytesIO(raw))
    stored = next(web.node.store.root.glob(f"studies/*/*/{ds.SOPInstanceUID}.dcm")).read_bytes()
    assert stored[128:] == raw[128:]


def test_each_request_logs_what_it_stored(web: WebServer, caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line per STOW-RS request counts its outcomes; a new
    instance has no INFO line of its own."""
    caplog.set_level(logging.INFO, logger="pacsnode")
    study = uid()
    good, other = make_instance(study, uid(), uid()), make_instance(study, uid(), uid())
    r = web.stow([good, other, b"this is not DICOM at all" * 10])
    assert r.status_code == 202, r.text
    assert "STOW-RS from 127.0.0.1: 2 stored, 1 refused" in caplog.text
    assert web.stow([good], study=study).status_code == 200
    assert f"STOW-RS from 127.0.0.1 to study {study}: 1 already stored" in caplog.text
    assert "stored instance" not in caplog.text


def test_the_same_instance_twice_in_one_request_is_stored_once(
        web: WebServer, caplog: pytest.LogCaptureFixture) -> None:
    """A second, identical copy of an instance in the same request is
    already stored (its file compared with the first copy's, which goes
    into place at the commit), not a replacement."""
    caplog.set_level(logging.INFO, logger="pacsnode")
    sop = uid()
    raw = make_instance(uid(), uid(), sop)
    r = web.stow([raw, raw])
    assert r.status_code == 200, r.text
    assert len(_values(r.json(), REFERENCED)) == 2
    assert "STOW-RS from 127.0.0.1: 1 stored, 1 already stored" in caplog.text
    assert "replaced instance" not in caplog.text
    with web.node.db.read() as conn:
        actions = [row[0] for row in conn.execute(text(
            "SELECT action FROM changes WHERE instance_uid = :sop ORDER BY seq"), {"sop": sop})]
    assert actions == ["stored"]
    got = httpx.get(f"{web.dicomweb}/instances", params={"SOPInstanceUID": sop})
    assert len(got.json()) == 1

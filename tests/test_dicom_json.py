"""DICOM JSON as PS3.18 Annex F says: no Group Length elements (gggg,0000)
in WADO-RS metadata or QIDO-RS results, for instances stored now and for
those an earlier version stored with them (the start-up migration)."""

from __future__ import annotations

import io
import json
import struct
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from sqlalchemy import delete, select, update

from pacsnode.dicom.header import describe, without_group_lengths
from pacsnode.index.migrations import MIGRATIONS, migrations_table, run_migrations
from pacsnode.index.schema import instances
from web_server import WebServer, dataset_bytes, make_instance, uid

GROUPS_IN_FILE = {"00080000", "00100000", "00200000", "00280000", "7FE00000"}


def _encode(ds: Dataset) -> bytes:
    """``ds`` in Explicit VR Little Endian with a Group Length element before
    each group, in sequence items too (pydicom no longer writes them)."""
    out = bytearray()
    for group, elems in groupby(sorted(ds, key=lambda e: e.tag), key=lambda e: e.tag.group):
        body = bytearray()
        for elem in elems:
            if elem.VR == "SQ":
                body += struct.pack("<HH2sHL", group, elem.tag.element, b"SQ", 0, 0xFFFFFFFF)
                for item in elem.value:
                    body += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + _encode(item)
                    body += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
                body += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            else:
                fp = DicomBytesIO()
                fp.is_little_endian, fp.is_implicit_VR = True, False
                write_data_element(fp, elem)
                body += fp.getvalue()
        out += struct.pack("<HH2sHL", group, 0, b"UL", 4, len(body)) + body
    return bytes(out)


def with_group_lengths(part10: bytes) -> bytes:
    """A Part 10 file whose data set carries Group Length elements, as some
    older modalities and toolkits write them."""
    data = dataset_bytes(part10)
    ds = dcmread(io.BytesIO(part10))
    return part10[:len(part10) - len(data)] + _encode(ds)


def instance_with_group_lengths(study: str, series: str, sop: str, n: int = 1) -> bytes:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-A0100", "SRT", "Brain"
    raw = with_group_lengths(make_instance(study, series, sop, instance_number=n,
                                           AnatomicRegionSequence=[code]))
    # pydicom, the oracle, reads the file whole and sees the group lengths.
    ds = dcmread(io.BytesIO(raw))
    assert {f"{e.tag:08X}" for e in ds if e.tag.element == 0} == GROUPS_IN_FILE
    assert ds.AnatomicRegionSequence[0].get(0x00080000) is not None
    assert ds.PixelData == dcmread(io.BytesIO(make_instance(study, series, sop))).PixelData
    return raw


def group_lengths(obj: Any) -> list[str]:
    """Every (gggg,0000) key anywhere in a DICOM JSON answer."""
    found: list[str] = []
    if isinstance(obj, list):
        for entry in obj:
            found += group_lengths(entry)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if len(key) == 8 and key.endswith("0000"):
                found.append(key)
            found += group_lengths(value)
    return found


def assert_clean_everywhere(server: WebServer, study: str, series: str, sops: list[str]
                            ) -> None:
    c = server.client()
    base = f"/studies/{study}/series/{series}"
    answers = [c.get(f"/studies/{study}/metadata"), c.get(f"{base}/metadata")]
    answers += [c.get(f"{base}/instances/{sop}/metadata") for sop in sops]
    for url in ("/studies", "/series", "/instances", f"/studies/{study}/series",
                f"/studies/{study}/instances", f"{base}/instances"):
        answers.append(c.get(url, params={"includefield": "all", "StudyInstanceUID": study}))
    for r in answers:
        assert r.status_code == 200, (r.request.url, r.text)
        assert r.headers["content-type"].startswith("application/dicom+json")
        assert group_lengths(r.json()) == [], r.request.url
    # Everything else is still there: the instance-level answers carry the
    # patient, the sequence item and the Pixel Data reference.
    (meta,) = c.get(f"{base}/instances/{sops[0]}/metadata").json()
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert meta["00082218"]["Value"][0]["00080100"]["Value"] == ["T-A0100"]
    assert "BulkDataURI" in meta["7FE00010"]
    found = c.get("/instances", params={"includefield": "all", "StudyInstanceUID": study})
    assert sorted(i["00080018"]["Value"][0] for i in found.json()) == sorted(sops)


def test_describe_leaves_group_lengths_out() -> None:
    raw = instance_with_group_lengths(uid(), uid(), uid())
    parsed = describe(dcmread(io.BytesIO(raw), stop_before_pixels=True), True)
    body = json.loads(parsed.meta_json)
    assert group_lengths(body) == []
    assert body["00100020"]["Value"] == ["P1"]


def test_without_group_lengths_reaches_into_items() -> None:
    body = {"00080000": {"vr": "UL", "Value": [10]},
            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
            "00400275": {"vr": "SQ", "Value": [
                {"00400000": {"vr": "UL", "Value": [8]},
                 "00400007": {"vr": "LO", "Value": ["x0000\":"]}}]}}
    assert without_group_lengths(body) == {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00400275": {"vr": "SQ", "Value": [{"00400007": {"vr": "LO", "Value": ["x0000\":"]}}]}}


def test_stored_now_metadata_and_qido_have_no_group_lengths(tmp_path: Path,
                                                            database_url: str) -> None:
    server = WebServer(tmp_path / "data", database_url=database_url).start()
    try:
        study, series = uid(), uid()
        sops = [uid(), uid()]
        parts = [instance_with_group_lengths(study, series, sop, n)
                 for n, sop in enumerate(sops, start=1)]
        r = server.stow(parts)
        assert r.status_code == 200, r.text
        assert_clean_everywhere(server, study, series, sops)
        # The stored file keeps the bytes it was sent: only the JSON leaves
        # the group lengths out.
        r = server.client().get(f"/studies/{study}/series/{series}/instances/{sops[0]}",
                                headers={"Accept": "application/dicom"})
        assert r.status_code == 200
        assert r.content == parts[0]
    finally:
        server.stop()


def test_start_up_migration_rewrites_headers_stored_with_group_lengths(
        tmp_path: Path, database_url: str) -> None:
    server = WebServer(tmp_path / "data", database_url=database_url).start()
    study, series = uid(), uid()
    sops = [uid(), uid()]
    parts = [instance_with_group_lengths(study, series, sop, n)
             for n, sop in enumerate(sops, start=1)]
    try:
        assert server.stow(parts).status_code == 200
        # What an earlier version kept: the whole header as pydicom's JSON.
        db = server.node.db
        with db.write() as conn:
            for sop, raw in zip(sops, parts):
                old = dcmread(io.BytesIO(raw), stop_before_pixels=True).to_json_dict()
                old["7FE00010"] = {"vr": "OW", "BulkDataURI": "bulk:7FE00010"}
                assert set(group_lengths(old)) == GROUPS_IN_FILE | {"00080000"}
                conn.execute(update(instances).where(instances.c.sopinstanceuid == sop)
                             .values(meta_json=json.dumps(old)))
            conn.execute(delete(migrations_table))  # as before this version
        r = server.client().get(f"/studies/{study}/series/{series}/instances/{sops[0]}"
                                "/metadata")
        assert set(group_lengths(r.json())) == GROUPS_IN_FILE | {"00080000"}  # the bug
    finally:
        server.stop()

    # The next start runs the migration once and records it.
    server = WebServer(tmp_path / "data", database_url=database_url).start()
    try:
        db = server.node.db
        with db.read() as conn:
            # Every migration runs once and is recorded, this one among them.
            assert conn.execute(select(migrations_table.c.name)).scalars().all() == [
                name for name, _ in MIGRATIONS]
            texts = conn.execute(select(instances.c.meta_json)).scalars().all()
        assert len(texts) == 2 and all('0000":' not in t for t in texts)
        assert_clean_everywhere(server, study, series, sops)
        assert run_migrations(db) == []  # recorded: not run again
    finally:
        server.stop()

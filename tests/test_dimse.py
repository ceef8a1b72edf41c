"""The DIMSE face against DCMTK's real tools, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from conftest import dcmtk
from dicomfiles import TS_FILES, dataset_bytes, make_ct, one_study_per_syntax
from dimse_peer import c_get


def run(*cmd: str | bytes, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, encoding="latin-1", timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(params=["sqlite", "postgresql"])
def node(request, pacsnode_factory, storescp_factory, tmp_path):
    """A running pacsnode whose configured nodes include a DCMTK storescp."""
    scp_port, scp_dir = storescp_factory("STORESCP")
    config = tmp_path / "pacsnode.toml"
    config.write_text(f'[nodes.STORESCP]\naet = "STORESCP"\nhost = "127.0.0.1"\n'
                      f'port = {scp_port}\n')
    url = request.getfixturevalue("postgres").new_database() \
        if request.param == "postgresql" else ""
    server = pacsnode_factory(config=str(config), database_url=url)
    server.scp_dir = scp_dir
    return server


def findscu(server, *keys: str | bytes, model: str = "-S") -> list[dict[str, str]]:
    """Run DCMTK findscu and parse its responses into {keyword: value}."""
    args = [dcmtk("findscu"), model, "-aec", server.aet]
    for k in keys:
        args += ["-k", k]
    proc = run(*args, "127.0.0.1", str(server.dicom_port))
    results: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Find Response:" in line:
            current = {}
            results.append(current)
        elif current is not None and line.startswith("I: (") or \
                current is not None and line.startswith("("):
            text = line[3:] if line.startswith("I: ") else line
            parts = text.split("#")
            if len(parts) < 2:
                continue
            head = parts[0]
            keyword = parts[-1].split()[-1] if parts[-1].split() else ""
            value = ""
            if "[" in head:
                value = head[head.index("[") + 1:head.rindex("]")].rstrip(" \x00")
            elif "=" in head:
                value = head.split("=", 1)[1].strip()
            current[keyword] = value
    return results


def assert_same_data(received: Path, stored: bytes, ts: str) -> None:
    """Byte equality of the data set; for Deflate the receiving DCMTK tool
    re-compresses when writing its file, so the inflated data must match."""
    got = dataset_bytes(received)
    if ts == "1.2.840.10008.1.2.1.99":
        import zlib
        got, stored = zlib.decompress(got, -15), zlib.decompress(stored, -15)
    assert got == stored, ts


def test_echo(node):
    proc = run(dcmtk("echoscu"), "-v", "-aec", node.aet, "127.0.0.1", str(node.dicom_port))
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_store_move_get_round_trip_every_transfer_syntax(node, tmp_path):
    """What storescu sends is what movescu and getscu get back, byte for byte."""
    study, files = one_study_per_syntax(tmp_path / "in")
    for ts, path in files.items():
        option = TS_FILES[ts][1]
        run(dcmtk("storescu"), option, "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(path))
    # Stored as received, in its own transfer syntax, with the same content
    # (storescu may re-encode lengths, so content is compared by element).
    stored: dict[str, bytes] = {}
    for ts, path in files.items():
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        blobs = list(node.data_dir.glob(f"studies/{study}/*/{sop}.dcm"))
        assert len(blobs) == 1, ts
        blob = dcmread(blobs[0])
        assert str(blob.file_meta.TransferSyntaxUID) == ts
        original = dcmread(path)
        assert blob.PixelData == original.PixelData, ts
        assert {e.tag for e in blob if e.tag.group != 0} - {e.tag for e in original} == set()
        stored[sop] = dataset_bytes(blobs[0])

    # C-MOVE to a DCMTK storescp that accepts every syntax.
    run(dcmtk("movescu"), "-S", "-aec", node.aet, "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
        "127.0.0.1", str(node.dicom_port))
    moved = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
             for p in node.scp_dir.iterdir() if p.is_file()}
    assert len(moved) == len(files)
    for ts, path in files.items():
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert_same_data(moved[sop], stored[sop], ts)

    # C-GET per syntax, the SCU accepting that syntax.
    get_opts = {"1.2.840.10008.1.2.1": "+xe", "1.2.840.10008.1.2": "+xi",
                "1.2.840.10008.1.2.2": "+xb", "1.2.840.10008.1.2.1.99": "+xd",
                "1.2.840.10008.1.2.4.50": "+xy", "1.2.840.10008.1.2.4.51": "+xx",
                "1.2.840.10008.1.2.4.70": "+xs", "1.2.840.10008.1.2.4.80": "+xt",
                "1.2.840.10008.1.2.4.90": "+xv", "1.2.840.10008.1.2.4.91": "+xw",
                "1.2.840.10008.1.2.5": "+xr"}
    for ts, path in files.items():
        if ts == "1.2.840.10008.1.2.4.51":
            # getscu always offers uncompressed syntaxes too, and we accept
            # uncompressed first (as storescp does); 12-bit JPEG Extended has
            # no decoder among pylibjpeg's plugins, so this one is covered by
            # the byte-level pynetdicom C-GET below.
            continue
        ds = dcmread(path, stop_before_pixels=True)
        out = tmp_path / "get" / ts
        out.mkdir(parents=True)
        run(dcmtk("getscu"), "-S", get_opts[ts], "-aec", node.aet,
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
            "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}", "-od", str(out),
            "127.0.0.1", str(node.dicom_port))
        got = [p for p in out.iterdir() if p.is_file()]
        assert len(got) == 1, ts
        # getscu re-encodes sequences with undefined length when it writes
        # its file, so here the data sets are compared element by element
        # and the pixel data byte for byte.
        got_ds = dcmread(got[0])
        ref_ds = dcmread(next(node.data_dir.glob(f"studies/{study}/*/{ds.SOPInstanceUID}.dcm")))
        got_ts = got_ds.file_meta.TransferSyntaxUID
        ref_ts = ref_ds.file_meta.TransferSyntaxUID
        if got_ts != ref_ts and not got_ts.is_compressed:
            # getscu negotiated an uncompressed syntax we produce (Big Endian
            # is not one: +xb gets Explicit VR Little Endian): we decoded for
            # it, and the pixel values are the same.
            import numpy as np
            assert np.array_equal(got_ds.pixel_array, ref_ds.pixel_array), ts
            del got_ds.PixelData, ref_ds.PixelData
            for key in ("PhotometricInterpretation", "LossyImageCompression",
                        "PlanarConfiguration"):
                got_ds.pop(key, None)
                ref_ds.pop(key, None)
        else:
            assert got_ds.PixelData == ref_ds.PixelData, ts
        assert [e for e in got_ds if e.tag.group != 0x0002] == \
            [e for e in ref_ds if e.tag.group != 0x0002], ts


def test_find_matching_rules(node, tmp_path):
    """Each PS3.4 C.2.2.2 matching type with a key that must match and one that must not."""
    study_a = make_ct(tmp_path / "a.dcm", patient_id="PA", patient_name="Doe^John",
                      study_date="20200102", study_time="101500", accession="ACC1",
                      modality="CT", description="Head CT")
    study_b = make_ct(tmp_path / "b.dcm", patient_id="PB", patient_name="Smith^Anna",
                      study_date="20210315", study_time="143000", accession="ACC2",
                      modality="MR", description="Knee MR")
    make_ct(tmp_path / "c.dcm", patient_id="PC", patient_name="Müller^Jürgen",
            study_date="20190701", study_time="080000", accession="ACC3", modality="CT",
            description="Chest", charset="ISO_IR 100")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm"), str(tmp_path / "c.dcm"))

    def study_ids(*keys: str) -> set[str]:
        rs = findscu(node, "QueryRetrieveLevel=STUDY", "PatientID", *keys)
        return {r["PatientID"] for r in rs}

    # universal
    assert study_ids() == {"PA", "PB", "PC"}
    # single value (case-sensitive for LO)
    assert study_ids("AccessionNumber=ACC2") == {"PB"}
    assert study_ids("StudyDescription=head ct") == set()
    assert study_ids("StudyDescription=Head CT") == {"PA"}
    # PN is case-insensitive (documented)
    assert study_ids("PatientName=doe^john") == {"PA"}
    # wildcard * and ?
    assert study_ids("PatientName=SM*") == {"PB"}
    assert study_ids("PatientName=D?e^J*") == {"PA"}
    assert study_ids("PatientName=X*") == set()
    # Latin-1 name found through its decoded form
    assert study_ids("SpecificCharacterSet=ISO_IR 100",
                     "PatientName=Müller*".encode("latin-1")) == {"PC"}
    assert study_ids("SpecificCharacterSet=ISO_IR 100",
                     "PatientName=müller^jürgen".encode("latin-1")) == {"PC"}
    # UID list
    assert study_ids(f"StudyInstanceUID={study_a.StudyInstanceUID}\\"
                     f"{study_b.StudyInstanceUID}") == {"PA", "PB"}
    # date range, open ranges
    assert study_ids("StudyDate=20200101-20201231") == {"PA"}
    assert study_ids("StudyDate=20200101-") == {"PA", "PB"}
    assert study_ids("StudyDate=-20191231") == {"PC"}
    assert study_ids("StudyDate=20220101-") == set()
    # time range
    assert study_ids("StudyTime=1000-1200") == {"PA"}
    assert study_ids("StudyTime=1430") == {"PB"}
    # ModalitiesInStudy
    assert study_ids("ModalitiesInStudy=MR") == {"PB"}
    # return keys come back, empty ones present
    rs = findscu(node, "QueryRetrieveLevel=STUDY", "PatientID=PA", "StudyDescription",
                 "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "ReferringPhysicianName")
    assert rs == [rs[0]] and rs[0]["StudyDescription"] == "Head CT"
    assert rs[0]["NumberOfStudyRelatedInstances"] == "1"
    assert rs[0]["ModalitiesInStudy"] == "CT"
    assert "ReferringPhysicianName" in rs[0]
    # Patient Root, PATIENT level
    rs = findscu(node, "QueryRetrieveLevel=PATIENT", "PatientID=P*", "PatientName",
                 "NumberOfPatientRelatedStudies", model="-P")
    assert sorted(r["PatientID"] for r in rs) == ["PA", "PB", "PC"]
    # relational: SERIES without a Study UID, IMAGE by SOP Instance UID
    rs = findscu(node, "QueryRetrieveLevel=SERIES", "Modality=MR", "SeriesInstanceUID")
    assert [r["SeriesInstanceUID"] for r in rs] == [study_b.SeriesInstanceUID]
    rs = findscu(node, "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={study_a.SOPInstanceUID}",
                 "InstanceNumber")
    assert len(rs) == 1 and rs[0]["InstanceNumber"] == "1"


def test_find_bad_queries_fail_cleanly(node, tmp_path):
    make_ct(tmp_path / "a.dcm", patient_id="PA")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "a.dcm"))
    bad_level = run(dcmtk("findscu"), "-v", "-S", "-aec", node.aet, "-k", "QueryRetrieveLevel=FRAME",
                    "-k", "PatientID", "127.0.0.1", str(node.dicom_port), check=False)
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in bad_level.stderr
    bad_range = run(dcmtk("findscu"), "-v", "-S", "-aec", node.aet, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyDate=2020-01-01x", "127.0.0.1", str(node.dicom_port),
                    check=False)
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in bad_range.stderr
    # the node keeps serving
    assert {r["PatientID"] for r in findscu(node, "QueryRetrieveLevel=STUDY", "PatientID")} \
        == {"PA"}
    assert "refused" in node.log()


def test_move_to_unknown_destination_is_a801(node, tmp_path):
    ds = make_ct(tmp_path / "a.dcm")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "a.dcm"))
    proc = run(dcmtk("movescu"), "-v", "-S", "-aec", node.aet, "-aem", "NOWHERE",
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
               "127.0.0.1", str(node.dicom_port), check=False)
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in proc.stderr


def test_duplicate_identical_is_accepted_and_conflict_refused(node, tmp_path):
    ds = make_ct(tmp_path / "a.dcm")
    for _ in range(2):
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(tmp_path / "a.dcm"))
    # Same SOP Instance UID under another study: refused, original untouched.
    make_ct(tmp_path / "b.dcm", sop_uid=ds.SOPInstanceUID)
    proc = run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
               str(tmp_path / "b.dcm"), check=False)
    assert proc.returncode != 0 or "Error" in proc.stdout + proc.stderr
    rs = findscu(node, "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={ds.SOPInstanceUID}",
                 "StudyInstanceUID")
    assert [r["StudyInstanceUID"] for r in rs] == [ds.StudyInstanceUID]
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "a.dcm")


def test_instances_in_series_come_back_in_instance_number_order(node, tmp_path):
    study, series = "1.2.3.999.1", "1.2.3.999.1.1"
    for n in (3, 1, 2):
        make_ct(tmp_path / f"{n}.dcm", study_uid=study, series_uid=series, instance=n)
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        *[str(tmp_path / f"{n}.dcm") for n in (3, 1, 2)])
    rs = findscu(node, "QueryRetrieveLevel=IMAGE", f"SeriesInstanceUID={series}",
                 "InstanceNumber")
    assert [r["InstanceNumber"] for r in rs] == ["1", "2", "3"]
    rs = findscu(node, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                 "NumberOfSeriesRelatedInstances")
    assert rs[0]["NumberOfSeriesRelatedInstances"] == "3"


def test_store_large_multiframe_streams_to_disk(node, tmp_path):
    """A 64 MB instance is received chunked into a temp file, not held in memory."""
    import numpy as np
    frames = 256
    ds = make_ct(tmp_path / "big.dcm", size=16)
    ds.Rows = ds.Columns = 256
    ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames, 256, 256), dtype=np.int16).tobytes()
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "big.dcm"))
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "big.dcm")



def test_c_get_sends_stored_bytes_in_every_syntax(node, tmp_path):
    """A C-GET SCU that accepts only the stored syntax receives the stored
    data set byte for byte (no decode, no re-encode)."""
    study, files = one_study_per_syntax(tmp_path / "in")
    for ts, path in files.items():
        run(dcmtk("storescu"), TS_FILES[ts][1], "-aec", node.aet, "127.0.0.1",
            str(node.dicom_port), str(path))
    for ts, path in files.items():
        ds = dcmread(path, stop_before_pixels=True)
        blob = next(node.data_dir.glob(f"studies/{study}/*/{ds.SOPInstanceUID}.dcm"))
        got = c_get(node, study, ds.SeriesInstanceUID, syntaxes=[ts], sop_class=ds.SOPClassUID)
        assert got.statuses[-1] == 0x0000, (ts, got.statuses)
        assert got.raw == [dataset_bytes(blob)], ts


@pytest.mark.parametrize("accepted", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_c_get_of_a_series_read_ahead_sends_each_instance_whole(node, tmp_path, accepted):
    """The sub-operations of a multi-instance C-GET: each instance's data set
    is read while the SCU stores the one before (up to READ_AHEAD bytes; a
    larger one is streamed).  Sent as stored, every data set arrives byte
    for byte, in instance order; transcoded (the SCU accepts only Implicit
    VR), every one arrives with its pixels intact."""
    from pacsnode.dimse.move_get import READ_AHEAD

    study, series = "1.2.826.0.1.3680043.8.498.7001", "1.2.826.0.1.3680043.8.498.7001.1"
    sizes = [16, 1536, 16, 64, 16]  # 1536² × 2 bytes: more than READ_AHEAD
    paths = []
    for n, size in enumerate(sizes, 1):
        path = tmp_path / f"i{n}.dcm"
        make_ct(path, study_uid=study, series_uid=series, instance=n, size=size)
        paths.append(path)
    assert paths[1].stat().st_size > READ_AHEAD > paths[3].stat().st_size
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        *map(str, paths))
    got = c_get(node, study, series, syntaxes=[accepted])
    statuses, raw, received = got.statuses, got.raw, got.datasets
    assert statuses[-1] == 0x0000 and statuses.count(0xFF00) == len(sizes)
    assert [int(ds.InstanceNumber) for ds in received] == list(range(1, len(sizes) + 1))
    blobs = [node.data_dir / "studies" / study / series /
             f"{dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in paths]
    if accepted == "1.2.840.10008.1.2.1":  # as stored
        assert raw == [dataset_bytes(b) for b in blobs]
    else:
        assert [ds.PixelData for ds in received] == [dcmread(p).PixelData for p in paths]
        assert all(ds.Rows == size for ds, size in zip(received, sizes))

"""The SCU layer and RemoteNode against real peers: Orthanc (C-FIND/C-MOVE/
C-GET SCP), DCMTK storescp (C-MOVE destination, C-STORE SCP) and a slow
pynetdicom storage SCP (to cancel a retrieve half-way)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from orthanc_peer import Orthanc, start_orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from test_volume import (INTERCEPT, OBLIQUE, ORIGIN, PIXEL_SPACING, SLICE_GAP, SLOPE,
                         make_ct_series, stored_pixels, pydicom_file, write_series)

from pacsnode.remote import (AssociationRejected, ConnectionFailed, NoAcceptedContext,
                             Progress, RemoteError, RemoteNode)
from pacsnode.volume import load_volume

TEST_FILES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm",
              "SC_rgb_jpeg_dcmtk.dcm"]


class SlowStorageSCP:
    """A pynetdicom Storage SCP that takes 50 ms per instance and only
    answers to its own AE title (it rejects any other called AE)."""

    def __init__(self, aet: str = "SLOWSCP") -> None:
        self.aet = aet
        self.port = free_port()
        self.received: list[str] = []
        ae = AE(aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_called_aet = True
        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert server is not None
        self.server = server

    def _store(self, event: evt.Event) -> int:
        time.sleep(0.05)
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def storescp(storescp_factory: Any) -> tuple[int, Path]:
    return storescp_factory("STORESCP")


@pytest.fixture(scope="module")
def slow_scp() -> Iterator[SlowStorageSCP]:
    scp = SlowStorageSCP()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def ax_series() -> list[Dataset]:
    return make_ct_series(20, seed=1, series_description="AX T1 SYNTHETIC")


@pytest.fixture(scope="module")
def cor_series(ax_series: list[Dataset]) -> list[Dataset]:
    return make_ct_series(4, seed=2, study_uid=ax_series[0].StudyInstanceUID,
                          series_description="COR T2 SYNTHETIC", series_number=4)


@pytest.fixture(scope="module")
def utf8_series() -> list[Dataset]:
    return make_ct_series(2, seed=3, patient_id="UTF8-1", patient_name="Müller^Jürgen",
                          study_date="20190310", series_description="AX UTF8")


@pytest.fixture(scope="module")
def our_port() -> int:
    """Where we listen when we are the C-MOVE destination ("PYTEST")."""
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, storescp: tuple[int, Path],
            slow_scp: SlowStorageSCP, our_port: int, ax_series: list[Dataset],
            cor_series: list[Dataset], utf8_series: list[Dataset]) -> Iterator[Orthanc]:
    work = tmp_path_factory.mktemp("orthanc")
    modalities = {"STORESCP": ["STORESCP", "127.0.0.1", storescp[0]],
                  slow_scp.aet: [slow_scp.aet, "127.0.0.1", slow_scp.port],
                  "PYTEST": ["PYTEST", "127.0.0.1", our_port]}
    with start_orthanc(work / "peer", modalities=modalities) as peer:
        files = [pydicom_file(name) for name in TEST_FILES]
        files += write_series(ax_series + cor_series + utf8_series, work / "synthetic")
        peer.upload(files)
        yield peer


@pytest.fixture(scope="module")
def node(orthanc: Orthanc) -> RemoteNode:
    return RemoteNode(aet=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port,
                      calling_aet="PYTEST")


def received_uids(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.iterdir() if p.is_file()}


def clear(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()


# ---------------------------------------------------------------------- echo

def test_echo(node: RemoteNode) -> None:
    ms = node.echo()
    assert isinstance(ms, float) and 0 < ms < 5000


def test_connection_refused_names_the_peer() -> None:
    port = free_port()
    with pytest.raises(ConnectionFailed, match=rf"NOBODY@127\.0\.0\.1:{port}.*cannot connect"):
        RemoteNode("NOBODY", "127.0.0.1", port, timeout=5).echo()


def test_association_rejected(slow_scp: SlowStorageSCP) -> None:
    with pytest.raises(AssociationRejected, match=r"WRONG@127\.0\.0\.1.*rejected") as info:
        RemoteNode("WRONG", "127.0.0.1", slow_scp.port).echo()
    assert "Called AE title not recognised" in info.value.reason


def test_service_not_supported(slow_scp: SlowStorageSCP) -> None:
    # The slow SCP is storage-only: no Verification context.
    with pytest.raises(NoAcceptedContext, match="SLOWSCP"):
        RemoteNode(slow_scp.aet, "127.0.0.1", slow_scp.port).echo()


# ---------------------------------------------------------------------- find

def test_find_patient_level_matches_orthanc(node: RemoteNode, orthanc: Orthanc) -> None:
    hits = node.find("PATIENT")
    expected = {p["MainDicomTags"]["PatientID"]: p["MainDicomTags"]["PatientName"]
                for p in orthanc.get("/patients", expand="")}
    assert {h["PatientID"]: h["PatientName"] for h in hits} == expected
    studies = {p["MainDicomTags"]["PatientID"]: len(p["Studies"])
               for p in orthanc.get("/patients", expand="")}
    assert {h["PatientID"]: h["NumberOfPatientRelatedStudies"] for h in hits} == studies
    assert all(isinstance(h["PatientName"], str) for h in hits)


def test_find_study_level_matches_orthanc(node: RemoteNode, orthanc: Orthanc) -> None:
    hits = node.find("STUDY")
    assert len(hits) == len(orthanc.get("/studies"))
    for study_id in orthanc.get("/studies"):
        study = orthanc.get(f"/studies/{study_id}")
        tags = study["MainDicomTags"]
        hit = next(h for h in hits if h["StudyInstanceUID"] == tags["StudyInstanceUID"])
        assert hit["StudyDate"] == tags.get("StudyDate", "")
        assert hit["StudyDescription"] == tags.get("StudyDescription", "")
        assert hit["AccessionNumber"] == tags.get("AccessionNumber", "")
        assert hit["PatientID"] == study["PatientMainDicomTags"]["PatientID"]
        assert hit["NumberOfStudyRelatedSeries"] == len(study["Series"])


def test_find_series_level_matches_orthanc(node: RemoteNode, orthanc: Orthanc,
                                           ax_series: list[Dataset]) -> None:
    study_uid = ax_series[0].StudyInstanceUID
    hits = node.find("SERIES", StudyInstanceUID=study_uid)
    answer = orthanc.post("/tools/find", {"Level": "Series", "Expand": True,
                                          "Query": {"StudyInstanceUID": study_uid}})
    assert len(hits) == len(answer) == 2
    expected = {s["MainDicomTags"]["SeriesInstanceUID"]:
                (s["MainDicomTags"]["SeriesDescription"], s["MainDicomTags"]["Modality"],
                 len(s["Instances"])) for s in answer}
    assert {h["SeriesInstanceUID"]: (h["SeriesDescription"], h["Modality"],
                                     h["NumberOfSeriesRelatedInstances"])
            for h in hits} == expected
    assert all(h["StudyInstanceUID"] == study_uid for h in hits)
    assert {h["SeriesNumber"] for h in hits} == {3, 4}  # IS → int


def test_find_image_level_matches_orthanc(node: RemoteNode, orthanc: Orthanc,
                                          ax_series: list[Dataset]) -> None:
    series_uid = ax_series[0].SeriesInstanceUID
    hits = node.find("IMAGE", StudyInstanceUID=ax_series[0].StudyInstanceUID,
                     SeriesInstanceUID=series_uid)
    answer = orthanc.post("/tools/find", {"Level": "Instance", "Expand": True,
                                          "Query": {"SeriesInstanceUID": series_uid}})
    assert {h["SOPInstanceUID"] for h in hits} == \
        {i["MainDicomTags"]["SOPInstanceUID"] for i in answer} == \
        {str(ds.SOPInstanceUID) for ds in ax_series}
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in ax_series}
    assert {h["SOPInstanceUID"]: h["InstanceNumber"] for h in hits} == numbers
    assert {h["SOPClassUID"] for h in hits} == {"1.2.840.10008.5.1.4.1.1.2"}


def test_find_patient_root_model(node: RemoteNode, ax_series: list[Dataset]) -> None:
    hits = node.find("STUDY", model="patient", PatientID="99999")
    assert [h["StudyInstanceUID"] for h in hits] == [ax_series[0].StudyInstanceUID]
    with pytest.raises(ValueError, match="no PATIENT level"):
        node.find("PATIENT", model="study")


def test_find_wildcards(node: RemoteNode, orthanc: Orthanc) -> None:
    hits = node.find("SERIES", SeriesDescription="AX*")
    answer = orthanc.post("/tools/find", {"Level": "Series",
                                          "Query": {"SeriesDescription": "AX*"}})
    assert len(hits) == len(answer) == 2
    assert {h["SeriesDescription"] for h in hits} == {"AX T1 SYNTHETIC", "AX UTF8"}
    assert {h["PatientID"] for h in node.find("PATIENT", PatientID="?CT1")} == {"1CT1"}
    names = {h["PatientName"] for h in node.find("PATIENT", PatientName="CompressedSamples*")}
    assert names == {"CompressedSamples^CT1", "CompressedSamples^MR1", "CompressedSamples^NM1"}


def test_find_date_ranges(node: RemoteNode, orthanc: Orthanc) -> None:
    for date_range in ("20040101-20041231", "-20031231", "20150101-", "20040826"):
        hits = node.find("STUDY", StudyDate=date_range)
        answer = orthanc.post("/tools/find", {"Level": "Study",
                                              "Query": {"StudyDate": date_range}})
        assert len(hits) == len(answer) > 0, date_range
    dates = sorted(h["StudyDate"] for h in node.find("STUDY", StudyDate="20040101-20041231"))
    assert dates == ["20040119", "20040826", "20040826"]


def test_find_every_requested_key_is_present(node: RemoteNode) -> None:
    hits = node.find("STUDY", fields=["InstitutionName", "ReferringPhysicianName"],
                     defaults=False, PatientID="99999")
    assert len(hits) == 1
    hit = hits[0]
    assert hit["InstitutionName"] == "" and hit["ReferringPhysicianName"] == ""
    assert hit["PatientID"] == "99999" and hit["StudyInstanceUID"]
    assert "QueryRetrieveLevel" not in hit and "SpecificCharacterSet" not in hit


def test_find_multi_valued_and_uid_list(node: RemoteNode, ax_series: list[Dataset]) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in ax_series[:3]]
    hits = node.find("IMAGE", StudyInstanceUID=ax_series[0].StudyInstanceUID,
                     SeriesInstanceUID=ax_series[0].SeriesInstanceUID, SOPInstanceUID=uids)
    assert sorted(h["SOPInstanceUID"] for h in hits) == sorted(uids)


def test_find_non_ascii(node: RemoteNode, utf8_series: list[Dataset]) -> None:
    hits = node.find("PATIENT", PatientName="Müller*")
    assert [h["PatientName"] for h in hits] == ["Müller^Jürgen"]
    assert hits[0]["PatientID"] == "UTF8-1"


def test_find_limit_cancels(node: RemoteNode) -> None:
    assert len(node.find("IMAGE", limit=3)) == 3


def test_find_unknown_key_is_refused(node: RemoteNode) -> None:
    with pytest.raises(ValueError, match="unknown attribute"):
        node.find("STUDY", NotAKeyword="1")


# ----------------------------------------------------- the DESIGN.md scenario

def test_find_get_series_load_volume(node: RemoteNode, ax_series: list[Dataset]) -> None:
    """Patient ID, exam date and series description → a volume in memory."""
    hits = node.find("SERIES", PatientID="99999", StudyDate="20111206",
                     SeriesDescription="AX*")
    assert len(hits) == 1
    datasets = node.get_series(hits[0]["StudyInstanceUID"], hits[0]["SeriesInstanceUID"])
    assert {str(ds.SOPInstanceUID) for ds in datasets} == \
        {str(ds.SOPInstanceUID) for ds in ax_series}
    originals = {str(ds.SOPInstanceUID): ds for ds in ax_series}
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.PixelData == originals[str(ds.SOPInstanceUID)].PixelData
    vol = load_volume(datasets)
    assert vol.array.shape == (20, 64, 48)
    assert vol.spacing == pytest.approx((SLICE_GAP, *PIXEL_SPACING), abs=1e-5)
    assert vol.origin == pytest.approx(tuple(ORIGIN), abs=1e-5)
    np.testing.assert_allclose(vol.direction, OBLIQUE.T, atol=1e-8)
    for k in (0, 7, 19):
        np.testing.assert_array_equal(vol.array[k], stored_pixels(k) * SLOPE + INTERCEPT)


# ---------------------------------------------------------------------- move

def test_move_series_to_storescp(node: RemoteNode, storescp: tuple[int, Path],
                                 ax_series: list[Dataset]) -> None:
    _, outdir = storescp
    clear(outdir)
    seen: list[Progress] = []
    final = node.move(ax_series[0].StudyInstanceUID, ax_series[0].SeriesInstanceUID,
                      destination="STORESCP", on_progress=seen.append)
    assert received_uids(outdir) == {str(ds.SOPInstanceUID) for ds in ax_series}
    assert final.done and final.ok and final.status == 0x0000
    assert (final.completed, final.failed, final.warning, final.remaining) == (20, 0, 0, 0)
    pending = [p for p in seen if not p.done]
    assert len(pending) == 19  # one pending response per sub-operation but the last
    assert [p.completed for p in pending] == list(range(1, 20))
    assert [p.remaining for p in pending] == list(range(19, 0, -1))
    assert all(p.failed == 0 for p in seen) and seen[-1] is final


def test_move_study_of_test_file(node: RemoteNode, storescp: tuple[int, Path]) -> None:
    _, outdir = storescp
    clear(outdir)
    ct = dcmread(pydicom_file("CT_small.dcm"))
    final = node.move(ct.StudyInstanceUID, destination="STORESCP")
    assert final.completed == 1
    received = [dcmread(p) for p in outdir.iterdir()]
    assert [str(ds.SOPInstanceUID) for ds in received] == [str(ct.SOPInstanceUID)]
    assert received[0].PixelData == ct.PixelData


def test_move_to_ourselves(node: RemoteNode, our_port: int,
                           cor_series: list[Dataset]) -> None:
    received: list[Dataset] = []
    final = node.move(cor_series[0].StudyInstanceUID, cor_series[0].SeriesInstanceUID,
                      destination="PYTEST", listen_port=our_port, listen_host="127.0.0.1",
                      on_store=received.append)
    assert final.ok and final.completed == 4
    originals = {str(ds.SOPInstanceUID): ds for ds in cor_series}
    assert {str(ds.SOPInstanceUID) for ds in received} == set(originals)
    for ds in received:
        assert ds.PixelData == originals[str(ds.SOPInstanceUID)].PixelData
        assert ds.file_meta.TransferSyntaxUID.is_little_endian


def test_move_to_unknown_destination(node: RemoteNode, ax_series: list[Dataset]) -> None:
    with pytest.raises(RemoteError, match=r"ORTHANC@127\.0\.0\.1:\d+: C-MOVE failed") as info:
        node.move(ax_series[0].StudyInstanceUID, destination="NOWHERE")
    assert info.value.status is not None and info.value.status >= 0xA000


def test_move_cancel(node: RemoteNode, slow_scp: SlowStorageSCP,
                     ax_series: list[Dataset]) -> None:
    cancel = threading.Event()

    def on_progress(progress: Progress) -> None:
        if progress.completed >= 2:
            cancel.set()

    slow_scp.received.clear()
    final = node.move(ax_series[0].StudyInstanceUID, ax_series[0].SeriesInstanceUID,
                      destination=slow_scp.aet, on_progress=on_progress, cancel=cancel)
    assert final.cancelled and final.status == 0xFE00 and not final.ok
    assert 2 <= final.completed < 20
    assert final.remaining is not None and final.remaining > 0
    assert 2 <= len(slow_scp.received) < 20


# ----------------------------------------------------------------------- get

@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm",
                                  "CT_small.dcm"])
def test_get_keeps_transfer_syntax_and_pixels(node: RemoteNode, name: str) -> None:
    original = dcmread(pydicom_file(name))
    datasets = node.get_series(original.StudyInstanceUID, original.SeriesInstanceUID)
    assert len(datasets) == 1
    got = datasets[0]
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID or (
        not original.file_meta.TransferSyntaxUID.is_compressed)
    assert got.PixelData == original.PixelData


def test_get_into_a_store_callback(node: RemoteNode, cor_series: list[Dataset]) -> None:
    kept: list[str] = []
    seen: list[Progress] = []
    result = node.get(cor_series[0].StudyInstanceUID, cor_series[0].SeriesInstanceUID,
                      on_store=lambda ds: kept.append(str(ds.SOPInstanceUID)),
                      on_progress=seen.append)
    assert result.datasets == []
    assert sorted(kept) == sorted(str(ds.SOPInstanceUID) for ds in cor_series)
    assert result.progress.ok and result.progress.completed == 4
    assert seen[-1] is result.progress and seen[-1].done
    counts = [p.completed for p in seen]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 4


def test_get_store_callback_failure_is_reported(node: RemoteNode,
                                                cor_series: list[Dataset]) -> None:
    def refuse(ds: Dataset) -> None:
        if ds.InstanceNumber % 2:
            raise OSError("disk full")

    result = node.get(cor_series[0].StudyInstanceUID, cor_series[0].SeriesInstanceUID,
                      on_store=refuse)
    odd = sum(1 for ds in cor_series if ds.InstanceNumber % 2)
    assert result.progress.failed == odd and result.progress.completed == 4 - odd
    assert len(result.store_errors) == odd and "disk full" in result.store_errors[0]
    assert not result.progress.ok


def test_get_cancel(node: RemoteNode, ax_series: list[Dataset]) -> None:
    cancel = threading.Event()
    kept: list[Dataset] = []

    def slow_store(ds: Dataset) -> None:
        time.sleep(0.03)
        kept.append(ds)

    def on_progress(progress: Progress) -> None:
        if progress.completed >= 2:
            cancel.set()

    result = node.get(ax_series[0].StudyInstanceUID, ax_series[0].SeriesInstanceUID,
                      on_store=slow_store, on_progress=on_progress, cancel=cancel)
    assert result.progress.cancelled
    assert 2 <= len(kept) < 20
    with pytest.raises(RemoteError, match="cancelled"):
        node.get_series(ax_series[0].StudyInstanceUID, ax_series[0].SeriesInstanceUID,
                        cancel=_already_set())


def _already_set() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def test_get_nothing_matches(node: RemoteNode) -> None:
    # Orthanc answers a C-GET matching nothing with 0xC000 rather than
    # success with no sub-operations; either way nobody gets a partial series.
    with pytest.raises(RemoteError, match=r"ORTHANC@.*C-GET failed.*0xC000"):
        node.get_series("1.2.3.4", "1.2.3.4.5")


# ---------------------------------------------------------------------- send

def test_send_folder_to_storescp(storescp: tuple[int, Path], tmp_path: Path) -> None:
    port, outdir = storescp
    clear(outdir)
    series = make_ct_series(5, seed=11)
    folder = tmp_path / "send"
    write_series(series[:3], folder / "a")
    write_series(series[3:], folder / "b" / "c")
    jpeg = pydicom_file("JPEG2000.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    results = RemoteNode("STORESCP", "127.0.0.1", port).send([folder, jpeg])
    assert len(results) == 7
    failed = [r for r in results if not r.ok]
    assert [r.path.name for r in failed] == ["notes.txt"]
    assert "not a readable DICOM file" in (failed[0].reason or "")
    sent = {r.sop_instance_uid for r in results if r.ok}
    expected = {str(ds.SOPInstanceUID) for ds in series} | {str(dcmread(jpeg).SOPInstanceUID)}
    assert sent == expected == received_uids(outdir)
    # Sent in its own transfer syntax: the JPEG 2000 file arrived compressed, as is.
    for path in outdir.iterdir():
        ds = dcmread(path)
        if ds.SOPInstanceUID == dcmread(jpeg).SOPInstanceUID:
            assert ds.file_meta.TransferSyntaxUID == dcmread(jpeg).file_meta.TransferSyntaxUID
            assert ds.PixelData == dcmread(jpeg).PixelData


def test_send_to_orthanc(node: RemoteNode, orthanc: Orthanc, tmp_path: Path) -> None:
    series = make_ct_series(3, seed=12, patient_id="SENT-1")
    paths = write_series(series, tmp_path)
    seen: list[str] = []
    results = node.send(paths, on_result=lambda r: seen.append(r.path.name))
    assert all(r.ok and r.status == 0 for r in results)
    assert sorted(seen) == sorted(p.name for p in paths)
    answer = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"PatientID": "SENT-1"}})
    assert len(answer) == 3


def test_send_missing_path_and_unreachable_peer(tmp_path: Path) -> None:
    port = free_port()
    path = write_series(make_ct_series(1, seed=13), tmp_path)[0]
    with pytest.raises(ConnectionFailed, match=f"PEER@127.0.0.1:{port}"):
        RemoteNode("PEER", "127.0.0.1", port, timeout=5).send([path, tmp_path / "missing"])

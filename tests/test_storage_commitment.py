"""Storage Commitment Push Model: the node answers for what it durably holds."""

from __future__ import annotations

import threading

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from conftest import dcmtk
from dicomfiles import make_ct
from test_dimse import run


def test_commitment_reports_held_and_missing(pacsnode_server, tmp_path):
    node = pacsnode_server
    ds = make_ct(tmp_path / "a.dcm")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "a.dcm"))
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True,
                                             scp_role=True)],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = generate_uid()
    held = Dataset()
    held.ReferencedSOPClassUID = ds.SOPClassUID
    held.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    missing = Dataset()
    missing.ReferencedSOPClassUID = ds.SOPClassUID
    missing.ReferencedSOPInstanceUID = generate_uid()
    request.ReferencedSOPSequence = [held, missing]
    status, _reply = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                         "1.2.840.10008.1.20.1.1")
    assert status.Status == 0x0000
    assert got.wait(10)
    assoc.release()
    event_type, info = reports[0]
    assert event_type == 2  # some failures
    assert info.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == \
        [ds.SOPInstanceUID]
    assert [i.ReferencedSOPInstanceUID for i in info.FailedSOPSequence] == \
        [missing.ReferencedSOPInstanceUID]
    assert info.FailedSOPSequence[0].FailureReason == 0x0112

"""One archive, two protocols: what C-STORE brought, QIDO finds and WADO
returns; what STOW brought, C-FIND finds.  Runs `pacsnode serve` and DCMTK."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from pydicom import dcmread

from conftest import dcmtk
from web_server import STOW_TYPE, make_instance, multipart_body, uid


def test_cstore_then_qido_and_stow_then_cfind(pacsnode_server, tmp_path: Path) -> None:
    server = pacsnode_server
    dicomweb = server.base_url + "/dicomweb"

    # C-STORE with DCMTK storescu, then QIDO-RS and WADO-RS.
    study_a, series_a, sop_a = uid(), uid(), uid()
    path = tmp_path / "a.dcm"
    path.write_bytes(make_instance(study_a, series_a, sop_a, patient_name="Dimse^Dora",
                                   patient_id="XP1"))
    done = subprocess.run([dcmtk("storescu"), "-aec", server.aet, "127.0.0.1",
                           str(server.dicom_port), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    r = httpx.get(dicomweb + "/studies", params={"PatientName": "dimse*"})
    assert r.status_code == 200, r.text
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [study_a]
    r = httpx.get(dicomweb + f"/studies/{study_a}/series/{series_a}/instances/{sop_a}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; '
                                     "transfer-syntax=*"})
    assert r.status_code == 200
    assert sop_a.encode() in r.content

    # STOW-RS, then C-FIND with DCMTK findscu.
    study_b = uid()
    r = httpx.post(dicomweb + "/studies",
                   content=multipart_body([make_instance(study_b, uid(), uid(),
                                                         patient_name="Web^Walter",
                                                         patient_id="XP2")]),
                   headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 200, r.text
    out = tmp_path / "rsp"
    out.mkdir()
    done = subprocess.run([dcmtk("findscu"), "-S", "-aec", server.aet, "-X", "-od", str(out),
                           "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=WEB*",
                           "-k", "StudyInstanceUID", "-k", "PatientID",
                           "127.0.0.1", str(server.dicom_port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert [(a.StudyInstanceUID, a.PatientID) for a in answers] == [(study_b, "XP2")]
    # Both instances are in the one index.
    r = httpx.get(dicomweb + "/instances")
    assert {i["0020000D"]["Value"][0] for i in r.json()} == {study_a, study_b}

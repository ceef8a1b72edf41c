"""WADO-URI (PS3.18 9) at /wado and at /dicomweb?requestType=WADO: the DICOM
file through the one reader (default Explicit VR Little Endian, or the
transferSyntax asked for), rendered JPEG/PNG with frame, size, region and
window, and a plain 400 for each bad parameter."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from web_server import (STOW_TYPE, WebServer, make_instance, multipart_body, sample_bytes,
                        sample_path, uid, web)  # noqa: F401


def _store(server: WebServer, name: str) -> tuple[str, str, str]:
    r = server.stow([sample_bytes(name)])
    assert r.status_code == 200, r.text
    ds = dcmread(sample_path(name), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _wado(server: WebServer, s: str, se: str, i: str, at: str = "/wado",
          **params: str) -> httpx.Response:
    query = {"requestType": "WADO", "studyUID": s, "seriesUID": se, "objectUID": i, **params}
    return httpx.get(server.base_url + at, params=query, timeout=60)


@pytest.mark.parametrize("at", ["/wado", "/dicomweb"])
def test_dicom_default_is_explicit_little_endian_with_the_same_pixels(web: WebServer,
                                                                      at: str) -> None:
    s, se, i = _store(web, "MR_small_RLE.dcm")
    r = _wado(web, s, se, i, at, contentType="application/dicom")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    got = dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == i
    np.testing.assert_array_equal(got.pixel_array, dcmread(sample_path("MR_small_RLE.dcm"))
                                  .pixel_array)


def test_dicom_in_the_stored_syntax_is_the_stored_file(web: WebServer) -> None:
    raw = sample_bytes("MR_small_RLE.dcm")
    s, se, i = _store(web, "MR_small_RLE.dcm")
    for ts in ("1.2.840.10008.1.2.5", "*"):
        r = _wado(web, s, se, i, contentType="application/dicom", transferSyntax=ts)
        assert r.status_code == 200, r.text
        assert r.content[128:] == raw[128:]


def test_dicom_in_a_syntax_it_cannot_be_given_in_is_406(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    r = _wado(web, s, se, i, contentType="application/dicom",
              transferSyntax="1.2.840.10008.1.2.4.100")  # MPEG-2: never produced
    assert r.status_code == 406
    assert "cannot be given" in r.json()["error"]


def test_image_by_default_is_a_jpeg_of_the_whole_image(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    r = _wado(web, s, se, i)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and image.size == (128, 128)


def test_png_scaled_cropped_and_windowed(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    png = _wado(web, s, se, i, contentType="image/png", rows="64")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)  # aspect kept
    region = _wado(web, s, se, i, contentType="image/png", region="0.0,0.0,0.5,0.25")
    assert Image.open(io.BytesIO(region.content)).size == (64, 32)
    # The left-top quarter of the full rendering, pixel for pixel.
    full = np.asarray(Image.open(io.BytesIO(_wado(web, s, se, i,
                                                  contentType="image/png").content)))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(region.content))),
                                  full[:32, :64])
    narrow = _wado(web, s, se, i, contentType="image/png", windowCenter="40",
                   windowWidth="80")
    wide = _wado(web, s, se, i, contentType="image/png", windowCenter="40",
                 windowWidth="4000")
    a = np.asarray(Image.open(io.BytesIO(narrow.content)), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(wide.content)), dtype=float)
    assert a.std() > b.std()  # a narrow window stretches the contrast


def test_frame_number_picks_the_frame(web: WebServer) -> None:
    s, se, i = _store(web, "rtdose.dcm")  # 15 frames of 10x10
    ds = dcmread(sample_path("rtdose.dcm"))
    renders = {}
    for frame in ("1", "15"):
        r = _wado(web, s, se, i, contentType="image/png", frameNumber=frame)
        assert r.status_code == 200, r.text
        renders[frame] = np.asarray(Image.open(io.BytesIO(r.content)))
    # The same frames through WADO-RS /frames/{n}/rendered: the same renderer.
    for frame, pixels in renders.items():
        rs = web.client().get(f"/studies/{s}/series/{se}/instances/{i}/frames/{frame}/rendered",
                              headers={"Accept": "image/png"})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rs.content))), pixels)
    assert not np.array_equal(ds.pixel_array[0], ds.pixel_array[14])
    assert not np.array_equal(renders["1"], renders["15"])
    r = _wado(web, s, se, i, contentType="image/png", frameNumber="16")
    assert r.status_code == 400 and "15 frame" in r.json()["error"]


def test_no_pixel_data_comes_as_dicom_by_default(web: WebServer) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    s, se, i = uid(), uid(), uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = i
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, i
    ds.StudyInstanceUID, ds.SeriesInstanceUID = s, se
    ds.PatientID, ds.Modality = "P9", "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert web.stow([out.getvalue()]).status_code == 200
    r = _wado(web, s, se, i)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert dcmread(io.BytesIO(r.content)).SOPInstanceUID == i
    r = _wado(web, s, se, i, contentType="image/jpeg")
    assert r.status_code == 406 and "no pixel data" in r.json()["error"]


@pytest.mark.parametrize("params, status, words", [
    ({"requestType": None}, 400, "requestType=WADO is required"),
    ({"requestType": "WADO-RS"}, 400, "requestType=WADO is required"),
    ({"objectUID": None}, 400, "objectUID is required"),
    ({"studyUID": "1.2.abc"}, 400, "not a valid UID"),
    ({"rows": "abc"}, 400, "rows must be an integer"),
    ({"columns": "0"}, 400, "columns must be an integer from 1"),
    ({"windowCenter": "40"}, 400, "give both or neither"),
    ({"windowCenter": "x", "windowWidth": "80"}, 400, "decimal number"),
    ({"windowCenter": "40", "windowWidth": "0.5"}, 400, "at least 1"),
    ({"region": "0,0,2,1"}, 400, "within 0.0-1.0"),
    ({"region": "a,b"}, 400, "four decimals"),
    ({"imageQuality": "101"}, 400, "imageQuality must be an integer from 1 to 100"),
    ({"contentType": "image/png", "imageQuality": "50"}, 400, "only applies to image/jpeg"),
    ({"contentType": "application/dicom", "rows": "64"}, 400, "only apply to a rendered"),
    ({"contentType": "image/jpeg", "transferSyntax": "1.2.840.10008.1.2"}, 400,
     "only applies to contentType=application/dicom"),
    ({"transferSyntax": "not a uid"}, 400, "is not a UID"),
    ({"anonymize": "yes"}, 400, "anonymize is not supported"),
    ({"presentationUID": "1.2.3"}, 400, "presentation states"),
    ({"annotation": "everything"}, 400, "patient and/or technique"),
    ({"contentType": "text/html"}, 406, "application/dicom, image/jpeg or image/png"),
    ({"objectUID": "1.2.3.4.5"}, 404, "is not stored"),
])
def test_bad_parameters_get_a_reason(web: WebServer, params: dict[str, str | None],
                                     status: int, words: str) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    query = {"requestType": "WADO", "studyUID": s, "seriesUID": se, "objectUID": i}
    query.update(params)  # type: ignore[arg-type]
    query = {k: v for k, v in query.items() if v is not None}
    for at in ("/wado", "/dicomweb"):
        r = httpx.get(web.base_url + at, params=query, timeout=30)
        assert r.status_code == status, (at, r.text)
        assert words in r.json()["error"]
        assert "Traceback" not in r.text and "Error(" not in r.text
    # The node keeps serving.
    assert _wado(web, s, se, i).status_code == 200


def test_series_uid_must_match(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    r = _wado(web, s, uid(), i)
    assert r.status_code == 404


def test_make_instance_renders_through_both_bases(web: WebServer) -> None:
    s, se, i = uid(), uid(), uid()
    assert web.stow([make_instance(s, se, i, rows=8, columns=8)]).status_code == 200
    a = _wado(web, s, se, i, at="/wado", contentType="image/png")
    b = _wado(web, s, se, i, at="/dicomweb", contentType="image/png")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


def test_access_and_audit_with_auth_on(tmp_path: Path) -> None:
    """WADO-URI needs the reader role, and its use is audited with the
    study and instance named in its query string."""
    from pacsnode.access.tokens import create_token
    server = WebServer(tmp_path / "data", auth="on").start()
    try:
        reader, writer, admin = (create_token(server.node.db, name, name)
                                 for name in ("reader", "writer", "admin"))
        s, se, i = uid(), uid(), uid()
        r = httpx.post(server.dicomweb + "/studies",
                       content=multipart_body([make_instance(s, se, i)]),
                       headers={"Content-Type": STOW_TYPE,
                                "Authorization": f"Bearer {writer}"}, timeout=60)
        assert r.status_code == 200, r.text
        query = {"requestType": "WADO", "studyUID": s, "seriesUID": se, "objectUID": i}
        assert httpx.get(server.base_url + "/wado", params=query, timeout=30).status_code == 401
        for at in ("/wado", "/dicomweb"):
            r = httpx.get(server.base_url + at, params=query, timeout=30,
                          headers={"Authorization": f"Bearer {reader}"})
            assert r.status_code == 200, r.text
        events = httpx.get(server.base_url + "/api/v1/audit", params={"limit": 1000},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
        accessed = [e for e in events["events"] if e["event"] == "DICOM Instances Accessed"]
        # (Accesses of one study by one user close together are one event.)
        assert accessed and all(e["studies"] == [s] and e["user"] == "reader"
                                for e in accessed)
    finally:
        server.stop()

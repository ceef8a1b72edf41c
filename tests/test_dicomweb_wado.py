"""WADO-RS: instances as stored and transcoded, metadata from the index,
bulk data, frames, rendered images and thumbnails."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, RLELossless)

from web_server import (WebServer, dataset_bytes, make_instance, parse_multipart,
                        sample_bytes, sample_path, uid, web)  # noqa: F401

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'

#: Bundled pydicom files, one per stored transfer syntax.
SYNTAX_FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "examples_ybr_color.dcm": "1.2.840.10008.1.2.4.50",
}


def _store(server: WebServer, name: str) -> tuple[str, str, str]:
    r = server.stow([sample_bytes(name)])
    assert r.status_code == 200, r.text
    ds = dcmread(sample_path(name), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _instance_url(s: str, se: str, i: str) -> str:
    return f"/studies/{s}/series/{se}/instances/{i}"


def _ts(headers: dict[str, str]) -> str:
    return headers["content-type"].split("transfer-syntax=")[1].split(";")[0].strip()


@pytest.mark.parametrize("name", sorted(SYNTAX_FILES))
def test_as_stored_is_byte_identical(web: WebServer, name: str) -> None:
    raw = sample_bytes(name)
    s, se, i = _store(web, name)
    c = web.client()
    for url in (_instance_url(s, se, i), f"/studies/{s}/series/{se}", f"/studies/{s}"):
        r = c.get(url, headers={"Accept": AS_STORED})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        parts = parse_multipart(r)
        assert len(parts) == 1
        headers, body = parts[0]
        assert _ts(headers) == SYNTAX_FILES[name]
        assert dataset_bytes(body) == dataset_bytes(raw)
        assert body[128:] == raw[128:]  # file meta too; only the preamble is zeroed


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_rle.dcm",
                                  "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_transcode_to_explicit_little_endian_keeps_pixels(web: WebServer, name: str) -> None:
    original = dcmread(sample_path(name))
    s, se, i = _store(web, name)
    # No transfer-syntax parameter: PS3.18 8.7.3.5.2 default, Explicit VR LE.
    for accept in ('multipart/related; type="application/dicom"',
                   'multipart/related; type="application/dicom"; '
                   f"transfer-syntax={ExplicitVRLittleEndian}"):
        r = web.client().get(_instance_url(s, se, i), headers={"Accept": accept})
        assert r.status_code == 200, r.text
        (headers, body), = parse_multipart(r)
        assert _ts(headers) == ExplicitVRLittleEndian
        got = dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(got.pixel_array, original.pixel_array)


@pytest.mark.parametrize("target", [JPEG2000Lossless, RLELossless, ImplicitVRLittleEndian,
                                    JPEG2000])
def test_transcode_to_compressed_and_back(web: WebServer, target: str) -> None:
    original = dcmread(sample_path("CT_small.dcm"))
    s, se, i = _store(web, "CT_small.dcm")
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    r = web.client().get(_instance_url(s, se, i), headers={"Accept": accept})
    assert r.status_code == 200, r.text
    (headers, body), = parse_multipart(r)
    assert _ts(headers) == target
    got = dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == target
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_jpeg_baseline_only_for_8_bit(web: WebServer) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    s, se, i = _store(web, "CT_small.dcm")  # 16 bits
    r = web.client().get(_instance_url(s, se, i), headers={"Accept": accept})
    assert r.status_code == 406
    assert "transfer syntax" in r.json()["error"]
    s, se, i = _store(web, "image_dfl.dcm")  # 8 bits
    r = web.client().get(_instance_url(s, se, i), headers={"Accept": accept})
    assert r.status_code == 200
    (headers, body), = parse_multipart(r)
    got = dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert got.LossyImageCompression == "01"
    diff = np.abs(got.pixel_array.astype(int) - dcmread(sample_path("image_dfl.dcm"))
                  .pixel_array.astype(int))
    assert diff.mean() < 2


def test_unsupported_syntax_or_media_type_is_406(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    c = web.client()
    for accept in ('multipart/related; type="application/dicom"; '
                   "transfer-syntax=1.2.840.10008.1.2.4.70",  # JPEG lossless SV1: no encoder
                   'multipart/related; type="application/dicom"; '
                   "transfer-syntax=1.2.840.10008.1.2.2",  # big endian: retired
                   "application/json", "image/png"):
        r = c.get(_instance_url(s, se, i), headers={"Accept": accept})
        assert r.status_code == 406, accept
        assert r.json()["error"]
    # A list of choices: the first we can produce wins.
    r = c.get(_instance_url(s, se, i), headers={"Accept": (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.70, '
        f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}')})
    assert r.status_code == 200 and _ts(parse_multipart(r)[0][0]) == RLELossless


def test_single_part_application_dicom_for_an_instance(web: WebServer) -> None:
    raw = sample_bytes("CT_small.dcm")
    s, se, i = _store(web, "CT_small.dcm")
    r = web.client().get(_instance_url(s, se, i),
                         headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom")
    assert r.content[128:] == raw[128:]


def test_series_order_and_study_of_many(web: WebServer) -> None:
    study, series = uid(), uid()
    sops = {n: uid() for n in (3, 1, 2)}
    assert web.stow([make_instance(study, series, sops[n], instance_number=n)
                     for n in (3, 1, 2)]).status_code == 200
    other = uid()
    assert web.stow([make_instance(study, other, uid())]).status_code == 200
    r = web.client().get(f"/studies/{study}/series/{series}", headers={"Accept": AS_STORED})
    got = [dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parse_multipart(r)]
    assert got == [sops[1], sops[2], sops[3]]
    r = web.client().get(f"/studies/{study}", headers={"Accept": AS_STORED})
    assert len(parse_multipart(r)) == 4


@pytest.mark.parametrize("snapshot", [True, False])
def test_series_streams_before_the_last_file_is_read(web: WebServer, monkeypatch,
                                                     snapshot: bool) -> None:
    """Parts go out while later files are still unread.  Up to SNAPSHOT_FILES
    instances, every file is opened when the request is answered and the
    body has a Content-Length: a file deleted once the first bytes arrived
    is still sent, whole.  Beyond that, files are opened one by one and the
    body is chunked: the deleted file is simply missing from the response."""
    from pacsnode.web import dicomweb
    if not snapshot:
        monkeypatch.setattr(dicomweb, "SNAPSHOT_FILES", 10)
    study, series = uid(), uid()
    sops = [uid() for _ in range(24)]
    for n in range(0, 24, 6):
        parts = [make_instance(study, series, sops[k], instance_number=k + 1, rows=512,
                               columns=1024) for k in range(n, n + 6)]
        assert web.stow(parts).status_code == 200
    last = next(web.node.store.root.glob(f"studies/*/*/{sops[-1]}.dcm"))
    stored = last.read_bytes()
    with httpx.stream("GET", f"{web.dicomweb}/studies/{study}/series/{series}",
                      headers={"Accept": AS_STORED}, timeout=60) as r:
        assert r.status_code == 200
        assert ("content-length" in r.headers) is snapshot
        chunks = r.iter_bytes()
        first = next(chunks)
        assert first
        assert len(first) < 23 * len(stored)  # the body is still on its way
        last.unlink()
        time.sleep(0.05)
        content = first + b"".join(chunks)
    if snapshot:
        assert len(content) == int(r.headers["content-length"])
    response = httpx.Response(200, headers=r.headers, content=content)
    parts = parse_multipart(response)
    got = [dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID for _, b in parts]
    assert got == (sops if snapshot else sops[:-1])
    if snapshot:
        assert parts[-1][1] == stored


def test_dicomweb_client_retrieve(web: WebServer) -> None:
    s, se, i = _store(web, "MR_small_RLE.dcm")
    client = web.dicomweb_client()
    ds = client.retrieve_instance(s, se, i, media_types=(("application/dicom", "*"),))
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    ds = client.retrieve_instance(s, se, i)  # this client's default asks for "*"
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    ds = client.retrieve_instance(s, se, i, media_types=(("application/dicom",
                                                          ExplicitVRLittleEndian),))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, dcmread(sample_path("MR_small_RLE.dcm")).pixel_array)
    assert [d.SOPInstanceUID for d in client.retrieve_series(s, se)] == [i]
    assert [d.SOPInstanceUID for d in client.retrieve_study(s)] == [i]


# -- metadata -------------------------------------------------------------------

def _without_bulk(d: dict) -> dict:
    out = {}
    for tag, value in d.items():
        if "BulkDataURI" in value or "InlineBinary" in value:
            continue
        if value.get("vr") == "SQ" and "Value" in value:
            value = dict(value, Value=[_without_bulk(item) for item in value["Value"]])
        out[tag] = value
    return out


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                                  "examples_ybr_color.dcm", "test-SR.dcm"])
def test_metadata_equals_pydicom_json(web: WebServer, name: str) -> None:
    s, se, i = _store(web, name)
    r = web.client().get(_instance_url(s, se, i) + "/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+json")
    (meta,) = r.json()
    expected = dcmread(sample_path(name)).to_json_dict()
    assert _without_bulk(meta) == _without_bulk(expected)


def test_metadata_bulk_data_uri_serves_the_bytes(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    (meta,) = web.client().get(_instance_url(s, se, i) + "/metadata").json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri == f"{web.dicomweb}{_instance_url(s, se, i)}/bulkdata/7FE00010"
    r = httpx.get(uri)
    assert r.status_code == 200
    (headers, body), = parse_multipart(r)
    assert headers["content-type"].startswith("application/octet-stream")
    assert body == dcmread(sample_path("CT_small.dcm")).PixelData
    single = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.content == body
    client = web.dicomweb_client()
    assert client.retrieve_bulkdata(uri) == [body]
    # A non-pixel bulk element (an OW LUT above the inline threshold, or
    # whatever the file has) is served the same way.
    assert httpx.get(f"{web.dicomweb}{_instance_url(s, se, i)}/bulkdata/00291010"
                     ).status_code in (200, 404)
    assert httpx.get(f"{web.dicomweb}{_instance_url(s, se, i)}/bulkdata/zz").status_code == 400


def test_series_and_study_metadata_with_etag(web: WebServer) -> None:
    study, series = uid(), uid()
    sops = {n: uid() for n in (2, 1)}
    assert web.stow([make_instance(study, series, sops[n], instance_number=n)
                     for n in (2, 1)]).status_code == 200
    c = web.client()
    r = c.get(f"/studies/{study}/series/{series}/metadata")
    assert [m["00080018"]["Value"][0] for m in r.json()] == [sops[1], sops[2]]
    etag = r.headers["etag"]
    again = c.get(f"/studies/{study}/series/{series}/metadata", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    study_meta = c.get(f"/studies/{study}/metadata")
    assert len(study_meta.json()) == 2
    study_etag = study_meta.headers["etag"]
    assert web.stow([make_instance(study, uid(), uid())]).status_code == 200
    changed = c.get(f"/studies/{study}/metadata", headers={"If-None-Match": study_etag})
    assert changed.status_code == 200 and len(changed.json()) == 3
    assert changed.headers["etag"] != study_etag
    client = web.dicomweb_client()
    assert len(client.retrieve_series_metadata(study, series)) == 2


def test_metadata_of_many_instances_streams_the_same_answer(web: WebServer,
                                                           monkeypatch) -> None:
    """Up to METADATA_BATCH instances the headers come with the first query;
    beyond, they are read in batches while the body streams: the answer is
    the same (order, Bulk Data URIs, ETag)."""
    from pacsnode.web import dicomweb
    study, series = uid(), uid()
    sops = [uid() for _ in range(5)]
    assert web.stow([make_instance(study, series, sop, instance_number=5 - n)
                     for n, sop in enumerate(sops)]).status_code == 200
    c = web.client()
    url = f"/studies/{study}/series/{series}/metadata"
    whole = c.get(url)
    monkeypatch.setattr(dicomweb, "METADATA_BATCH", 2)
    batched = c.get(url)
    assert whole.status_code == batched.status_code == 200
    assert "content-length" not in batched.headers  # streamed
    assert batched.json() == whole.json()
    assert batched.headers["etag"] == whole.headers["etag"]
    assert [m["00080018"]["Value"][0] for m in whole.json()] == sops[::-1]
    assert all(m["7FE00010"]["BulkDataURI"].endswith(f"/instances/{sop}/bulkdata/7FE00010")
               for m, sop in zip(whole.json(), sops[::-1]))


def test_metadata_reads_no_file(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    next(web.node.store.root.glob(f"studies/*/*/{i}.dcm")).unlink()
    r = web.client().get(f"/studies/{s}/metadata")
    assert r.status_code == 200 and r.json()[0]["00080018"]["Value"] == [i]


# -- frames -------------------------------------------------------------------

def _frames(server: WebServer, s: str, se: str, i: str, frames: str,
            accept: str = 'multipart/related; type="application/octet-stream"'
            ) -> httpx.Response:
    return server.client().get(_instance_url(s, se, i) + f"/frames/{frames}",
                               headers={"Accept": accept})


def test_native_frames_by_offset(web: WebServer) -> None:
    ds = dcmread(sample_path("rtdose.dcm"))  # 15 frames, 32 bits, implicit VR
    s, se, i = _store(web, "rtdose.dcm")
    size = ds.Rows * ds.Columns * 4
    r = _frames(web, s, se, i, "2,15")
    assert r.status_code == 200
    parts = parse_multipart(r)
    assert [b for _, b in parts] == [ds.PixelData[size:2 * size], ds.PixelData[14 * size:]]
    assert parts[0][0]["content-type"].startswith("application/octet-stream")
    assert parts[0][0]["content-location"].endswith("/frames/2")
    # Default Accept is the same.
    assert parse_multipart(web.client().get(_instance_url(s, se, i) + "/frames/2"))[0][1] == \
        parts[0][1]


def test_big_endian_frame_comes_little_endian(web: WebServer) -> None:
    ds = dcmread(sample_path("MR_small_bigendian.dcm"))
    s, se, i = _store(web, "MR_small_bigendian.dcm")
    (_, body), = parse_multipart(_frames(web, s, se, i, "1"))
    assert body == ds.pixel_array.astype("<i2" if ds.PixelRepresentation else "<u2").tobytes()


def test_compressed_frames_as_stored_or_decoded(web: WebServer) -> None:
    ds = dcmread(sample_path("examples_ybr_color.dcm"))  # 30 JPEG baseline frames
    s, se, i = _store(web, "examples_ybr_color.dcm")
    stored = list(generate_frames(ds.PixelData, number_of_frames=30))
    r = _frames(web, s, se, i, "1,3", 'multipart/related; type="image/jpeg"')
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(r)
    assert [b for _, b in parts] == [stored[0], stored[2]]
    assert _ts(parts[0][0]) == JPEGBaseline8Bit
    r = _frames(web, s, se, i, "3", 'multipart/related; type="application/octet-stream"; '
                                    "transfer-syntax=*")
    assert parse_multipart(r)[0][1] == stored[2]
    r = _frames(web, s, se, i, "3")
    (_, body), = parse_multipart(r)
    assert body == ds.pixel_array[2].tobytes()  # decoded to RGB


def test_frames_encoded_on_request(web: WebServer) -> None:
    import openjpeg
    ds = dcmread(sample_path("CT_small.dcm"))
    s, se, i = _store(web, "CT_small.dcm")
    r = _frames(web, s, se, i, "1", 'multipart/related; type="image/jp2"')
    assert r.status_code == 200
    (headers, body), = parse_multipart(r)
    assert headers["content-type"].startswith("image/jp2")
    assert np.array_equal(openjpeg.decode(body).astype(ds.pixel_array.dtype), ds.pixel_array)
    r = _frames(web, s, se, i, "1", 'multipart/related; type="image/jls"')
    assert r.status_code == 406


def test_frame_errors(web: WebServer) -> None:
    s, se, i = _store(web, "examples_ybr_color.dcm")
    r = _frames(web, s, se, i, "31")
    assert r.status_code == 404 and "30 frame" in r.json()["error"]
    assert _frames(web, s, se, i, "0").status_code == 400
    assert _frames(web, s, se, i, "1,x").status_code == 400
    ss, sse, si = _store(web, "test-SR.dcm")
    r = _frames(web, ss, sse, si, "1")
    assert r.status_code == 404 and "no pixel data" in r.json()["error"]


def test_dicomweb_client_frames(web: WebServer) -> None:
    ds = dcmread(sample_path("rtdose.dcm"))
    s, se, i = _store(web, "rtdose.dcm")
    client = web.dicomweb_client()
    frames = client.retrieve_instance_frames(s, se, i, frame_numbers=[1, 3],
                                             media_types=("application/octet-stream",))
    size = ds.Rows * ds.Columns * 4
    assert frames == [ds.PixelData[:size], ds.PixelData[2 * size:3 * size]]


# -- rendered and thumbnails ------------------------------------------------------

def _image(r: httpx.Response) -> Image.Image:
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content))


def test_rendered_instance(web: WebServer) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    c = web.client()
    img = _image(c.get(_instance_url(s, se, i) + "/rendered"))
    assert img.format == "JPEG" and img.size == (128, 128) and img.mode == "L"
    png = _image(c.get(_instance_url(s, se, i) + "/rendered", headers={"Accept": "image/png"}))
    assert png.format == "PNG" and png.size == (128, 128)
    assert np.asarray(png).std() > 10  # windowed from the data set: not flat
    small = _image(c.get(_instance_url(s, se, i) + "/rendered",
                         params={"viewport": "64,32"}, headers={"Accept": "image/png"}))
    assert small.size == (32, 32)
    # A window far below every value renders white; far above renders black.
    white = _image(c.get(_instance_url(s, se, i) + "/rendered",
                         params={"window": "-5000,10"}, headers={"Accept": "image/png"}))
    assert np.asarray(white).min() == 255
    black = _image(c.get(_instance_url(s, se, i) + "/rendered",
                         params={"window": "90000,10,sigmoid"}, headers={"Accept": "image/png"}))
    assert np.asarray(black).max() == 0
    assert c.get(_instance_url(s, se, i) + "/rendered",
                 params={"window": "abc"}).status_code == 400
    assert c.get(_instance_url(s, se, i) + "/rendered",
                 headers={"Accept": "image/gif"}).status_code == 406


def test_rendered_colour_and_frames(web: WebServer) -> None:
    ds = dcmread(sample_path("examples_ybr_color.dcm"))
    s, se, i = _store(web, "examples_ybr_color.dcm")
    img = _image(web.client().get(_instance_url(s, se, i) + "/frames/5/rendered",
                                  headers={"Accept": "image/png"}))
    assert img.mode == "RGB" and img.size == (ds.Columns, ds.Rows)
    assert np.array_equal(np.asarray(img), ds.pixel_array[4])


def test_thumbnails_at_every_level(web: WebServer) -> None:
    s, se, i = _store(web, "JPEG2000.dcm")  # 1024 rows x 256 columns
    c = web.client()
    for url in (f"/studies/{s}/thumbnail", f"/studies/{s}/series/{se}/thumbnail",
                _instance_url(s, se, i) + "/thumbnail"):
        img = _image(c.get(url))
        assert img.format == "JPEG" and img.size == (32, 128)
    img = _image(c.get(f"/studies/{s}/thumbnail", params={"viewport": "20,20"}))
    assert img.size == (5, 20)
    ss, sse, si = _store(web, "test-SR.dcm")
    r = c.get(f"/studies/{ss}/thumbnail")
    assert r.status_code == 404 and "no image" in r.json()["error"]
    assert c.get(_instance_url(ss, sse, si) + "/rendered").status_code == 404


# -- errors -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", "/metadata", "/rendered", "/thumbnail", "/frames/1"])
def test_bad_and_unknown_uids(web: WebServer, suffix: str) -> None:
    s, se, i = _store(web, "CT_small.dcm")
    c = web.client()
    r = c.get(_instance_url(s, se, "1.2.bad") + suffix)
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]
    r = c.get(_instance_url(s, se, "9" * 65) + suffix)
    assert r.status_code == 400
    r = c.get(_instance_url(s, se, uid()) + suffix)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = c.get(_instance_url(uid(), se, i) + suffix)
    assert r.status_code == 404 and "study" in r.json()["error"]
    r = c.get(_instance_url(s, uid(), i) + suffix)
    assert r.status_code == 404 and "series" in r.json()["error"]


def test_unknown_study_and_series(web: WebServer) -> None:
    c = web.client()
    for url in (f"/studies/{uid()}", f"/studies/{uid()}/metadata",
                f"/studies/{uid()}/series/{uid()}", f"/studies/{uid()}/series/{uid()}/metadata"):
        r = c.get(url)
        assert r.status_code == 404 and r.json()["error"]
    assert c.get("/studies/abc").status_code == 400




def test_metadata_on_each_database(tmp_path, database_url: str) -> None:
    """Answered on the event loop on SQLite, on a worker thread on
    PostgreSQL: the same instances in InstanceNumber order, every level."""
    server = WebServer(tmp_path / "data", database_url=database_url).start()
    try:
        study, series = uid(), uid()
        sops = {n: uid() for n in (3, 1, 2)}
        assert server.stow([make_instance(study, series, sops[n], instance_number=n)
                            for n in (3, 1, 2)]).status_code == 200
        c = server.client()
        for url in (f"/studies/{study}/metadata", f"/studies/{study}/series/{series}/metadata"):
            r = c.get(url)
            assert r.status_code == 200, r.text
            assert [m["00080018"]["Value"][0] for m in r.json()] == [sops[1], sops[2], sops[3]]
        (one,) = c.get(f"/studies/{study}/series/{series}/instances/{sops[2]}/metadata").json()
        assert one["00200013"]["Value"] == [2]
        assert c.get(f"/studies/{uid()}/metadata").status_code == 404
    finally:
        server.stop()

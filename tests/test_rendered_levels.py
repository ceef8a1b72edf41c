"""WADO-RS rendered and thumbnail resources at every level PS3.18 defines
(study, series, instance, frame), and the ``accept`` query parameter
(PS3.18 8.3.3.1) overriding the Accept header on every WADO-RS resource."""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from web_server import (WebServer, make_instance, parse_multipart, sample_bytes, sample_path,
                        uid, web)  # noqa: F401

OCTETS = 'multipart/related; type="application/octet-stream"'


def _pixels(n: int, size: int = 16) -> bytes:
    """A 16-bit ramp shifted differently per instance, so each renders differently."""
    return np.roll(np.arange(size * size, dtype=np.uint16), 37 * n).astype("<u2").tobytes()


def _series(server: WebServer, study: str, count: int, numbers: list[int]) -> tuple[str, list[str]]:
    series_uid = uid()
    sops = [uid() for _ in range(count)]
    parts = [make_instance(study, series_uid, sop, instance_number=n, rows=16, columns=16,
                           pixels=_pixels(n))
             for sop, n in zip(sops, numbers)]
    assert server.stow(parts).status_code == 200
    return series_uid, sops


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_ohif_thumbnail_request_with_accept_parameter(web: WebServer) -> None:
    """OHIF's thumbnailRendering 'rendered': ?accept=image/jpeg with an Accept
    header of octet-stream multipart (before: 406)."""
    s = uid()
    se, (i,) = _series(web, s, 1, [1])
    c = web.client()
    url = f"/studies/{s}/series/{se}/instances/{i}"
    r = c.get(url + "/rendered", headers={"Accept": OCTETS})
    assert r.status_code == 406
    for resource in ("/rendered", "/thumbnail", "/frames/1/rendered", "/frames/1/thumbnail"):
        r = c.get(url + resource + "?accept=image/jpeg", headers={"Accept": OCTETS})
        assert r.status_code == 200, (resource, r.text)
        assert r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    r = c.get(url + "/rendered?accept=image/png", headers={"Accept": "image/jpeg"})
    assert r.headers["content-type"] == "image/png"


def test_accept_parameter_on_instances_metadata_and_frames(web: WebServer) -> None:
    s, se, i = (dcmread(sample_path("MR_small_RLE.dcm"), stop_before_pixels=True).get(k)
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    assert web.stow([sample_bytes("MR_small_RLE.dcm")]).status_code == 200
    c = web.client()
    base = f"/studies/{s}/series/{se}/instances/{i}"
    # metadata: an unescaped '+' arrives as a space; the header alone would be refused.
    r = c.get(base + "/metadata?accept=application/dicom+json", headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()[0]["00080018"]["Value"] == [i]
    # instances: as stored, asked for in the query only.
    accept = quote('multipart/related; type="application/dicom"; transfer-syntax=*')
    r = c.get(f"{base}?accept={accept}", headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    (headers, body), = parse_multipart(r)
    assert "transfer-syntax=1.2.840.10008.1.2.5" in headers["content-type"]
    assert body[128:] == sample_bytes("MR_small_RLE.dcm")[128:]
    # frames: the parameter wins over an Accept header that would be fine.
    accept = quote('multipart/related; type="image/x-dicom-rle"')
    r = c.get(f"{base}/frames/1?accept={accept}", headers={"Accept": OCTETS})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('multipart/related; type="image/x-dicom-rle"')
    # An accept parameter naming nothing we give is a 406, whatever the header says.
    r = c.get(f"{base}/frames/1?accept=image/gif", headers={"Accept": OCTETS})
    assert r.status_code == 406
    # Repeated, its values form one list (the first that can be given wins).
    r = c.get(f"{base}/rendered?accept=image/gif&accept=image/png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("media", ["image/jpeg", "image/png"])
def test_rendered_series_is_every_image_in_instance_number_order(web: WebServer,
                                                                 media: str) -> None:
    s = uid()
    se, sops = _series(web, s, 3, [3, 1, 2])
    c = web.client()
    r = c.get(f"/studies/{s}/series/{se}/rendered", headers={"Accept": media})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(f'multipart/related; type="{media}"')
    parts = parse_multipart(r)
    by_number = [sops[1], sops[2], sops[0]]  # InstanceNumber 1, 2, 3
    assert [h["content-location"].rsplit("/instances/", 1)[1] for h, _ in parts] == \
        [f"{sop}/rendered" for sop in by_number]
    for (headers, body), sop in zip(parts, by_number):
        assert headers["content-type"] == media
        single = c.get(f"/studies/{s}/series/{se}/instances/{sop}/rendered",
                       headers={"Accept": media})
        assert body == single.content  # the same rendering as the instance resource
    assert len({body for _, body in parts}) == 3


def test_rendered_study_spans_its_series(web: WebServer) -> None:
    s = uid()
    se1, sops1 = _series(web, s, 2, [1, 2])
    se2, sops2 = _series(web, s, 1, [1])
    c = web.client()
    accept = quote('multipart/related; type="image/png"')
    r = c.get(f"/studies/{s}/rendered?accept={accept}")
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == 3
    located = {h["content-location"].split("/instances/")[1].split("/")[0] for h, _ in parts}
    assert located == {*sops1, *sops2}
    assert all(_image(body).shape == (16, 16) for _, body in parts)


def test_thumbnails_at_every_level_are_small(web: WebServer) -> None:
    s, se, i = (dcmread(sample_path("CT_small.dcm"), stop_before_pixels=True).get(k)
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    assert web.stow([sample_bytes("CT_small.dcm")]).status_code == 200
    c = web.client()
    urls = [f"/studies/{s}/thumbnail", f"/studies/{s}/series/{se}/thumbnail",
            f"/studies/{s}/series/{se}/instances/{i}/thumbnail",
            f"/studies/{s}/series/{se}/instances/{i}/frames/1/thumbnail"]
    bodies = []
    for url in urls:
        r = c.get(url, headers={"Accept": "image/png"})
        assert r.status_code == 200, (url, r.text)
        image = Image.open(io.BytesIO(r.content))
        assert max(image.size) <= 128
        bodies.append(r.content)
    assert len(set(bodies)) == 1  # one instance: the same thumbnail at every level
    r = c.get(urls[1] + "?viewport=32,32", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)


def test_frame_thumbnail_shows_that_frame(web: WebServer) -> None:
    ds = dcmread(sample_path("rtdose.dcm"))
    assert web.stow([sample_bytes("rtdose.dcm")]).status_code == 200
    c = web.client()
    base = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames")
    first = c.get(base + "/1/thumbnail", headers={"Accept": "image/png"})
    last = c.get(base + "/15/thumbnail", headers={"Accept": "image/png"})
    assert first.status_code == last.status_code == 200
    assert first.content != last.content
    assert c.get(base + "/16/thumbnail").status_code == 404
    assert c.get(base + "/1,2/thumbnail").status_code == 400


def test_rendered_levels_refuse_what_they_cannot_give(web: WebServer) -> None:
    s = uid()
    se, _ = _series(web, s, 1, [1])
    c = web.client()
    r = c.get(f"/studies/{s}/series/{se}/rendered", headers={"Accept": "application/dicom"})
    assert r.status_code == 406 and "image/jpeg or image/png" in r.json()["error"]
    assert c.get(f"/studies/{uid()}/rendered").status_code == 404
    assert c.get("/studies/1.2.x/rendered").status_code == 400


def test_accept_parameter_on_qido_is_not_a_matching_key(web: WebServer) -> None:
    s = uid()
    _series(web, s, 1, [1])
    c = web.client()
    r = c.get(f"/studies?StudyInstanceUID={s}&accept=application/dicom+json",
              headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert [item["0020000D"]["Value"][0] for item in r.json()] == [s]
    assert c.get(f"/studies?StudyInstanceUID={s}&accept=image/png").status_code == 406

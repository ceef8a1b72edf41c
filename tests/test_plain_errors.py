"""Refusals in plain words, never a decoder's or a parser's exception text:
a frame that cannot be read, an image that cannot be rendered, a UPS body
that is JSON but not a DICOM JSON data set.  The detail goes to the log,
and the node keeps serving."""

from __future__ import annotations

import json

import httpx
from pydicom import dcmread

from pacsnode.retrieve import locate
from web_server import WebServer, sample_bytes, sample_path, web  # noqa: F401

#: Words of Python's and the decoders' messages that must not reach a client.
_INTERNALS = ("Traceback", "Error:", "openjpeg", "pylibjpeg", "Exception", "line ", "errno")


def _corrupt_codestream(server: WebServer) -> tuple[str, str, str]:
    """A stored JPEG 2000 instance whose codestream start is overwritten:
    the file is whole, its pixel data cannot be decoded."""
    name = "MR_small_jp2klossless.dcm"
    assert server.stow([sample_bytes(name)]).status_code == 200
    ds = dcmread(sample_path(name), stop_before_pixels=True)
    (ref,) = locate(server.node, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    data = bytearray(ref.path.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # SOC + SIZ
    data[start:start + 64] = b"\x00" * 64
    ref.path.write_bytes(bytes(data))
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_undecodable_pixels_get_plain_reasons(web: WebServer) -> None:
    s, se, i = _corrupt_codestream(web)
    c = web.client()
    base = f"/studies/{s}/series/{se}/instances/{i}"
    rendered = c.get(base + "/rendered")
    assert rendered.status_code == 406
    assert rendered.json()["error"] == (f"instance {i} cannot be rendered: its pixel data "
                                        "could not be decoded (see the node's log)")
    frame = c.get(base + "/frames/1")  # uncompressed frames: decoded first
    assert frame.status_code == 500
    assert frame.json()["error"] == (f"frame 1 of instance {i} could not be read from its "
                                     "stored file (see the node's log)")
    for r in (rendered, frame):
        assert not any(word in r.text for word in _INTERNALS), r.text
    # The node keeps serving: the same instance as stored, and its metadata.
    assert c.get(base + "/metadata").status_code == 200


def test_ups_body_that_is_not_dicom_json_gets_plain_words(web: WebServer) -> None:
    body = {"00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
            "00400275": {"vr": "SQ", "Value": [5]}}  # an item that is not an object
    r = httpx.post(web.dicomweb + "/workitems", content=json.dumps(body), timeout=30,
                   headers={"Content-Type": "application/dicom+json",
                            "Accept": "application/dicom+json"})
    assert r.status_code == 400
    reason = r.headers["warning"]
    assert "not a valid DICOM JSON data set" in reason
    assert "'int' object" not in reason and "has no attribute" not in reason

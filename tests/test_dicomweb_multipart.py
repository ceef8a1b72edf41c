"""The streaming multipart/related parser and the transcoding helpers, without
a server."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
                         RLELossless)

from pacsnode.transcode import TranscodeError, can_transcode, transcode_file
from pacsnode.web.dicomweb import parse_accept
from pacsnode.web.multipart import (MultipartError, MultipartParser, PartData, PartEnd,
                                    PartStart, parse_content_type)
from web_server import sample_path

BOUNDARY = b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


def _run(body: bytes, step: int) -> list[tuple[dict, bytes]]:
    parser = MultipartParser(BOUNDARY)
    parts: list[tuple[dict, bytes]] = []
    headers: dict = {}
    data = bytearray()
    for i in range(0, len(body), step):
        for ev in parser.feed(body[i:i + step]):
            if isinstance(ev, PartStart):
                headers, data = ev.headers, bytearray()
            elif isinstance(ev, PartData):
                data += ev.data
            elif isinstance(ev, PartEnd):
                parts.append((headers, bytes(data)))
    parser.close()
    return parts


def test_parts_survive_any_chunking() -> None:
    rng = random.Random(3)
    for _ in range(60):
        payloads = [rng.randbytes(rng.randint(0, 3000)) + b"\r\n--" + BOUNDARY[:10]
                    for _ in range(rng.randint(1, 4))]
        # dicomweb-client style: a CRLF before the first delimiter, none after the last.
        body = b"".join(b"\r\n--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
                        for p in payloads) + b"\r\n--" + BOUNDARY + b"--"
        for step in (1, 3, 64, 4096, len(body)):
            got = _run(body, step)
            assert [p for _, p in got] == payloads
            assert all(h == {"content-type": "application/dicom"} for h, _ in got)


def test_preamble_epilogue_padding_and_headerless_parts() -> None:
    body = (b"preamble to ignore\r\n--" + BOUNDARY + b"  \r\n\r\nfirst\r\n--" + BOUNDARY +
            b"\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1"
            b"\r\nX-Other: 1\r\n\r\nsecond\r\n--" + BOUNDARY + b"--\r\nepilogue")
    got = _run(body, 5)
    assert got[0] == ({}, b"first")
    assert got[1][0]["content-type"] == \
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert got[1][1] == b"second"


@pytest.mark.parametrize("body", [
    b"no boundary at all",
    b"--" + BOUNDARY + b"\r\nContent-Type: a\r\n\r\nunterminated",
    b"--" + BOUNDARY + b"\r\nbroken header line\r\n\r\nx\r\n--" + BOUNDARY + b"--",
    b"--" + BOUNDARY + b"garbage\r\n\r\nx\r\n--" + BOUNDARY + b"--",
])
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MultipartError):
        _run(body, 7)


def test_header_block_is_capped() -> None:
    parser = MultipartParser(BOUNDARY)
    with pytest.raises(MultipartError, match="headers exceed"):
        parser.feed(b"--" + BOUNDARY + b"\r\nX: " + b"a" * 20000)


def test_content_type_and_accept_parsing() -> None:
    assert parse_content_type('Multipart/Related; TYPE="application/dicom"; boundary="a;b"') == \
        ("multipart/related", {"type": "application/dicom", "boundary": "a;b"})
    ranges = parse_accept('image/png;q=0.5, multipart/related; type="application/dicom"; '
                          "transfer-syntax=*, image/gif;q=0")
    assert [(r.type, r.transfer_syntax) for r in ranges] == [
        ("multipart/related", "*"), ("image/png", None)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose.dcm's own UIDs
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "ExplVR_BigEnd.dcm", "rtdose.dcm", "image_dfl.dcm"])
def test_transcoding_keeps_pixels_and_can_transcode_is_honest(name: str) -> None:
    path = sample_path(name)
    original = dcmread(path)
    src = original.file_meta.TransferSyntaxUID
    for dst in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                RLELossless, JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit):
        predicted = can_transcode(src, dst, bits_allocated=original.BitsAllocated)
        try:
            data = transcode_file(path, dst)
        except TranscodeError:
            assert not predicted, f"{name} -> {dst.name} was predicted possible"
            continue
        assert predicted, f"{name} -> {dst.name} worked but was predicted impossible"
        got = dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == dst
        assert got.SOPInstanceUID == original.SOPInstanceUID
        if dst == JPEGBaseline8Bit:
            assert np.abs(got.pixel_array.astype(int) - original.pixel_array).mean() < 3
        else:
            assert np.array_equal(got.pixel_array, original.pixel_array), dst.name

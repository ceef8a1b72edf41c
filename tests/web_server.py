"""The ASGI app in-process on a real loopback socket: a Node on a fresh data
dir, ``create_app(node)``, uvicorn in a background thread.  Clients
(httpx, dicomweb-client) talk HTTP to it as they would to ``pacsnode serve``.

Use the ``web`` fixture (import it into a test module), or ``WebServer``
directly for non-default settings."""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydicom import dcmread
from pydicom.data import get_testdata_file

from conftest import free_port
from pacsnode.config import load_settings
from pacsnode.node import Node
from pacsnode.web.app import create_app
from pacsnode.web.zerocopy import http_config

BOUNDARY = "pacsnode-test-boundary-7d3f"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


class WebServer:
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        settings = load_settings(overrides={"data_dir": data_dir, "fsync": False, **overrides},
                                 environ={})
        self.node = Node(settings)
        self.app = create_app(self.node)
        self.port = free_port()
        # As ``pacsnode serve`` configures it (zero-copy file bodies).
        config = http_config(self.app, "127.0.0.1", self.port, log_level="warning",
                             lifespan="off", access_log=False,
                             read_timeout=settings.http_read_timeout)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self._clients: list[Any] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.base_url + "/dicomweb"

    def start(self) -> "WebServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.node.close()

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client on the DICOMweb base URL (closed by ``stop``)."""
        client = httpx.Client(base_url=self.dicomweb, timeout=60, **kw)
        self._clients.append(client)
        return client

    def dicomweb_client(self) -> Any:
        """A ``dicomweb_client`` DICOMwebClient on this server (closed by ``stop``)."""
        from dicomweb_client.api import DICOMwebClient
        client = DICOMwebClient(url=self.dicomweb)
        self._clients.append(client._session)
        return client

    def stow(self, parts: list[bytes], study: str | None = None,
             content_type: str = STOW_TYPE, part_type: str = "application/dicom",
             **kw: Any) -> httpx.Response:
        url = self.dicomweb + "/studies" + (f"/{study}" if study else "")
        return httpx.post(url, content=multipart_body(parts, part_type),
                          headers={"Content-Type": content_type}, timeout=60, **kw)


def multipart_body(parts: list[bytes], part_type: str = "application/dicom",
                   boundary: str = BOUNDARY) -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts (headers, body) of a multipart/related response, checked against
    the declared boundary."""
    from pacsnode.web.multipart import (MultipartParser, PartData, PartEnd, PartStart,
                                        parse_content_type)
    media, params = parse_content_type(response.headers["content-type"])
    assert media == "multipart/related", response.headers["content-type"]
    parser = MultipartParser(params["boundary"])
    parts: list[tuple[dict[str, str], bytes]] = []
    headers: dict[str, str] = {}
    body = bytearray()
    for ev in parser.feed(response.content):
        if isinstance(ev, PartStart):
            headers, body = ev.headers, bytearray()
        elif isinstance(ev, PartData):
            body += ev.data
        elif isinstance(ev, PartEnd):
            parts.append((headers, bytes(body)))
    parser.close()
    return parts


def sample_path(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, f"pydicom test file {name} is not bundled"
    return Path(path)


def sample_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the file meta group
    (always Explicit VR Little Endian, PS3.10 7.1)."""
    assert part10[128:132] == b"DICM"
    pos = 132
    while True:
        group = struct.unpack("<H", part10[pos:pos + 2])[0]
        if group != 0x0002:
            return part10[pos:]
        vr = part10[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack("<L", part10[pos + 8:pos + 12])[0]
        else:
            pos += 8 + struct.unpack("<H", part10[pos + 6:pos + 8])[0]


def with_uids(name: str, study: str | None = None, series: str | None = None,
              sop: str | None = None, **attrs: Any) -> bytes:
    """A bundled test file rewritten with other UIDs / attributes."""
    ds = dcmread(sample_path(name))
    if study:
        ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    if sop:
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
    for key, value in attrs.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(tmp_path / "data").start()
    yield server
    server.stop()


def make_instance(study: str, series: str, sop: str, *, patient_name: str = "Doe^John",
                  patient_id: str = "P1", study_date: str = "20200115",
                  modality: str = "CT", instance_number: int | None = 1,
                  rows: int = 4, columns: int = 4, pixels: bytes | None = None,
                  **attrs: Any) -> bytes:
    """A small, valid Part 10 CT-like instance (Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.Modality = modality
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.SeriesNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixels is None:
        pixels = bytes(range(256)) * (rows * columns * 2 // 256) + \
            bytes(rows * columns * 2 % 256)
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def uid() -> str:
    from pydicom.uid import generate_uid
    return str(generate_uid(prefix=None))

"""The codec layer under ``pacsnode.retrieve``: transfer syntax conversion
of whole data sets, and frame access.  ``retrieve.outgoing`` picks the
syntax for a peer and calls ``transcode_file`` here; C-GET, C-MOVE,
WADO-RS and export never call this module for whole instances themselves
(WADO-RS frames, bulk data and rendered images use the frame functions at
the end).

What we can produce (``PRODUCIBLE``), from anything we can decode:

* uncompressed: Explicit VR Little Endian, Implicit VR Little Endian,
  Deflated Explicit VR Little Endian.  From Explicit VR Big Endian the pixel
  data and every other OW/OF/OL/OD/OV value is byte-swapped (pydicom decodes
  the numeric VRs itself);
* lossless, 8 or 16 bits allocated: RLE Lossless (pydicom/pylibjpeg-rle),
  JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless (pylibjpeg-openjpeg);
* JPEG 2000 (1.2.840.10008.1.2.4.91) as a *lossless* code stream (the syntax
  allows both, so nothing is lost);
* JPEG Baseline (1.2.840.10008.1.2.4.50) through Pillow, for unsigned 8-bit
  data only.  It is the one lossy syntax we produce (``LOSSY_PRODUCED``);
  Lossy Image Compression is set to "01".

Explicit VR Big Endian (retired), JPEG Lossless (Process 14) and JPEG-LS
near-lossless cannot be produced (no encoder).  Decoded data from a lossy
syntax (``LOSSY``) keeps, or gets, Lossy Image Compression "01".  A data set
without Pixel Data asked for in a compressed syntax is written in Explicit
VR Little Endian (the compressed syntaxes only concern pixel data).  An
encoder that refuses the data (odd colour sizes, 32-bit samples) is a
TranscodeError, never a wrong image.

Frames: ``pixel_info`` reads a header once and finds where the Pixel Data
value starts, so ``native_frame`` reads one frame of uncompressed data by
offset and ``stored_frame`` one compressed frame through the (extended)
basic offset table, without reading the rest.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from .dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .dicom.vr import LONG_LENGTH_CODES
from .errors import PacsnodeError

__all__ = ["TranscodeError", "UNCOMPRESSED", "PRODUCIBLE", "LOSSY", "LOSSY_PRODUCED",
           "can_decode", "can_encode", "can_transcode",
           "transcode_dataset", "transcode_file", "part10_bytes", "PixelInfo", "pixel_info",
           "native_frame", "stored_frame", "decoded_frame", "encode_frame",
           "FRAME_MEDIA_TYPES", "media_type_for_syntax", "little_endian_words"]

log = logging.getLogger("pacsnode.transcode")


class TranscodeError(PacsnodeError):
    """The data cannot be given in the syntax asked for (HTTP 406, PS3.18 8.7.3;
    C-GET/C-MOVE: no acceptable presentation context)."""

    http_status = 406
    dimse_status = 0xA702


UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                          DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})

#: Syntaxes we can write, in the order we prefer them.
PRODUCIBLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
              JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEG2000, JPEGBaseline8Bit)

#: Syntaxes whose pixel data is lossy whatever the encoder did (JPEG 2000
#: and HTJ2K may be either: their data sets say so in Lossy Image Compression).
LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless})

#: What of PRODUCIBLE loses information when we write it.
LOSSY_PRODUCED = frozenset({JPEGBaseline8Bit})

#: Compressed syntaxes we write, by the bits allocated their encoders take.
_ENCODER_BITS: dict[str, tuple[int, ...]] = {JPEG2000Lossless: (8, 16), JPEG2000: (8, 16), JPEGLSLossless: (8, 16),
                 RLELossless: (8, 16), JPEGBaseline8Bit: (8,)}

#: Compressed frame media types of PS3.18 Table 8.7.3-2 (frames resources).
FRAME_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                   "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                   "1.2.840.10008.1.2.4.203"),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
}


def media_type_for_syntax(ts: str) -> str:
    """The frame media type of a compressed syntax; octet-stream for native."""
    for media, syntaxes in FRAME_MEDIA_TYPES.items():
        if ts in syntaxes:
            return media
    return "application/octet-stream"


@functools.cache
def can_decode(ts: str) -> bool:
    if ts in UNCOMPRESSED:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


@functools.cache
def can_encode(ts: str) -> bool:
    """Whether an encoder for the compressed syntax ``ts`` is installed
    (JPEG Baseline is written with Pillow, a dependency)."""
    if ts == JPEGBaseline8Bit:
        return True
    try:
        from pydicom.pixels.encoders.base import get_encoder
        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def can_transcode(src: str, dst: str, *, bits_allocated: int | None = None,
                  has_pixels: bool = True) -> bool:
    """Whether ``transcode_dataset`` can turn a ``src`` instance into ``dst``.
    Decided from index facts only (no file read)."""
    if src == dst:
        return True
    if dst not in PRODUCIBLE:
        return False
    if not has_pixels:
        return True
    if not can_decode(src):
        return False
    if dst in _ENCODER_BITS:
        if not can_encode(dst):
            return False
        if dst == JPEGBaseline8Bit:
            return bits_allocated == 8  # lossy: only when we know it fits
        return bits_allocated is None or bits_allocated in _ENCODER_BITS[dst]
    return True


# -- whole data sets --------------------------------------------------------

_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def little_endian_words(data: bytes, vr: str) -> bytes:
    """A big endian OW/OF/OL/OD/OV value in little endian order."""
    width = _SWAP.get(vr)
    if width is None or len(data) % width:
        return data
    return np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def _swap_binary(ds: Dataset) -> None:
    """Byte-swap the raw binary words pydicom kept in big-endian order."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _swap_binary(item)
        elif elem.VR in _SWAP and elem.tag != 0x7FE00010 and isinstance(elem.value, bytes):
            elem.value = little_endian_words(elem.value, elem.VR)


def _from_big_endian(ds: Dataset) -> None:
    """Turn a data set read from Explicit VR Big Endian into Explicit VR Little Endian."""
    if "PixelData" in ds:
        arr = ds.pixel_array
        if int(ds.BitsAllocated) == 1:
            from pydicom.pixels.utils import pack_bits
            data = pack_bits(arr)
        else:
            width = int(ds.BitsAllocated) // 8
            kind = "i" if int(ds.get("PixelRepresentation", 0)) else "u"
            if int(ds.get("SamplesPerPixel", 1)) > 1 and int(ds.get("PlanarConfiguration", 0)):
                # pixel_array is pixel-interleaved; the stored value was by plane.
                arr = np.moveaxis(arr, -1, -3)
            data = arr.astype(f"<{kind}{width}").tobytes()
        if len(data) % 2:
            data += b"\x00"
        ds.PixelData = data
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    _swap_binary(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _compress_jpeg_baseline(ds: Dataset, quality: int = 90) -> None:
    from PIL import Image
    if int(ds.BitsAllocated) != 8 or int(ds.get("PixelRepresentation", 0)):
        raise TranscodeError("JPEG Baseline needs unsigned 8-bit pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    spp = int(ds.get("SamplesPerPixel", 1))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL"):
        raise TranscodeError(f"JPEG Baseline from {photometric} is not supported")
    arr = ds.pixel_array  # colour comes as RGB (pydicom converts YBR_FULL)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None, ...]
    encoded = []
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame), "RGB" if spp == 3 else "L") \
            .save(buf, "JPEG", quality=quality, subsampling=0)
        encoded.append(buf.getvalue())
    original = int(ds.Rows) * int(ds.Columns) * spp * frames
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if spp == 3:
        ds.PhotometricInterpretation = "YBR_FULL"
        ds.PlanarConfiguration = 0
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.LossyImageCompression = "01"
    ratio = original / max(1, sum(len(e) for e in encoded))
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _interleave(ds: Dataset) -> None:
    """Colour-by-plane native data → colour-by-pixel, which every encoder takes."""
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 and int(ds.get("PlanarConfiguration", 0) or 0):
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        ds.PlanarConfiguration = 0


def transcode_dataset(ds: Dataset, dst: str) -> Dataset:
    """Re-encode ``ds`` (read whole, with its file meta) in ``dst``, in place.
    UIDs are kept: this is a change of encoding, not a new instance."""
    src = str(ds.file_meta.TransferSyntaxUID)
    dst = UID(dst)
    if src == dst:
        return ds
    if dst not in PRODUCIBLE:
        raise TranscodeError(f"cannot produce transfer syntax {dst}")
    try:
        if "PixelData" not in ds:
            if src == ExplicitVRBigEndian:
                _from_big_endian(ds)
            ds.file_meta.TransferSyntaxUID = dst if dst in UNCOMPRESSED \
                else ExplicitVRLittleEndian
            return ds
        if src == ExplicitVRBigEndian:
            _from_big_endian(ds)
        elif UID(src).is_compressed:
            if not can_decode(src):
                raise TranscodeError(f"no decoder installed for {UID(src).name} ({src})")
            ds.decompress(generate_instance_uid=False)
            if src in LOSSY:
                ds.LossyImageCompression = "01"
        if dst in UNCOMPRESSED:
            ds.file_meta.TransferSyntaxUID = dst
            return ds
        _interleave(ds)
        if dst == JPEGBaseline8Bit:
            _compress_jpeg_baseline(ds)
        elif dst == JPEG2000:
            # A lossless code stream is a valid JPEG 2000 (.91) stream.
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = JPEG2000
        else:
            ds.compress(dst, generate_instance_uid=False)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot transcode {UID(src).name} to {dst.name}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file with our implementation in the file meta."""
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\x00" * 128
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def transcode_file(path: str | Path, dst: str) -> bytes:
    """A stored Part 10 file re-encoded in ``dst``, as Part 10 bytes."""
    ds = dcmread(path, force=True)
    return part10_bytes(transcode_dataset(ds, dst))


# -- frames -------------------------------------------------------------------

@dataclass(frozen=True)
class PixelInfo:
    """What frame access needs from a header, read once."""

    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    frames: int
    #: File offset of the first byte of the Pixel Data value (None: not seekable,
    #: e.g. deflated).
    value_offset: int | None
    value_length: int | None
    extended_offsets: tuple[bytes, bytes] | None = None

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax).is_compressed

    @property
    def frame_bytes(self) -> int:
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        return bits // 8


def pixel_info(path: str | Path) -> PixelInfo | None:
    """The pixel description of a stored file, or None without Pixel Data."""
    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True, force=True)
        pos = fh.tell()
        ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        offset: int | None = None
        length: int | None = None
        if ts == DeflatedExplicitVRLittleEndian:
            full = dcmread(path, force=True, specific_tags=["PixelData"])
            if "PixelData" not in full:
                return None
        else:
            head = fh.read(12)
            little = ts != ExplicitVRBigEndian
            end = "<" if little else ">"
            if len(head) < 8:
                return None
            group, elem = struct.unpack(end + "HH", head[:4])
            if (group, elem) != (0x7FE0, 0x0010):
                return None
            if ts == ImplicitVRLittleEndian:
                length = struct.unpack(end + "L", head[4:8])[0]
                offset = pos + 8
            else:
                vr = head[4:6]
                if vr in LONG_LENGTH_CODES:
                    length = struct.unpack(end + "L", head[8:12])[0]
                    offset = pos + 12
                else:
                    length = struct.unpack(end + "H", head[6:8])[0]
                    offset = pos + 8
            if length == 0xFFFFFFFF:
                length = None
    ext = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        ext = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    return PixelInfo(
        transfer_syntax=ts,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        bits_allocated=int(ds.get("BitsAllocated", 8) or 8),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        value_offset=offset,
        value_length=length,
        extended_offsets=ext,
    )


def stored_frame(path: str | Path, info: PixelInfo, index: int) -> bytes:
    """Frame ``index`` (0-based) of encapsulated pixel data, as stored."""
    if not info.encapsulated or info.value_offset is None:
        raise ValueError("pixel data is not encapsulated")
    with open(path, "rb") as fh:
        fh.seek(info.value_offset)
        return get_frame(fh, index, number_of_frames=info.frames,
                         extended_offsets=info.extended_offsets)


def native_frame(path: str | Path, info: PixelInfo, index: int) -> bytes:
    """Frame ``index`` (0-based) as uncompressed little endian bytes: read by
    offset for native data, decoded (that frame only) for compressed data.
    Compressed colour data comes back as RGB, pixel-interleaved."""
    size = info.frame_bytes
    offset = info.value_offset
    if not info.encapsulated and offset is not None and info.bits_allocated % 8 == 0:
        with open(path, "rb") as fh:
            fh.seek(offset + index * size)
            data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"frame {index + 1} is truncated in the file")
        width = info.bits_allocated // 8
        if info.transfer_syntax == ExplicitVRBigEndian and width > 1:
            data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        return data
    arr = decoded_frame(path, index)
    if info.bits_allocated == 1:
        from pydicom.pixels.utils import pack_bits
        return pack_bits(arr)
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def decoded_frame(path: str | Path, index: int) -> np.ndarray:
    """One frame as a numpy array (colour converted to RGB)."""
    from pydicom.pixels.utils import pixel_array
    return pixel_array(str(path), index=index)


def encode_frame(path: str | Path, info: PixelInfo, index: int, dst: str) -> bytes:
    """One frame encoded in the compressed syntax ``dst`` (for a frames
    request whose media type differs from how the frame is stored)."""
    arr = decoded_frame(path, index)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = info.rows, info.columns
    ds.SamplesPerPixel = info.samples_per_pixel
    ds.BitsAllocated = info.bits_allocated
    ds.BitsStored = info.bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = info.pixel_representation
    photometric = info.photometric
    if info.samples_per_pixel == 3:
        photometric = "RGB"  # decoded_frame converted it
        ds.PlanarConfiguration = 0
    elif info.encapsulated and photometric.startswith("YBR"):
        photometric = "MONOCHROME2"
    ds.PhotometricInterpretation = photometric
    ds.NumberOfFrames = 1
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if info.bits_allocated <= 8 else "OW"
    ds.SOPInstanceUID = "1.2.3"
    transcode_dataset(ds, dst)
    from pydicom.encaps import generate_frames
    return next(generate_frames(ds.PixelData, number_of_frames=1))

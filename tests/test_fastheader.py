"""parse_fast against pydicom: for every file it answers, the DICOM JSON, stop
offset and file meta that read_header + to_json_dict give; None for what it
leaves to pydicom; never an exception."""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicomfiles import make_ct, one_study_per_syntax
from pacsnode.dicom import header
from pacsnode.dicom.fastheader import BULK_URI_PREFIX, FastHeader, parse_fast
from pacsnode.dicom.header import read_header

# pydicom warns about the damaged and unusual files it is given here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
META_KEYS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


# -- raw encoding, for what pydicom will not write -----------------------------------------

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def tag_bytes(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def ex(tag: int, vr: str, value: bytes, undefined: bool = False) -> bytes:
    """An Explicit VR Little Endian element."""
    if vr in LONG_VRS:
        length = 0xFFFFFFFF if undefined else len(value)
        return tag_bytes(tag) + vr.encode() + b"\0\0" + struct.pack("<L", length) + value
    return tag_bytes(tag) + vr.encode() + struct.pack("<H", len(value)) + value


def im(tag: int, value: bytes, undefined: bool = False) -> bytes:
    """An Implicit VR Little Endian element."""
    return tag_bytes(tag) + struct.pack("<L", 0xFFFFFFFF if undefined else len(value)) + value


def item(content: bytes, undefined: bool = False) -> bytes:
    if undefined:
        return tag_bytes(0xFFFEE000) + b"\xff" * 4 + content + tag_bytes(0xFFFEE00D) + b"\0" * 4
    return tag_bytes(0xFFFEE000) + struct.pack("<L", len(content)) + content


def sequence(*items: bytes, undefined: bool = False) -> bytes:
    return b"".join(items) + (tag_bytes(0xFFFEE0DD) + b"\0" * 4 if undefined else b"")


def ex_sq(tag: int, *items: bytes, undefined: bool = False, vr: str = "SQ") -> bytes:
    return ex(tag, vr, sequence(*items, undefined=undefined), undefined)


def im_sq(tag: int, *items: bytes, undefined: bool = False) -> bytes:
    return im(tag, sequence(*items, undefined=undefined), undefined)


def uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


def part10(dataset: bytes, ts: str = EXPLICIT) -> bytes:
    elements = (ex(0x00020001, "OB", b"\0\1") + ex(0x00020002, "UI", uid(SOP_CLASS))
                + ex(0x00020003, "UI", uid("1.2.3.4.5")) + ex(0x00020010, "UI", uid(ts))
                + ex(0x00020012, "UI", uid("1.2.3.999")))
    meta = ex(0x00020000, "UL", struct.pack("<L", len(elements))) + elements
    return b"\0" * 128 + b"DICM" + meta + dataset


# -- the reference ---------------------------------------------------------------------------

def reference(source: Path | bytes) -> tuple[dict[str, Any], int, dict[str, str], str]:
    """What the ingest path gets from pydicom: body, where the file handle
    stopped, the file meta UIDs and the transfer syntax."""
    if isinstance(source, Path):
        ds = read_header(source)
        with source.open("rb") as fh:
            read_header(fh)
            stop = fh.tell()
    else:
        buf = io.BytesIO(source)
        ds = read_header(buf)
        stop = buf.tell()
    body = ds.to_json_dict(bulk_data_threshold=1024, suppress_invalid_tags=True,
                           bulk_data_element_handler=lambda e: f"bulk:{e.tag:08X}")
    meta = {k: str(ds.file_meta[k].value) for k in META_KEYS if k in ds.file_meta}
    return body, stop, meta, str(ds.file_meta.get("TransferSyntaxUID", ""))


def check(source: Path | bytes) -> FastHeader | None:
    """parse_fast's answer, asserted equal to pydicom's when there is one."""
    buf = source.read_bytes() if isinstance(source, Path) else source
    fast = parse_fast(buf, complete=True)
    if fast is not None:
        body, stop, meta, ts = reference(source)
        assert fast.body == body
        assert fast.stop == stop
        assert fast.meta == meta
        assert fast.transfer_syntax == ts
    return fast


def saved(ds: Dataset, ts: str = EXPLICIT) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.setdefault("SOPClassUID", SOP_CLASS).value
    ds.file_meta.MediaStorageSOPInstanceUID = ds.setdefault("SOPInstanceUID", generate_uid()).value
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# -- the corpus: name → (bytes of a Part 10 file, "fast" | "none") ---------------------------

def pydicom_file(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def tags_of(vr: str, count: int) -> list[int]:
    """Public tags whose dictionary VR is ``vr``, outside groups read apart."""
    found = [t for t, entry in sorted(DicomDictionary.items())
             if entry[0] == vr and t >> 16 not in (0x0000, 0x0002, 0x0004, 0x7FE0, 0xFFFE)
             and t not in (0x00080005, 0x00080016, 0x00080018)]
    return found[:count]


#: VR → (a value, several values) as pydicom takes them.
VALUES: dict[str, tuple[Any, Any]] = {
    "AE": ("STORESCU", ["A1", "B2"]), "AS": ("042Y", ["001D", "002W"]),
    "AT": (0x00100010, [0x00100010, 0x7FE00010]), "CS": ("ORIGINAL", ["ORIGINAL", "PRIMARY"]),
    "DA": ("20200102", ["20200102", "19991231"]), "DS": ("1.5", ["1.50", "-0", "1e3"]),
    "DT": ("20200102101500.123+0100", ["2020", "202001021015"]), "FD": (1.25, [1.5, -2.0]),
    "FL": (0.5, [0.25, -8.0]), "IS": ("12", ["1", "-2", "3"]), "LO": ("Long string", ["A", "B"]),
    "LT": ("Long\\text", None), "OB": (b"\1\2", None), "OD": (b"\0" * 16, None),
    "OF": (b"\0" * 8, None), "OL": (b"\1\0\0\0", None), "OV": (b"\2" * 8, None),
    "OW": (b"\3\0", None), "PN": ("Doe^John", ["Doe^John=Yamada^Tarou=Phonetic", "Roe^Jane"]),
    "SH": ("short", ["a", "b"]), "SL": (-5, [1, -2]), "SS": (-3, [4, -5]),
    "ST": ("short\\text", None),
    "SV": (-(2**40), [1, -2]), "TM": ("101500.5", ["10", "2359"]), "UC": ("unlimited", ["u", "v"]),
    "UI": ("1.2.3.4", ["1.2.3", "1.2.840.10008.1.2"]), "UL": (70000, [1, 2]),
    "UN": (b"\1\2\3\4", None),
    "UR": ("http://example.com/a b", None), "US": (7, [1, 2, 3]), "UT": ("unlimited\\text", None),
    "UV": (2**40, [1, 2]),
}


def every_vr(ts: str) -> bytes:
    """One element of each VR with a single value, several values and no value,
    on tags whose dictionary VR is that VR (so Implicit VR reads them back)."""
    ds = Dataset()
    for vr, (single, multiple) in VALUES.items():
        tags = tags_of(vr, 3) if vr != "UN" else [0x00191001, 0x00191002, 0x00191003]
        if vr == "UN":
            ds.add_new(0x00190010, "LO", "ACME UN")
        values = [single, multiple, None] if multiple is not None else [single, None, single]
        for tag, value in zip(tags, values):
            ds.add_new(tag, vr, value)
    return saved(ds, ts)


def pydicom_sequences(ts: str) -> bytes:
    """Nested sequences as pydicom writes them: defined and undefined lengths,
    empty sequences and empty items."""
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    inner.CodeMeaning = "Brain"
    outer = Dataset()
    outer.ReferencedSOPInstanceUID = "1.2.3.4"
    outer.PurposeOfReferenceCodeSequence = Sequence([inner])
    outer.PurposeOfReferenceCodeSequence.is_undefined_length = True
    ds = Dataset()
    ds.PatientName = "Seq^Uence"
    ds.ReferencedImageSequence = Sequence([outer, Dataset()])
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    ds.AnatomicRegionSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([])
    ds.OtherPatientIDsSequence = Sequence([])
    ds.OtherPatientIDsSequence.is_undefined_length = True
    return saved(ds, ts)


def encapsulated() -> bytes:
    ds = Dataset()
    ds.PatientName = "Jpeg^Baseline"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9"])
    return saved(ds, JPEGBaseline8Bit)


def charset(name: str, patient: str, encoding: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = name
    ds.PatientName = patient
    ds.StudyDescription = patient.replace("^", " ")
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = "1.2.3"
    raw = saved(ds)
    assert patient.encode(encoding) in raw
    return raw


def ct(tmp: Path, ts: str) -> bytes:
    ds = make_ct(tmp / "ct.dcm", charset="ISO_IR 100", patient_name="Müller^Jörg")
    if ts == EXPLICIT:
        return (tmp / "ct.dcm").read_bytes()
    return saved(ds, ts)


EDGE_TEXT = (
    ex(0x00080008, "CS", b"ORIGINAL\\PRIMARY\\\\ ")  # empty component kept
    + ex(0x00080020, "DA", b"20200102\x00\x00")
    + ex(0x00080050, "SH", b" A1  ")  # leading space kept
    + ex(0x00080054, "AE", b" AE1 \\ AE2")
    + ex(0x00080060, "CS", b"  ")  # only padding: no value
    + ex(0x00080070, "LO", b"Acme\\\\Corp\x00")
    + ex(0x00080090, "PN", b"Doe^John=\\=Yamada=Ph \\^ ")
    + ex(0x00081030, "LO", b"")
    + ex(0x00081040, "LO", b"\\")
    + ex(0x00100010, "PN", b"Doe^John==Phonetic")
    + ex(0x00100020, "LO", b"\xe9t\xe9")  # default repertoire decodes as ISO 8859-1
    + ex(0x00101010, "AS", b"042Y")
    + ex(0x00180050, "DS", b" 2 ")
    + ex(0x00180088, "DS", b"-0\\1.50\\ 1e-3\\.5\\+3.\\1E+10")
    + ex(0x00200011, "IS", b" 12 ")
    + ex(0x00200013, "IS", b"+5\\-7\\ 0 ")
    + ex(0x00200020, "CS", b"A\\B")
    + ex(0x00200037, "DS", b"1\\0\\0\\0\\1\\0 ")
    + ex(0x00204000, "LT", b"text\\with backslash \x00")
    + ex(0x00280030, "DS", b"   ")
    + ex(0x00400254, "LO", b"X" * 64)
    + ex(0x00402017, "LO", b"")
    + ex(0x0040A123, "PN", b"")
    + ex(0x0040A124, "UI", b"1.2.840.10008.1.2\x00")
    + ex(0x0040E010, "UR", b"http://a/b  ")
)

PRIVATE_EXPLICIT = (
    ex(0x00090010, "LO", b"GEMS_IDEN_01")
    + ex(0x00090011, "LO", b"ACME 1")
    + ex(0x00091001, "LO", b"full fidelity ")
    + ex(0x00091004, "SH", b"product")
    + ex(0x0009101A, "US", b"\x07\x00")
    + ex(0x00091101, "UN", b"\x01\x02\x03\x04")
    + ex_sq(0x00091102, item(ex(0x00100010, "PN", b"In^Private")), undefined=True)
    + ex(0x00190010, "UN", b"SIEMENS MR HEADER ")  # an explicit UN creator is LO
    + ex(0x0019100C, "UN", b"1000")  # IS in the private dictionary
    + ex(0x0019100D, "UN", b"NONE")
)

PRIVATE_IMPLICIT = (
    im(0x00090010, b"GEMS_IDEN_01")
    + im(0x00091001, b"full fidelity ")  # LO
    + im(0x0009101A, b"\x07\x00")  # US
    + im(0x00091099, b"\x01\x02")  # not in the private dictionary: UN
    + im(0x00110010, b"NOT A KNOWN CREATOR ")
    + im(0x00111001, b"\x01\x02\x03\x04")
    + im_sq(0x00111002, item(im(0x00100010, b"Private^Seq "), undefined=True),
            undefined=True)  # pydicom looks ahead, sees an item
    + im(0x00130001, b"\x05\x06")  # no creator: UN
)

SEQUENCES_EXPLICIT = (
    ex_sq(0x00081110, undefined=True)  # empty
    + ex_sq(0x00081111)  # empty
    + ex_sq(0x00081115,
            item(ex_sq(0x00081199, item(ex(0x00081150, "UI", uid("1.2")), undefined=True),
                       item(b""), undefined=True)
                 + ex(0x0020000E, "UI", uid("1.2.3"))),
            item(b"", undefined=True))
    + ex_sq(0x00081140,  # an item of an explicit sequence written in implicit VR
            item(im(0x00081150, uid("1.2.840.10008.5.1.4.1.1.2")) + im(0x00081155, uid("1.2.3"))),
            undefined=True)
    + ex_sq(0x00082112,  # an explicit UN of undefined length is a sequence
            item(im(0x00081150, uid("1.2")) + im(0x00081160, b"1 "), undefined=True),
            undefined=True, vr="UN")
    # what follows a delimiter in a sequence of defined length is ignored
    + ex(0x00082218, "SQ", sequence(item(ex(0x00080100, "SH", b"T-A0100 ")), undefined=True)
         + b"junk")
)

SEQUENCES_IMPLICIT = (
    im_sq(0x00081110, undefined=True)
    + im_sq(0x00081111)
    + im_sq(0x00081115,
            item(im_sq(0x00081199, item(im(0x00081150, uid("1.2")), undefined=True),
                       item(b""), undefined=True)
                 + im(0x0020000E, uid("1.2.3"))),
            item(b"", undefined=True))
    + im_sq(0x00081140, item(im(0x00081150, uid("1.2")) + im(0x00081160, b"1\\2 ")),
            undefined=True)
)


def implicit_ambiguous(pixel_representation: bytes | None) -> bytes:
    """'US or SS' follows Pixel Representation; overlay data is OW."""
    data = (im(0x00280010, b"\x08\x00")
            + (im(0x00280103, pixel_representation) if pixel_representation is not None else b"")
            + im(0x00280106, b"\xff\xff") + im(0x00280107, b"\x00\x80")
            + im(0x00280120, b"") + im(0x00281101, b"\x00\x01\x00\x00\x10\x00")
            + im(0x60003000, b"\x01" * 20))
    return part10(data, IMPLICIT)


CASES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "ct explicit": (lambda tmp: ct(tmp, EXPLICIT), "fast"),
    "ct implicit": (lambda tmp: ct(tmp, IMPLICIT), "fast"),
    "jpeg baseline": (lambda tmp: encapsulated(), "fast"),
    "every vr explicit": (lambda tmp: every_vr(EXPLICIT), "fast"),
    "every vr implicit": (lambda tmp: every_vr(IMPLICIT), "fast"),
    "sequences by pydicom explicit": (lambda tmp: pydicom_sequences(EXPLICIT), "fast"),
    "sequences by pydicom implicit": (lambda tmp: pydicom_sequences(IMPLICIT), "fast"),
    "sequences raw explicit": (lambda tmp: part10(SEQUENCES_EXPLICIT), "fast"),
    "sequences raw implicit": (lambda tmp: part10(SEQUENCES_IMPLICIT, IMPLICIT), "fast"),
    "edge values": (lambda tmp: part10(EDGE_TEXT), "fast"),
    "latin-1": (lambda tmp: charset("ISO_IR 100", "Müller^Jörg", "latin-1"), "fast"),
    "utf-8": (lambda tmp: charset("ISO_IR 192", "Müller^José=山田^太郎", "utf-8"), "fast"),
    "ISO_IR 6": (lambda tmp: charset("ISO_IR 6", "Doe^John", "ascii"), "fast"),
    # pydicom decodes the default repertoire as ISO 8859-1
    "ISO_IR 6, bytes over 0x7F": (lambda tmp: part10(
        ex(0x00080005, "CS", b"ISO_IR 6") + ex(0x00100010, "PN", b"\xe9t\xe9^A ")), "fast"),
    "empty Specific Character Set": (lambda tmp: part10(
        ex(0x00080005, "CS", b"") + ex(0x00100010, "PN", b"M\xfcller")), "fast"),
    "private explicit": (lambda tmp: part10(PRIVATE_EXPLICIT), "fast"),
    "private implicit": (lambda tmp: part10(PRIVATE_IMPLICIT, IMPLICIT), "fast"),
    "binary around the bulk threshold": (lambda tmp: part10(
        ex(0x00091010, "OB", b"\1" * 767) + ex(0x00091011, "OB", b"\1" * 768)
        + ex(0x00091012, "OB", b"\1" * 769) + ex(0x00091013, "OW", b"\1" * 1000)
        + ex(0x00091014, "UN", b"\1" * 2000) + ex(0x00091015, "OB", b"")), "fast"),
    "deferred values": (lambda tmp: part10(
        ex(0x00081030, "LO", b"Before") + ex(0x00091010, "OB", b"\1" * 300_000)
        + ex(0x00204000, "LT", b"short") + ex(0x0040A160, "UT", b"long text " * 30_000)), "fast"),
    "group lengths": (lambda tmp: part10(
        ex(0x00080000, "UL", b"\x10\x00\x00\x00") + ex(0x00080060, "CS", b"CT")
        + ex(0x00100000, "UL", b"\x00\x00\x00\x00")), "fast"),
    "group lengths implicit": (lambda tmp: part10(
        im(0x00080000, b"\x10\x00\x00\x00") + im(0x00080060, b"CT")
        + im(0x00090000, b"\x04\x00\x00\x00"), IMPLICIT), "fast"),
    "no pixel data": (lambda tmp: part10(ex(0x00100010, "PN", b"No^Pixels ")), "fast"),
    "pixel data": (lambda tmp: part10(ex(0x00100010, "PN", b"Pixels^")
                                     + ex(0x7FE00010, "OW", b"\0" * 64)
                                     + ex(0xFFFCFFFC, "OB", b"\0" * 4)), "fast"),
    "float pixel data": (lambda tmp: part10(ex(0x00100010, "PN", b"Float^")
                                           + ex(0x7FE00008, "OF", b"\0" * 8)), "fast"),
    "empty data set": (lambda tmp: part10(b""), "fast"),
    "explicit UN for public tags": (lambda tmp: part10(
        ex(0x00080060, "UN", b"MR") + ex(0x00180050, "UN", b"1.5 ")
        + ex(0x00280010, "UN", b"\x02\x00")
        + ex(0x00290010, "UN", b"")), "fast"),
    "LUT descriptor SS": (lambda tmp: part10(
        ex(0x00281101, "SS", b"\xff\xff\x00\x00\x10\x00")), "fast"),
    "US or SS, unsigned": (lambda tmp: implicit_ambiguous(b"\x00\x00"), "fast"),
    "US or SS, signed": (lambda tmp: implicit_ambiguous(b"\x01\x00"), "fast"),
    "US or SS, no Pixel Representation": (lambda tmp: implicit_ambiguous(None), "fast"),
    "implicit data under an explicit syntax": (lambda tmp: part10(
        im(0x00080060, b"CT") + im(0x00100010, b"Implicit^"), EXPLICIT), "fast"),
    "explicit data under the implicit syntax": (lambda tmp: part10(
        ex(0x00080060, "CS", b"CT") + ex(0x00100010, "PN", b"Explicit^"), IMPLICIT), "fast"),
    # left to pydicom
    "big endian": (lambda tmp: pydicom_file("MR_small_bigendian.dcm"), "none"),
    "deflate": (lambda tmp: pydicom_file("image_dfl.dcm"), "none"),
    "ISO 2022": (lambda tmp: part10(
        ex(0x00080005, "CS", b"\\ISO 2022 IR 87 ")
        + ex(0x00100010, "PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B")), "none"),
    "ISO 8859-2": (lambda tmp: part10(ex(0x00080005, "CS", b"ISO_IR 101")), "none"),
    # pydicom decodes a sequence read before Specific Character Set with the default
    "charset after a sequence": (lambda tmp: part10(
        ex_sq(0x00041220, item(ex(0x00100010, "PN", b"M\xc3\xbcller")), undefined=True)
        + ex(0x00080005, "CS", b"ISO_IR 192")), "none"),
    "charset in an item": (lambda tmp: part10(ex_sq(0x00081115, item(
        ex(0x00080005, "CS", b"ISO_IR 100")))), "none"),
    "no preamble": (lambda tmp: part10(b"")[132:], "none"),
    "no transfer syntax": (lambda tmp: part10(b"")[:132] + ex(0x00020001, "OB", b"\0\1"),
                           "none"),
    "command group": (lambda tmp: part10(im(0x00000100, b"\x01\x00") + im(0x00080060, b"CT"),
                                         IMPLICIT), "none"),
    "undefined length OB": (lambda tmp: part10(ex_sq(0x00091010, item(b"\0" * 4),
                                                     undefined=True, vr="OB")), "none"),
    "unknown VR": (lambda tmp: part10(ex(0x00080060, "XX", b"CT")), "none"),
    "unknown public tag in implicit": (lambda tmp: part10(im(0x00100011, b"CT"), IMPLICIT),
                                       "none"),
    "US or SS in an item": (lambda tmp: part10(im_sq(0x00283010, item(
        im(0x00283002, b"\x00\x01\x00\x00\x10\x00"))), IMPLICIT), "none"),
    "invalid DS": (lambda tmp: part10(ex(0x00180050, "DS", b"1,5 ")), "none"),
    "DS over 16 characters": (lambda tmp: part10(ex(0x00180050, "DS", b"0.12345678901234567 ")),
                              "none"),
    "invalid IS": (lambda tmp: part10(ex(0x00200013, "IS", b"1.0 ")), "none"),
    "UID with a leading zero": (lambda tmp: part10(ex(0x0020000D, "UI", uid("1.02.3"))), "none"),
    "LO over 64 characters": (lambda tmp: part10(ex(0x00081030, "LO", b"X" * 66)), "none"),
    "invalid UTF-8": (lambda tmp: part10(ex(0x00080005, "CS", b"ISO_IR 192")
                                        + ex(0x00100010, "PN", b"\xff\xfe")), "none"),
    "tags out of order": (lambda tmp: part10(
        ex(0x00100010, "PN", b"B^") + ex(0x00080060, "CS", b"CT")), "none"),
    "PN with an empty name among several": (lambda tmp: part10(ex(0x00100010, "PN", b"A^B\\ ")),
                                            "none"),
}


@pytest.mark.parametrize("name", CASES)
def test_corpus(tmp_path: Path, name: str) -> None:
    build, expected = CASES[name]
    path = tmp_path / "case.dcm"
    path.write_bytes(build(tmp_path))
    fast = check(path)
    if expected == "fast":
        assert fast is not None, f"{name}: the fast path must be taken"
    else:
        assert fast is None, f"{name}: must be left to pydicom"


def test_what_the_corpus_shows(tmp_path: Path) -> None:
    """A few answers spelled out, beyond equality with pydicom."""
    fast = parse_fast(part10(EDGE_TEXT), True)
    assert fast is not None
    body = fast.body
    assert body["00180088"]["Value"] == [-0.0, 1.5, 0.001, 0.5, 3.0, 1e10]
    assert body["00200013"]["Value"] == [5, -7, 0] and all(
        type(v) is int for v in body["00200013"]["Value"])
    assert body["00080090"]["Value"] == [{"Alphabetic": "Doe^John"},
                                         {"Alphabetic": "", "Ideographic": "Yamada",
                                          "Phonetic": "Ph "},
                                         {"Alphabetic": "^"}]
    assert body["00080060"] == {"vr": "CS"} and body["00280030"] == {"vr": "DS"}
    assert body["00100020"]["Value"] == ["été"]

    fast = parse_fast(CASES["binary around the bulk threshold"][0](tmp_path), True)
    assert fast is not None
    assert "InlineBinary" in fast.body["00091011"]
    assert fast.body["00091012"] == {"vr": "OB", "BulkDataURI": f"{BULK_URI_PREFIX}00091012"}
    assert fast.body["00091015"] == {"vr": "OB"}

    pixels = part10(ex(0x00100010, "PN", b"P^") + ex(0x7FE00010, "OW", b"\0" * 64))
    fast = parse_fast(pixels, True)
    assert fast is not None and pixels[fast.stop:fast.stop + 4] == tag_bytes(0x7FE00010)
    assert fast.meta["TransferSyntaxUID"] == EXPLICIT == fast.transfer_syntax


def test_bulk_marker_matches_the_header_module() -> None:
    assert BULK_URI_PREFIX == header.BULK_URI_PREFIX


def test_one_study_per_syntax(tmp_path: Path) -> None:
    """pydicom's files, one per transfer syntax: all but Big Endian and
    Deflated take the fast path."""
    _study, files = one_study_per_syntax(tmp_path)
    for ts, path in files.items():
        fast = check(path)
        if ts in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
            assert fast is None, ts
        else:
            assert fast is not None, ts


def test_pydicom_test_files() -> None:
    """Every file shipped with pydicom: the same answer, or None."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    answered = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and check(path) is not None:
            answered += 1
    assert answered >= 100


@pytest.mark.parametrize("name", ["ct explicit", "utf-8", "private implicit",
                                  "sequences raw explicit", "binary around the bulk threshold",
                                  "US or SS, signed"])
def test_buffer_types(tmp_path: Path, name: str) -> None:
    raw = CASES[name][0](tmp_path)
    fast = parse_fast(raw, True)
    assert fast is not None
    assert parse_fast(bytearray(raw), True) == fast
    assert parse_fast(memoryview(raw), True) == fast
    assert parse_fast(memoryview(bytearray(raw + b"\0"))[:len(raw)], True) == fast


@pytest.mark.parametrize(("name", "pixel_data"), [
    ("ct implicit", b""), ("jpeg baseline", b""),
    ("sequences raw explicit", ex(0x7FE00010, "OB", b"\0" * 16)),
    ("private implicit", im(0x7FE00010, b"\0" * 16))],
    ids=lambda v: v if isinstance(v, str) else "")
def test_truncated(tmp_path: Path, name: str, pixel_data: bytes) -> None:
    """Cut anywhere: with complete=False, None until the Pixel Data header is
    in, then the whole answer; with complete=True (the file is the cut), None
    or pydicom's answer for the cut file."""
    raw = CASES[name][0](tmp_path) + pixel_data
    full = parse_fast(raw, True)
    assert full is not None and raw[full.stop:full.stop + 4] == tag_bytes(0x7FE00010)
    header_length = 8 if "implicit" in name else 12
    for cut in range(len(raw) + 1):
        part = parse_fast(raw[:cut], False)
        if cut >= full.stop + header_length:
            assert part == full, cut
        else:
            assert part is None, cut
        whole = parse_fast(raw[:cut], True)
        if whole is not None:
            assert (whole.body, whole.stop, whole.meta) == reference(raw[:cut])[:3], cut


def mutations(rng: random.Random, seeds: list[bytes], count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.choice((1, 1, 2, 5))):
            at = rng.randrange(132, len(buf))
            roll = rng.random()
            if roll < 0.5:
                buf[at] = rng.randrange(256)
            elif roll < 0.7:
                del buf[at:at + rng.randrange(1, 10)]
            elif roll < 0.85:
                buf[at:at] = rng.randbytes(rng.randrange(1, 10))
            else:
                buf[at] = rng.choice((0x00, 0xFF, 0xFE, 0x5C, 0x20))
        out.append(bytes(buf))
    return out


def test_garbage(tmp_path: Path) -> None:
    """Random bytes and damaged files never raise; whatever is answered is
    pydicom's answer."""
    rng = random.Random(7)
    for _ in range(300):
        noise = rng.randbytes(rng.randrange(0, 600))
        assert parse_fast(noise, True) is None
        assert parse_fast(b"\0" * 128 + b"DICM" + noise, rng.random() < 0.5) is None
        fast = parse_fast(part10(noise, rng.choice((EXPLICIT, IMPLICIT))), True)
        if fast is not None:
            assert (fast.body, fast.stop, fast.meta) == reference(part10(noise))[:3]
    seeds = [CASES[name][0](tmp_path) for name in (
        "ct implicit", "sequences raw explicit", "sequences raw implicit", "private explicit",
        "edge values", "every vr explicit", "US or SS, signed")]
    for buf in mutations(rng, seeds, 600):
        fast = parse_fast(buf, True)
        if fast is not None:
            assert (fast.body, fast.stop, fast.meta) == reference(buf)[:3]


# -- random data sets ---------------------------------------------------------------------------

RANDOM_VALUES: dict[str, list[bytes]] = {
    "text": [b"", b"ABC", b"ABC ", b" ABC", b"A\\B", b"A\\\\B", b"\\", b" ", b"\x00", b"A\x00\\B",
             b"\xe9t\xe9", b"a\tb", b"X" * 17, b"Y" * 65],
    "PN": [b"Doe^John", b"Doe^John=Y^Z=P^Q", b"==", b"A==", b"=B", b"A\\", b"^", b"A=B=C=D",
           b" Doe"],
    "DS": [b"1.50", b"-0", b" 2 ", b"1e5", b"1.", b".5", b"1\\2.5\\-3", b"1\\\\2", b"abc", b"nan",
           b"12345678901234567", b" ", b"", b"1 \\ 2"],
    "IS": [b"1", b" 12 ", b"+5", b"-7", b"1.0", b"1\\2", b"2147483648", b" ", b"", b"00012"],
    "UI": [b"1.2.3\x00", b"1.02.3", b"1.2.3\\4.5", b"", b"1." + b"2" * 63, b"0.1"],
    "AE": [b" AE1 ", b"A\\ B ", b"", b"  "],
    "UR": [b"http://x ", b"", b"a b"],
}
RANDOM_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "UV": 8, "SV": 8, "FL": 4, "FD": 8, "AT": 4}
RANDOM_FLOATS = {"FL": [0.0, -1.5, 3.25e10], "FD": [0.0, -1.5, 1e300]}
RANDOM_POOL: dict[str, list[int]] = {}
for _tag, _entry in DicomDictionary.items():
    if _tag >> 16 not in (0x0000, 0x0002, 0x0004, 0x7FE0, 0xFFFE) and _tag & 0xFFFF \
            and _tag != 0x00080005 and " or " not in _entry[0] and _entry[0] != "NONE":
        RANDOM_POOL.setdefault(_entry[0], []).append(_tag)


TEXT_VRS = {"AS", "CS", "DA", "DT", "TM", "SH", "LO", "UC", "ST", "LT", "UT"}


def random_value(rng: random.Random, vr: str) -> bytes:
    if vr in RANDOM_FLOATS:
        code = "<f" if vr == "FL" else "<d"
        return b"".join(struct.pack(code, rng.choice(RANDOM_FLOATS[vr]))
                        for _ in range(rng.choice((0, 1, 1, 2))))
    if vr in RANDOM_SIZES:
        return rng.randbytes(rng.choice((0, 1, 1, 2)) * RANDOM_SIZES[vr] + (rng.random() < 0.05))
    if vr in RANDOM_VALUES:
        return rng.choice(RANDOM_VALUES[vr])
    if vr in TEXT_VRS:
        return rng.choice(RANDOM_VALUES["text"])
    return rng.randbytes(rng.choice((0, 2, 16, 768, 770)))


def random_dataset(rng: random.Random, implicit: bool, depth: int = 0) -> bytes:
    elements: dict[int, bytes] = {}
    for _ in range(rng.randrange(1, 5 if depth else 9)):
        roll = rng.random()
        if roll < 0.7:
            vr = rng.choice(sorted(RANDOM_POOL))
            tag = rng.choice(RANDOM_POOL[vr])
            undefined = rng.random() < 0.5
            if vr == "SQ":
                if depth >= 3:
                    continue
                items = [item(random_dataset(rng, implicit or rng.random() < 0.2, depth + 1),
                              rng.random() < 0.5) for _ in range(rng.choice((0, 1, 2)))]
                value = sequence(*items, undefined=undefined)
            else:
                value, undefined = random_value(rng, vr), False
            if not implicit and vr != "SQ" and rng.random() < 0.1:
                vr = "UN"
            elements[tag] = (im(tag, value, undefined) if implicit
                             else ex(tag, vr, value, undefined))
        elif roll < 0.85:
            group = rng.choice((0x0009, 0x0029, 0x0011))
            creator = {0x0009: b"GEMS_IDEN_01", 0x0029: b"SIEMENS CSA HEADER", 0x0011: b"ACME 1"}
            elements[group << 16 | 0x10] = (im(group << 16 | 0x10, creator[group]) if implicit
                                            else ex(group << 16 | 0x10, "LO", creator[group]))
            tag = group << 16 | 0x1000 | rng.choice((0x01, 0x02, 0x08, 0x10, 0x1A))
            vr = rng.choice(("LO", "US", "OB", "UN", "DS"))
            value = random_value(rng, vr)
            elements[tag] = im(tag, value) if implicit else ex(tag, vr, value)
        elif depth == 0:
            value = rng.choice((b"ISO_IR 100", b"ISO_IR 192", b"", b"ISO_IR 6", b"ISO 2022 IR 6"))
            value += b" " * (len(value) % 2)
            elements[0x00080005] = (im(0x00080005, value) if implicit
                                    else ex(0x00080005, "CS", value))
    return b"".join(elements[tag] for tag in sorted(elements))


def test_random_data_sets() -> None:
    rng = random.Random(20240611)
    answered = 0
    for _ in range(250):
        implicit = rng.random() < 0.5
        ts = IMPLICIT if implicit else rng.choice((EXPLICIT, JPEGBaseline8Bit))
        pixel_data = im(0x7FE00010, b"\0" * 4) if implicit else ex(0x7FE00010, "OB", b"\0" * 4)
        tail = rng.choice((b"", pixel_data))
        if check(part10(random_dataset(rng, implicit) + tail, ts)) is not None:
            answered += 1
    assert answered >= 150


if __name__ == "__main__":
    import tempfile
    import timeit

    from pacsnode.dicom.header import header_json_dict

    root = Path(__file__).resolve().parent.parent
    bench = root / "bench/.cache/small-2000-v1/s0000/se0/i000.dcm"
    if not bench.exists():
        bench = Path(tempfile.mkdtemp()) / "ct.dcm"
        make_ct(bench, size=64)
    data = bench.read_bytes()

    def slow() -> dict[str, Any]:
        return header_json_dict(read_header(io.BytesIO(data)), False)

    for label, call in (("parse_fast", lambda: parse_fast(data, True)), ("pydicom", slow)):
        runs = 2000 if label == "parse_fast" else 200
        best = min(timeit.repeat(call, number=runs, repeat=5)) / runs
        print(f"{label:10s} {best * 1e6:8.1f} µs per call  ({bench})")


def test_header_json_text_is_what_json_reads_back() -> None:
    """The stored header text (orjson) reads back as the model it was made
    from, with pydicom's number types as plain numbers, and an integer
    orjson cannot write (beyond 64 bits) goes through json instead."""
    import json

    from pydicom.valuerep import DSfloat, IS
    for path in TS_FILES_FOR_JSON:
        ds = read_header(get_testdata_file(path))
        body = header.header_json_dict(ds, "PixelData" in ds)
        text = header._dumps(body)
        assert json.loads(text) == body  # (1e-6 where json.dumps wrote 1e-06)
    body = {"00280030": {"vr": "DS", "Value": [DSfloat("0.5"), DSfloat("0.25")]},
            "00200013": {"vr": "IS", "Value": [IS("7")]},
            "00189219": {"vr": "SV", "Value": [2 ** 70]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë"}]}}
    assert "Müller^Zoë" in header._dumps(body)  # UTF-8, not \u escapes
    assert json.loads(header._dumps(body)) == {
        "00280030": {"vr": "DS", "Value": [0.5, 0.25]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00189219": {"vr": "SV", "Value": [2 ** 70]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë"}]}}


TS_FILES_FOR_JSON = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm")

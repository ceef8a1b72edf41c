"""The transfer syntax matrix of the one reader (DESIGN.md §7, issue 21).

Every stored syntax in {implicit LE, explicit LE, explicit BE, deflate, RLE,
JPEG lossless SV1, JPEG-LS lossless, JPEG 2000 lossless, JPEG baseline,
JPEG 2000 lossy} × every syntax a peer may accept in its place, over

* C-GET from DCMTK ``getscu`` with each of its preferred-syntax options,
* C-GET from a pynetdicom SCU accepting one syntax (and one accepting all),
* C-MOVE to DCMTK ``storescp`` with each of its preferred-syntax options,
* WADO-RS with ``transfer-syntax=`` in the Accept header.

The oracle is pydicom (+ pylibjpeg, pyjpegls): a lossless pair gives the
original's pixel array; lossy content keeps Lossy Image Compression 01;
lossless content becomes lossy only when the peer accepted nothing else;
an instance the peer accepted in its stored syntax arrives byte for byte.
One server (SQLite) per module; each test is one association or one
peer, and its failures name the (source, stored → sent) pairs.
"""

from __future__ import annotations

import subprocess
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless, generate_uid)

from conftest import dcmtk, free_port, stop_process, wait_port
from web_server import multipart_body, parse_multipart, STOW_TYPE

ILE, ELE, BE, DEFL = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                      DeflatedExplicitVRLittleEndian)
RLE, SV1, JLS, J2KL, JPEG, J2K = (RLELossless, JPEGLosslessSV1, JPEGLSLossless,
                                  JPEG2000Lossless, JPEGBaseline8Bit, JPEG2000)

#: Every syntax a peer may accept in place of the stored one.
TARGETS = [ILE, ELE, BE, DEFL, RLE, SV1, JLS, J2KL, JPEG, J2K]
#: What the archive can write (docs/CONFORMANCE.md): not Big Endian, not SV1.
PRODUCED = {ILE, ELE, DEFL, RLE, JLS, J2KL, J2K, JPEG}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STUDY = generate_uid()
RAW = "1.2.840.10008.1.2.1"


@dataclass
class Source:
    """One stored instance of the matrix."""

    name: str
    path: Path
    ts: str
    sop_uid: str
    series_uid: str
    lossy: bool
    bits: int
    signed: bool
    pixels: np.ndarray
    dataset: bytes  # the data set bytes as stored (after the file meta)

    def producible(self, target: str) -> bool:
        """Whether the archive can send this instance in ``target``."""
        if target == self.ts:
            return True
        if target not in PRODUCED:
            return False
        if target in (ILE, ELE, DEFL):
            return True
        if self.bits not in (8, 16):
            return False
        if target == JPEG:
            return self.bits == 8 and not self.signed
        return True


def _dataset_bytes(raw: bytes) -> bytes:
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length:]


# -- the sources ------------------------------------------------------------------

def _synthetic(name: str, *, bits: int, stored: int, signed: bool, frames: int,
               photometric: str = "MONOCHROME2", rows: int = 64, cols: int = 48) -> Dataset:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    spp = 1 if photometric.startswith("MONO") else 3
    shape = (frames, rows, cols) + ((3,) if spp == 3 else ())
    lo, hi = (-(1 << (stored - 1)), 1 << (stored - 1)) if signed else (0, 1 << stored)
    kind = f"{'i' if signed else 'u'}{bits // 8}"
    arr = rng.integers(lo, hi, size=shape).astype(f"<{kind}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (arr if frames > 1 else arr[0]).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def _bundled(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path, f"pydicom test file {name} is not bundled"
    return dcmread(path)


def _dcmtk_encoded(ds: Dataset, folder: Path, tool: str, *options: str) -> Dataset:
    """``ds`` compressed by a DCMTK tool (dcmcjpeg, dcmcjpls)."""
    src, dst = folder / f"{tool}-in.dcm", folder / f"{tool}-out.dcm"
    ds.save_as(src, enforce_file_format=True)
    subprocess.run([dcmtk(tool), *options, str(src), str(dst)], check=True,
                   capture_output=True, timeout=60)
    return dcmread(dst)


def _sources(folder: Path) -> list[tuple[str, Dataset, bool]]:
    """(name, data set, lossy) of every stored instance of the matrix."""
    mono8 = _synthetic("mono8", bits=8, stored=8, signed=False, frames=3)
    mono12 = _synthetic("mono12", bits=16, stored=12, signed=False, frames=1)
    mono16s = _synthetic("mono16s", bits=16, stored=16, signed=True, frames=2)
    rgb = _synthetic("rgb", bits=8, stored=8, signed=False, frames=1, photometric="RGB")
    ybr = _synthetic("ybr", bits=8, stored=8, signed=False, frames=2,
                     photometric="YBR_FULL")
    out: list[tuple[str, Dataset, bool]] = [
        ("explicit mono8 3 frames", mono8, False),
        ("explicit mono12 unsigned", mono12, False),
        ("explicit mono16 signed 2 frames", mono16s, False),
        ("explicit rgb", rgb, False),
        ("explicit ybr_full 2 frames", ybr, False),
        ("explicit CT_small", _bundled("CT_small.dcm"), False),
        ("implicit MR_small", _bundled("MR_small_implicit.dcm"), False),
        ("big endian MR_small", _bundled("MR_small_bigendian.dcm"), False),
        ("big endian rgb US", _bundled("ExplVR_BigEnd.dcm"), False),
        ("big endian rtdose 32-bit", _bundled("rtdose_expb.dcm"), False),
        ("deflate image_dfl", _bundled("image_dfl.dcm"), False),
        ("rle MR_small", _bundled("MR_small_RLE.dcm"), False),
        ("rle rgb 2 frames", _bundled("SC_rgb_rle_2frame.dcm"), False),
        ("sv1 rgb gdcm", _bundled("SC_rgb_jpeg_gdcm.dcm"), False),
        ("jpeg-ls MR_small", _bundled("MR_small_jpeg_ls_lossless.dcm"), False),
        ("j2k lossless MR_small", _bundled("MR_small_jp2klossless.dcm"), False),
        ("jpeg baseline ybr dcmtk", _bundled("SC_rgb_jpeg_dcmtk.dcm"), True),
        ("j2k lossy rgb gdcm", _bundled("SC_rgb_gdcm_KY.dcm"), True),
    ]
    # Made here from the synthetic ones: more shapes per compressed syntax.
    implicit = deepcopy(mono12)
    implicit.file_meta.TransferSyntaxUID = ILE
    out.append(("implicit mono12", implicit, False))
    deflated = deepcopy(mono16s)
    deflated.file_meta.TransferSyntaxUID = DEFL
    out.append(("deflate mono16 signed", deflated, False))
    for name, base, ts in [("rle mono12", mono12, RLE), ("j2k lossless rgb", rgb, J2KL),
                           ("j2k lossless mono16 signed", mono16s, J2KL),
                           ("jpeg-ls mono8 3 frames", mono8, JLS)]:
        ds = deepcopy(base)
        ds.compress(ts, generate_instance_uid=False)
        out.append((name, ds, False))
    out.append(("sv1 CT_small dcmcjpeg", _dcmtk_encoded(_bundled("CT_small.dcm"), folder,
                                                        "dcmcjpeg", "+e1"), False))
    out.append(("jpeg-ls CT_small dcmcjpls", _dcmtk_encoded(_bundled("CT_small.dcm"), folder,
                                                            "dcmcjpls", "+el"), False))
    baseline = _dcmtk_encoded(mono8, folder, "dcmcjpeg", "+eb")
    out.append(("jpeg baseline mono8 dcmcjpeg", baseline, True))
    lossy = deepcopy(mono16s)
    lossy.compress(J2K, j2k_cr=[15], generate_instance_uid=False)
    lossy.LossyImageCompression = "01"
    out.append(("j2k lossy mono16 signed", lossy, True))
    return out


def _write_sources(folder: Path) -> list[Source]:
    sources = []
    for name, ds, lossy in _sources(folder):
        ts = str(ds.file_meta.TransferSyntaxUID)
        ds.StudyInstanceUID = STUDY
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.PatientID = "MATRIX"
        ds.PatientName = "Matrix^Transcode"
        path = folder / (name.replace(" ", "_") + ".dcm")
        ds.save_as(path, enforce_file_format=True)
        back = dcmread(path)
        assert str(back.file_meta.TransferSyntaxUID) == ts, name
        sources.append(Source(name, path, ts, back.SOPInstanceUID, back.SeriesInstanceUID,
                              lossy, int(back.BitsAllocated), bool(back.PixelRepresentation),
                              back.pixel_array, _dataset_bytes(path.read_bytes())))
    stored = {s.ts for s in sources}
    assert stored == {ILE, ELE, BE, DEFL, RLE, SV1, JLS, J2KL, JPEG, J2K}, stored
    return sources


# -- the peers and the server -------------------------------------------------------

#: DCMTK's preferred-syntax options (getscu and storescp alike) and the
#: syntaxes each makes the tool take, in its order of preference.
DCMTK_PREFER = {
    "+x=": [ELE, BE, ILE], "+xe": [ELE, BE, ILE], "+xb": [BE, ELE, ILE],
    "+xs": [SV1, ELE, BE, ILE], "+xy": [JPEG, ELE, BE, ILE], "+xv": [J2KL, ELE, BE, ILE],
    "+xw": [J2K, ELE, BE, ILE], "+xt": [JLS, ELE, BE, ILE], "+xr": [RLE, ELE, BE, ILE],
    "+xd": [DEFL, ELE, BE, ILE], "+xi": [ILE],
}


@dataclass
class Matrix:
    server: object
    sources: list[Source]
    storescp: dict[str, tuple[str, Path]]  # option → (AE title, output folder)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    from conftest import PacsnodeServer
    base = tmp_path_factory.mktemp("matrix")
    sources = _write_sources(base)
    procs: list[subprocess.Popen] = []
    storescp: dict[str, tuple[str, Path]] = {}
    config = []
    for n, option in enumerate([*DCMTK_PREFER, "+xa"]):
        aet, out, port = f"SCP{n}", base / f"storescp{n}", free_port()
        out.mkdir()
        procs.append(subprocess.Popen(
            [dcmtk("storescp"), "--aetitle", aet, "--output-directory", str(out), "+B",
             option, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, proc=procs[-1])
        storescp[option] = (aet, out)
        config.append(f'[nodes.{aet}]\naet = "{aet}"\nhost = "127.0.0.1"\nport = {port}\n')
    (base / "pacsnode.toml").write_text("\n".join(config))
    data = base / "data"
    data.mkdir()
    server = PacsnodeServer(data, config=str(base / "pacsnode.toml")).start()
    try:
        r = httpx.post(server.base_url + "/dicomweb/studies",
                       content=multipart_body([s.path.read_bytes() for s in sources]),
                       headers={"Content-Type": STOW_TYPE}, timeout=120)
        assert r.status_code == 200, r.text
        yield Matrix(server, sources, storescp)
    finally:
        server.stop()
        for proc in procs:
            stop_process(proc)


# -- checking what arrived ---------------------------------------------------------------

def _check(source: Source, expected: str | None, got: bytes | None) -> list[str]:
    """What is wrong with ``got`` (a Part 10 file, None: nothing arrived)
    for ``source`` sent to a peer where it should arrive in ``expected``
    (None: it cannot be given to that peer)."""
    pair = f"{source.name}: {UID(source.ts).name} → {UID(expected).name if expected else '-'}"
    if expected is None:
        return [] if got is None else [f"{pair}: arrived, but should have been refused"]
    if got is None:
        return [f"{pair}: did not arrive"]
    ds = dcmread(__import__("io").BytesIO(got))
    sent = str(ds.file_meta.TransferSyntaxUID)
    if sent != expected:
        return [f"{pair}: arrived as {UID(sent).name}"]
    if sent == source.ts:
        if _dataset_bytes(got) != source.dataset:
            return [f"{pair}: not byte for byte as stored"]
        return []
    problems = []
    lossy_now = source.lossy or sent == JPEG
    if lossy_now and ds.get("LossyImageCompression") != "01":
        problems.append(f"{pair}: LossyImageCompression is "
                        f"{ds.get('LossyImageCompression')!r}, not '01'")
    arr = ds.pixel_array
    if sent == JPEG:  # made lossy (again): close, not equal
        close = arr.shape == source.pixels.shape and np.abs(
            arr.astype(float) - source.pixels.astype(float)).mean() < 8
        if not close:
            problems.append(f"{pair}: JPEG Baseline pixels are not close to the original")
    elif not np.array_equal(arr, source.pixels):
        problems.append(f"{pair}: pixel values differ from the original "
                        f"(first {source.pixels.ravel()[:3]} → {arr.ravel()[:3]})")
    return problems


def _report(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def _by_sop(files: list[bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for raw in files:
        sop = str(dcmread(__import__("io").BytesIO(raw), stop_before_pixels=True)
                  .SOPInstanceUID)
        assert sop not in out, f"{sop} arrived twice"
        out[sop] = raw
    return out


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, encoding="latin-1", timeout=180)


# -- WADO-RS ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS, ids=lambda ts: UID(ts).name)
def test_wado_rs_transfer_syntax(matrix: Matrix, target: str) -> None:
    """Accept: multipart/related; type="application/dicom"; transfer-syntax=<target>,
    instance by instance: the stored bytes when stored so, else transcoded,
    else 406."""
    problems = []
    with httpx.Client(base_url=matrix.server.base_url + "/dicomweb", timeout=60) as client:
        for s in matrix.sources:
            r = client.get(f"/studies/{STUDY}/series/{s.series_uid}/instances/{s.sop_uid}",
                           headers={"Accept": 'multipart/related; type="application/dicom"; '
                                              f"transfer-syntax={target}"})
            expected = target if s.producible(target) else None
            if r.status_code == 406:
                got = None
            else:
                assert r.status_code == 200, f"{s.name} → {target}: {r.status_code} {r.text}"
                (headers, got), = parse_multipart(r)
                assert f"transfer-syntax={target}" in headers["content-type"]
            problems += _check(s, expected, got)
    _report(problems)


def test_wado_rs_as_stored_and_default(matrix: Matrix) -> None:
    """transfer-syntax=* gives every instance as stored; no parameter gives
    Explicit VR Little Endian (PS3.18 default), lossy content marked 01."""
    problems = []
    with httpx.Client(base_url=matrix.server.base_url + "/dicomweb", timeout=60) as client:
        for accept, expect in [('multipart/related; type="application/dicom"; '
                                "transfer-syntax=*", None),
                               ('multipart/related; type="application/dicom"', ELE)]:
            r = client.get(f"/studies/{STUDY}", headers={"Accept": accept})
            assert r.status_code == 200, r.text
            got = _by_sop([body for _, body in parse_multipart(r)])
            for s in matrix.sources:
                problems += _check(s, expect or s.ts, got.get(s.sop_uid))
    _report(problems)


# -- C-GET from a pynetdicom SCU ------------------------------------------------------------

def _pynetdicom_get(matrix: Matrix, syntaxes: list[list[str]]) -> dict[str, bytes]:
    """C-GET of the study by a pynetdicom SCU proposing, for each SOP class,
    one storage context per list of ``syntaxes`` (SCP role)."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.encoded_dataset(include_meta=True))
        return 0x0000

    classes = sorted({str(dcmread(s.path, stop_before_pixels=True).SOPClassUID)
                      for s in matrix.sources})
    ae = AE(ae_title="MATRIXGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in classes:
        for group in syntaxes:
            ae.add_requested_context(sop_class, group)
    roles = [build_role(c, scp_role=True) for c in classes]
    assoc = ae.associate("127.0.0.1", matrix.server.dicom_port,
                         ae_title=matrix.server.aet, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDY
    statuses = [status.Status for status, _ in
                assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                if status]
    assoc.release()
    assert statuses and statuses[-1] in (0x0000, 0xB000, 0xA702), statuses
    return _by_sop(received)


@pytest.mark.parametrize("target", TARGETS, ids=lambda ts: UID(ts).name)
def test_c_get_pynetdicom_one_syntax(matrix: Matrix, target: str) -> None:
    """A C-GET SCU that accepts only ``target``: each instance arrives in it
    (as stored when stored so), or is a failed sub-operation when we cannot
    produce it (Big Endian, SV1, lossy from more than 8 bits)."""
    got = _pynetdicom_get(matrix, [[target]])
    problems = []
    for s in matrix.sources:
        problems += _check(s, target if s.producible(target) else None, got.get(s.sop_uid))
    _report(problems)


def test_c_get_pynetdicom_every_syntax_goes_as_stored(matrix: Matrix) -> None:
    """A C-GET SCU proposing every syntax, each in its own context: every
    instance goes as stored, byte for byte."""
    got = _pynetdicom_get(matrix, [[ts] for ts in TARGETS])
    _report([p for s in matrix.sources for p in _check(s, s.ts, got.get(s.sop_uid))])


def test_c_get_pynetdicom_lossless_first(matrix: Matrix) -> None:
    """A C-GET SCU accepting JPEG Baseline and Explicit VR Little Endian in
    separate contexts: lossless content is never made lossy (it goes as
    stored or uncompressed); JPEG Baseline goes as stored."""
    got = _pynetdicom_get(matrix, [[JPEG], [ELE]])
    problems = []
    for s in matrix.sources:
        problems += _check(s, s.ts if s.ts in (JPEG, ELE) else ELE, got.get(s.sop_uid))
    _report(problems)


# -- C-GET from DCMTK getscu ---------------------------------------------------------------

#: What getscu proposes for each storage SOP class (one context), per
#: option, as ``getscu -d`` shows it (DCMTK 3.6.7: +xi proposes Explicit VR
#: Little Endian, not Implicit).
GETSCU_PROPOSES = {**DCMTK_PREFER, "+xi": [ELE]}
#: The syntax we accept for getscu's storage contexts, per its option: the
#: first it prefers that we can produce (Explicit VR LE for Big Endian and
#: SV1, which we cannot).
GETSCU_CHOICE = {option: next(ts for ts in prefer if ts in PRODUCED)
                 for option, prefer in GETSCU_PROPOSES.items()}


def _getscu(matrix: Matrix, option: str, out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    proc = _run(dcmtk("getscu"), "-S", option, "+B", "-aec", matrix.server.aet,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                "-od", str(out), "127.0.0.1", str(matrix.server.dicom_port))
    assert proc.returncode == 0 or "Failed" in proc.stderr + proc.stdout, proc.stderr
    return _by_sop([p.read_bytes() for p in out.iterdir() if p.is_file()])


@pytest.mark.parametrize("option", list(DCMTK_PREFER))
def test_c_get_getscu(matrix: Matrix, option: str, tmp_path: Path) -> None:
    """getscu with each preferred-syntax option: one context per SOP class,
    so one syntax for all; instances stored in it go byte for byte, the
    others are transcoded into it or fail when it cannot be produced."""
    chosen = GETSCU_CHOICE[option]
    got = _getscu(matrix, option, tmp_path / "get")
    problems = []
    for s in matrix.sources:
        problems += _check(s, chosen if s.producible(chosen) else None, got.get(s.sop_uid))
    _report(problems)


def test_big_endian_to_getscu_offering_big_then_little(matrix: Matrix,
                                                       tmp_path: Path) -> None:
    """Issue 21: a Big Endian instance fetched by getscu +xb (Big Endian
    first, then Little Endian) arrives with the stored pixel values (905
    stayed 905, not -30461)."""
    source = next(s for s in matrix.sources if s.name == "big endian MR_small")
    got = _getscu(matrix, "+xb", tmp_path / "get")[source.sop_uid]
    ds = dcmread(__import__("io").BytesIO(got))
    assert np.array_equal(ds.pixel_array, source.pixels)
    assert 905 in source.pixels and 905 in ds.pixel_array


def test_jpeg_baseline_to_getscu_offering_jpeg_first(matrix: Matrix, tmp_path: Path) -> None:
    """Issue 21: a JPEG Baseline instance fetched by getscu +xy (JPEG
    Baseline first) arrives as stored: the same data set bytes, not
    decompressed."""
    got = _getscu(matrix, "+xy", tmp_path / "get")
    for source in (s for s in matrix.sources if s.ts == JPEG):
        raw = got[source.sop_uid]
        assert dcmread(__import__("io").BytesIO(raw)).file_meta.TransferSyntaxUID == JPEG
        assert _dataset_bytes(raw) == source.dataset, source.name


# -- C-MOVE to DCMTK storescp -----------------------------------------------------------------

@pytest.mark.parametrize("option", [*DCMTK_PREFER, "+xa"])
def test_c_move_to_storescp(matrix: Matrix, option: str) -> None:
    """C-MOVE to storescp with each accepted-syntax option: we propose each
    stored syntax in a context of its own, so an instance goes as stored
    wherever storescp takes that syntax, and otherwise in the uncompressed
    syntax it accepted (Implicit VR LE for +xi) — never lossy."""
    aet, out = matrix.storescp[option]
    for old in out.iterdir():
        old.unlink()
    proc = _run(dcmtk("movescu"), "-S", "-aec", matrix.server.aet, "-aem", aet,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                "127.0.0.1", str(matrix.server.dicom_port))
    assert proc.returncode == 0, proc.stderr
    got = _by_sop([p.read_bytes() for p in out.iterdir() if p.is_file()])
    accepted = set(TARGETS) if option == "+xa" else set(DCMTK_PREFER[option])
    fallback = ILE if option == "+xi" else ELE
    problems = []
    for s in matrix.sources:
        problems += _check(s, s.ts if s.ts in accepted else fallback, got.get(s.sop_uid))
    _report(problems)


# -- the choice rules without a wire ------------------------------------------------------

def _ref(ts: str, bits: int | None = 16) -> object:
    from pacsnode.retrieve import InstanceRef
    return InstanceRef("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1", "2", ts, Path("/x"), 0,
                       None, bits)


def test_choose_syntax_rules() -> None:
    """As stored when accepted; else the peer's first lossless syntax we
    produce; lossy only when nothing lossless was accepted; None when
    nothing can be produced."""
    from pacsnode.retrieve import AS_STORED, choose_syntax
    assert choose_syntax(_ref(BE), [ELE, BE]) == BE
    assert choose_syntax(_ref(BE), [BE, ELE]) == BE
    assert choose_syntax(_ref(JPEG, 8), [ELE, JPEG]) == JPEG
    assert choose_syntax(_ref(SV1), [AS_STORED]) == SV1
    assert choose_syntax(_ref(ELE, 8), [JPEG, J2KL, ILE]) == J2KL
    assert choose_syntax(_ref(ELE, 8), [JPEG]) == JPEG
    assert choose_syntax(_ref(ELE, 16), [JPEG]) is None
    assert choose_syntax(_ref(ELE), [BE, SV1]) is None
    assert choose_syntax(_ref(ELE, 32), [J2KL, RLE, DEFL]) == DEFL


def test_sending_syntax_for_c_get_contexts() -> None:
    """The syntax accepted for a C-GET SCU's storage context: its first
    choice we can produce (Explicit over Implicit VR LE), else the first we
    store, else none."""
    from pacsnode.dimse.negotiation import TRANSFER_SYNTAXES
    from pacsnode.retrieve import sending_syntax
    assert sending_syntax([ILE, ELE, DEFL, BE], TRANSFER_SYNTAXES) == ELE
    assert sending_syntax([ILE], TRANSFER_SYNTAXES) == ILE
    assert sending_syntax([BE, ELE, ILE], TRANSFER_SYNTAXES) == ELE
    assert sending_syntax([JPEG, ELE, BE, ILE], TRANSFER_SYNTAXES) == JPEG
    assert sending_syntax([SV1, ELE], TRANSFER_SYNTAXES) == ELE
    assert sending_syntax([SV1], TRANSFER_SYNTAXES) == SV1
    assert sending_syntax(["1.2.3.4"], TRANSFER_SYNTAXES) is None

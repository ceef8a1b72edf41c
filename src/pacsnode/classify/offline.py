"""Classifying files, folders and zips without a server
(``pacsnode classify``): headers are read up to the pixel data, turned into
the DICOM JSON the index would hold (``dicom.header.header_json_dict``),
grouped by SeriesInstanceUID and classified like the index's series."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ..dicom.header import header_json_dict
from ..tools.common import NotDicomError, ToolError, read_dicom
from .engine import classify_series
from .facts import FactsBuilder, element_values
from .rules import RuleSet

__all__ = ["SeriesResult", "OfflineResult", "list_sources", "classify_paths"]

_SERIES_UID, _STUDY_UID = "0020000E", "0020000D"
_DESCRIPTION, _SERIES_NUMBER = "0008103E", "00200011"


@dataclass
class SeriesResult:
    series_uid: str
    study_uid: str
    description: str
    number: int | None
    instances: int
    classes: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"SeriesInstanceUID": self.series_uid, "classes": self.classes,
                "SeriesDescription": self.description, "instances": self.instances}


@dataclass
class OfflineResult:
    series: list[SeriesResult] = field(default_factory=list)
    not_dicom: list[str] = field(default_factory=list)      # messages, one per file
    unusable: list[str] = field(default_factory=list)       # damaged, or no series UID


@dataclass(frozen=True)
class Source:
    """A file, or a member of a zip file."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


def list_sources(paths: list[str]) -> list[Source]:
    """Every file under the given paths (folders recursively), and every
    member of the zip files among them."""
    out: list[Source] = []
    for raw in paths:
        path = Path(raw)
        files = [path] if not path.is_dir() else \
            sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if not zipfile.is_zipfile(f):
                out.append(Source(f))
                continue
            try:
                with zipfile.ZipFile(f) as zf:
                    out += [Source(f, i.filename) for i in zf.infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError):
                out.append(Source(f))  # reported as not DICOM when read
    return out


def _read(source: Source, scratch: Path) -> Dataset:
    """The header of a file or zip member (read_dicom reads paths: a member
    is copied to ``scratch`` first)."""
    if source.member is None:
        return read_dicom(source.path, stop_before_pixels=True)
    target = scratch / "member"
    with zipfile.ZipFile(source.path) as zf, zf.open(source.member) as src, \
            target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    try:
        return read_dicom(target, stop_before_pixels=True)
    except ToolError as exc:
        raise type(exc)(str(exc).replace(str(target), source.label, 1)) from None
    finally:
        target.unlink(missing_ok=True)


def _text(header: Mapping[str, Any], key: str) -> str:
    values = element_values(header, key)
    return str(values[0]) if values and values[0] is not None else ""


@dataclass
class _Series:
    builder: FactsBuilder = field(default_factory=FactsBuilder)
    study_uid: str = ""


def _headers(sources: list[Source], result: OfflineResult,
             progress: Callable[[int, int], None] | None) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="pacsnode-classify-") as scratch:
        for done, source in enumerate(sources, 1):
            try:
                ds = _read(source, Path(scratch))
            except NotDicomError as exc:
                result.not_dicom.append(str(exc))
            except ToolError as exc:
                result.unusable.append(str(exc))
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # e.g. encrypted member
                result.unusable.append(f"{source.label}: cannot read: {exc}")
            else:
                header = header_json_dict(ds, has_pixel_data=False)
                if _text(header, _SERIES_UID):
                    yield header
                else:
                    result.unusable.append(f"{source.label}: no SeriesInstanceUID")
            if progress:
                progress(done, len(sources))


def classify_paths(paths: list[str], rules: RuleSet, *,
                   progress: Callable[[int, int], None] | None = None) -> OfflineResult:
    """Classify the series of the DICOM files under ``paths``; files that
    are not DICOM, damaged, or have no series are listed, not fatal.
    ``progress(done, total)`` is called after each file."""
    result = OfflineResult()
    series: dict[str, _Series] = {}
    for header in _headers(list_sources(paths), result, progress):
        one = series.setdefault(_text(header, _SERIES_UID), _Series())
        one.builder.add(header)
        one.study_uid = one.study_uid or _text(header, _STUDY_UID)
    for uid, one in series.items():
        first = one.builder.representative
        assert first is not None
        facts = one.builder.facts()
        number = _text(first, _SERIES_NUMBER)
        result.series.append(SeriesResult(
            uid, one.study_uid, _text(first, _DESCRIPTION),
            int(float(number)) if number else None, facts.instances,
            classify_series(first, facts, rules)))
    result.series.sort(key=lambda s: (s.study_uid, s.number is None, s.number or 0,
                                      s.series_uid))
    return result

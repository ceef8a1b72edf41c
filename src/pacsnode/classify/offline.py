"""Classifying files, folders and zips without a server
(``pacsnode classify``): headers are read up to the pixel data, turned into
the DICOM JSON the index would hold (``dicom.header.header_json_dict``),
grouped by SeriesInstanceUID and classified like the index's series."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


#: (label, opener) of a file or zip member; the opener gives a path to read.
Source = tuple[str, Callable[[], Path]]


def list_sources(paths: list[str]) -> list[Source]:
    """Every file under the given paths (folders recursively), and every
    member of the zip files among them."""
    out: list[Source] = []
    for raw in paths:
        path = Path(raw)
        files = [path] if not path.is_dir() else \
            sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f.suffix.lower() == ".zip" or (f.is_file() and zipfile.is_zipfile(f)):
                try:
                    with zipfile.ZipFile(f) as zf:
                        names = [i.filename for i in zf.infolist() if not i.is_dir()]
                except (zipfile.BadZipFile, OSError):
                    out.append((str(f), lambda f=f: f))
                    continue
                out += [(f"{f}!{name}", lambda f=f, name=name: _extract(f, name))
                        for name in names]
            else:
                out.append((str(f), lambda f=f: f))
    return out


_scratch: list[Path] = []


def _extract(archive: Path, name: str) -> Path:
    """A zip member in a temporary file (read_dicom reads paths)."""
    folder = Path(tempfile.mkdtemp(prefix="pacsnode-classify-"))
    _scratch.append(folder)
    target = folder / "member"
    with zipfile.ZipFile(archive) as zf, zf.open(name) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _cleanup() -> None:
    while _scratch:
        shutil.rmtree(_scratch.pop(), ignore_errors=True)


def _text(header: dict[str, Any], key: str) -> str:
    values = element_values(header, key)
    return str(values[0]) if values and values[0] is not None else ""


@dataclass
class _Series:
    builder: FactsBuilder = field(default_factory=FactsBuilder)
    study_uid: str = ""


def _headers(sources: list[Source], result: OfflineResult,
             progress: Callable[[int, int], None] | None) -> Iterator[dict[str, Any]]:
    for done, (label, opener) in enumerate(sources, 1):
        path = Path(label)
        try:
            path = opener()
            ds = read_dicom(path, stop_before_pixels=True)
        except NotDicomError as exc:
            result.not_dicom.append(str(exc).replace(str(path), label, 1))
        except (ToolError, zipfile.BadZipFile, OSError) as exc:
            result.unusable.append(str(exc).replace(str(path), label, 1)
                                   if isinstance(exc, ToolError) else f"{label}: {exc}")
        else:
            header = header_json_dict(ds, has_pixel_data=False)
            if not _text(header, _SERIES_UID):
                result.unusable.append(f"{label}: no SeriesInstanceUID")
            else:
                yield header
        finally:
            _cleanup()
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
        header = one.builder.representative
        assert header is not None
        number = _text(header, _SERIES_NUMBER)
        result.series.append(SeriesResult(
            uid, one.study_uid, _text(header, _DESCRIPTION),
            int(float(number)) if number else None, one.builder.facts().instances,
            classify_series(header, one.builder.facts(), rules)))
    result.series.sort(key=lambda s: (s.study_uid, s.number is None, s.number or 0,
                                      s.series_uid))
    return result

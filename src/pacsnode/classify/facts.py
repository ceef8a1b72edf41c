"""Facts about a whole series, derived from the headers of its instances:
how many instances, slice positions and volumes, the acquisition
orientation, the diffusion b-values and echo times present.

Headers are DICOM JSON (PS3.18 F.2) as the index stores them; nothing is
read from files.  ``FactsBuilder`` takes them one at a time so that a series
of thousands of instances is never held in memory at once.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SeriesFacts", "FactsBuilder", "series_facts", "element_values", "orientation_of",
           "b_values_of"]

_IOP, _IPP, _TE = "00200037", "00200032", "00180081"
_INSTANCE_NUMBER = "00200013"
_B_VALUE = "00189087"                    # DiffusionBValue (enhanced MR, and many classic)
_SEQUENCE_NAME = "00180024"
_GE_B_VALUE = ("00430010", "GEMS_PARM_01", "00431039")  # first value: the b-value
_PHILIPS_B_VALUE = ("20010010", "Philips Imaging DD 001", "20011003")
#: Siemens puts the b-value in the sequence name: "*ep_b1000t", "*ep_b1000#12".
_SIEMENS_B = re.compile(r"ep_b(\d+)")


def element_values(header: Mapping[str, Any], key: str) -> list[Any] | None:
    """The values of one element of a DICOM JSON header: strings and
    numbers; a person name as its alphabetic form; the text of an element
    that was read without its VR (InlineBinary of an "UN").  None when the
    element is absent; sequences and bulk data count as absent."""
    entry = header.get(key)
    if not isinstance(entry, Mapping):
        return None
    if "Value" in entry:
        out = []
        for value in entry["Value"] or ():
            if isinstance(value, Mapping):
                if "Alphabetic" in value:
                    out.append(value["Alphabetic"])
                    continue
                return None  # a sequence item
            out.append(value)
        return out
    if "InlineBinary" in entry and entry.get("vr") == "UN":
        try:
            text = base64.b64decode(entry["InlineBinary"]).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        return [v.strip(" \x00") for v in text.split("\\")]
    if "BulkDataURI" in entry:
        return None
    return []


def _private_values(header: Mapping[str, Any], creator_key: str, creator: str,
                    key: str) -> list[Any] | None:
    """A private element at its usual block, only when that block belongs
    to ``creator`` (when the creator element is there at all)."""
    owner = element_values(header, creator_key)
    if owner and str(owner[0]).strip() != creator:
        return None
    return element_values(header, key)


def _floats(values: Iterable[Any] | None) -> list[float]:
    out = []
    for value in values or ():
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            continue
    return out


def orientation_of(iop: list[float]) -> str | None:
    """"axial", "coronal" or "sagittal": the patient axis the slice normal
    (row × column direction cosines) is closest to."""
    if len(iop) != 6:
        return None
    rx, ry, rz, cx, cy, cz = iop
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    magnitudes = [abs(n) for n in normal]
    if max(magnitudes) < 1e-6:
        return None
    return ("sagittal", "coronal", "axial")[magnitudes.index(max(magnitudes))]


def b_values_of(header: Mapping[str, Any]) -> list[float]:
    """The diffusion b-values one instance's header gives: DiffusionBValue
    (0018,9087), GE's (0043,1039) (first value; some versions add 10^9),
    Philips' (2001,1003), or Siemens' sequence name (``*ep_b1000t``)."""
    values = _floats(element_values(header, _B_VALUE))
    if values:
        return values
    ge = _floats(_private_values(header, *_GE_B_VALUE))
    if ge:
        return [ge[0] % 1_000_000_000 if ge[0] >= 1_000_000_000 else ge[0]]
    philips = _floats(_private_values(header, *_PHILIPS_B_VALUE))
    if philips:
        return philips[:1]
    name = element_values(header, _SEQUENCE_NAME)
    if name:
        m = _SIEMENS_B.search(str(name[0]))
        if m:
            return [float(m.group(1))]
    return []


@dataclass(frozen=True)
class SeriesFacts:
    """What the headers of a series' instances tell together."""

    instances: int = 0
    slices: int = 0              # distinct slice positions (per orientation)
    volumes: int = 0             # instances / slices: repetitions, directions, echoes…
    orientation: str | None = None          # the most frequent one
    orientations: tuple[str, ...] = ()      # every one present, in order of first sight
    b_values: tuple[float, ...] = ()        # sorted, distinct
    echo_times: tuple[float, ...] = ()      # sorted, distinct

    def attributes(self) -> dict[str, list[Any]]:
        """The facts by the names rules test (``rules.FACT_NAMES``;
        ``ClassifyType`` is added by the engine)."""
        out: dict[str, list[Any]] = {
            "NumFiles": [self.instances], "NumberOfInstances": [self.instances],
            "NumSlices": [self.slices], "NumberOfVolumes": [self.volumes],
            "Orientations": list(self.orientations),
            "NumberOfOrientations": [len(self.orientations)],
            "DiffusionBValues": list(self.b_values), "EchoTimes": list(self.echo_times),
            "NumberOfEchoes": [len(self.echo_times)],
        }
        if self.orientation:
            out["Orientation"] = [self.orientation]
        return out


class FactsBuilder:
    """Accumulates the facts of a series from its instances' headers, and
    keeps the representative header to classify: the instance with the
    lowest InstanceNumber (the first added among equals)."""

    def __init__(self) -> None:
        self.representative: Mapping[str, Any] | None = None
        self._representative_number = float("inf")
        self._instances = 0
        self._orientations: Counter[str] = Counter()
        self._positions: set[tuple[str, float]] = set()
        self._b_values: set[float] = set()
        self._echo_times: set[float] = set()

    def add(self, header: Mapping[str, Any]) -> None:
        self._instances += 1
        number = _floats(element_values(header, _INSTANCE_NUMBER))
        rank = number[0] if number else float("inf")
        if self.representative is None or rank < self._representative_number:
            self.representative, self._representative_number = header, rank
        iop = _floats(element_values(header, _IOP))
        orientation = orientation_of(iop)
        if orientation:
            self._orientations[orientation] += 1
            ipp = _floats(element_values(header, _IPP))
            if len(ipp) == 3:
                rx, ry, rz, cx, cy, cz = iop
                normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
                along = sum(p * n for p, n in zip(ipp, normal))
                self._positions.add((orientation, round(along, 2)))
        self._b_values.update(round(b, 3) for b in b_values_of(header))
        self._echo_times.update(round(t, 3) for t in _floats(element_values(header, _TE)))

    def facts(self) -> SeriesFacts:
        slices = len(self._positions) or self._instances
        volumes = max(1, round(self._instances / slices)) if self._instances else 0
        return SeriesFacts(
            instances=self._instances, slices=slices, volumes=volumes,
            orientation=(self._orientations.most_common(1)[0][0]
                         if self._orientations else None),
            orientations=tuple(self._orientations),
            b_values=tuple(sorted(self._b_values)),
            echo_times=tuple(sorted(self._echo_times)))


def series_facts(headers: Iterable[Mapping[str, Any]]) -> SeriesFacts:
    builder = FactsBuilder()
    for header in headers:
        builder.add(header)
    return builder.facts()

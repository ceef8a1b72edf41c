"""Stack a series of single-frame slices into one 3-D volume.

```python
vol = load_volume(datasets)      # e.g. RemoteNode.get_series(...)
vol.array        # numpy float32, shape (z, y, x) = (slices, Rows, Columns)
vol.spacing      # (z, y, x) in mm
vol.origin       # (x, y, z) in mm, patient (LPS) coordinates of voxel [0, 0, 0]
vol.direction    # 3x3: rows are the row cosine, column cosine and normal
```

Conventions, all in the DICOM patient coordinate system (LPS, mm):

- ``array[k, j, i]`` is slice ``k``, row ``j``, column ``i``; values are the
  stored values with the Modality LUT's RescaleSlope/RescaleIntercept
  applied (Hounsfield units for CT), as float32.
- Slices are sorted by their position along the slice normal
  (``ImagePositionPatient · normal``), never by InstanceNumber, so ``k``
  grows along ``direction[2]``.
- ``spacing[0]`` is the distance between slice positions along the normal
  (not SliceThickness); ``spacing[1]`` is PixelSpacing[0] (between rows),
  ``spacing[2]`` is PixelSpacing[1] (between columns).
- ``origin`` is the ImagePositionPatient of the first slice after sorting.
- ``direction[0]`` is ImageOrientationPatient[0:3] (the direction in which
  the column index ``i`` grows), ``direction[1]`` is ImageOrientationPatient[3:6]
  (row index ``j``), ``direction[2]`` is their cross product (slice index ``k``).
  ``Volume.affine`` combines them into the 4x4 index → patient transform.

A set of datasets that is not exactly one regular volume is refused with
:class:`NotAVolume`, saying why: nothing given, more than one series,
multi-frame or colour images, missing geometry, differing image size,
orientation or pixel spacing, two slices at one position, slices not stacked
along the normal (gantry tilt), or uneven gaps (a missing slice).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

__all__ = ["Volume", "NotAVolume", "load_volume"]

#: Cosines of two orientations may differ by this much and still be "the same".
ORIENTATION_TOLERANCE = 1e-4
#: Gaps between slices may differ from their mean by this fraction of it
#: (and by at least ``GAP_TOLERANCE_MM``) before the set is called uneven.
GAP_TOLERANCE = 0.01
GAP_TOLERANCE_MM = 1e-3


class NotAVolume(ValueError):
    """The datasets do not form one regular 3-D volume (the message says why)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A regular 3-D image: voxels plus their place in patient space."""

    #: Voxel values, float32, shape (z, y, x), Modality LUT applied.
    array: NDArray[np.float32]
    #: Voxel size (z, y, x) in mm.
    spacing: tuple[float, float, float]
    #: Patient position (x, y, z) in mm of voxel [0, 0, 0].
    origin: tuple[float, float, float]
    #: Rows: row cosine (i), column cosine (j), slice normal (k).
    direction: NDArray[np.float64]
    #: SOP Instance UIDs of the slices, in array order.
    sop_instance_uids: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def affine(self) -> NDArray[np.float64]:
        """4x4 matrix taking homogeneous voxel indices ``(i, j, k, 1)``
        (column, row, slice — note: reversed from ``array``'s axes) to
        patient coordinates ``(x, y, z, 1)`` in mm."""
        sz, sy, sx = self.spacing
        m = np.eye(4)
        m[:3, 0] = self.direction[0] * sx
        m[:3, 1] = self.direction[1] * sy
        m[:3, 2] = self.direction[2] * sz
        m[:3, 3] = self.origin
        return m


def _floats(ds: Dataset, keyword: str, count: int, where: str) -> NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,):
        raise NotAVolume(f"{where}: {keyword} missing or not {count} numbers")
    return values


def _describe(ds: Dataset, index: int) -> str:
    uid = ds.get("SOPInstanceUID")
    return f"instance {uid}" if uid else f"dataset #{index}"


def _check_same(datasets: list[Dataset], keyword: str) -> None:
    values = {str(ds.get(keyword)) for ds in datasets}
    if len(values) > 1:
        raise NotAVolume(f"slices differ in {keyword}: {', '.join(sorted(values))}")


def load_volume(datasets: Iterable[Dataset]) -> Volume:
    """Sort and stack single-frame slices of one series into a :class:`Volume`
    (conventions in the module docstring); raise :class:`NotAVolume` when
    they are not one regular volume."""
    slices = list(datasets)
    if not slices:
        raise NotAVolume("no datasets given")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise NotAVolume(f"datasets come from {len(series)} series: "
                         f"{', '.join(sorted(series))}")
    for index, ds in enumerate(slices):
        if "PixelData" not in ds and "FloatPixelData" not in ds \
                and "DoubleFloatPixelData" not in ds:
            raise NotAVolume(f"{_describe(ds, index)} has no pixel data")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise NotAVolume(f"{_describe(ds, index)} is multi-frame; only single-frame "
                             "slices are stacked")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise NotAVolume(f"{_describe(ds, index)} is not greyscale "
                             f"(SamplesPerPixel {ds.SamplesPerPixel})")
    _check_same(slices, "Rows")
    _check_same(slices, "Columns")

    orientations = [_floats(ds, "ImageOrientationPatient", 6, _describe(ds, i))
                    for i, ds in enumerate(slices)]
    positions = np.array([_floats(ds, "ImagePositionPatient", 3, _describe(ds, i))
                          for i, ds in enumerate(slices)])
    pixel_spacings = [_floats(ds, "PixelSpacing", 2, _describe(ds, i))
                      for i, ds in enumerate(slices)]
    first = orientations[0]
    for index, orientation in enumerate(orientations):
        if np.max(np.abs(orientation - first)) > ORIENTATION_TOLERANCE:
            raise NotAVolume(f"mixed orientations: {_describe(slices[index], index)} has "
                             f"ImageOrientationPatient {orientation.tolist()}, "
                             f"another {first.tolist()}")
    for spacing in pixel_spacings:
        if np.max(np.abs(spacing - pixel_spacings[0])) > GAP_TOLERANCE_MM:
            raise NotAVolume(f"slices differ in PixelSpacing: {spacing.tolist()} and "
                             f"{pixel_spacings[0].tolist()}")

    row, col = first[:3], first[3:]
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    if abs(float(np.dot(row, col))) > 1e-3:
        raise NotAVolume("ImageOrientationPatient row and column cosines are not "
                         "perpendicular")
    normal = np.cross(row, col)
    direction = np.vstack([row, col, normal])

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    along = along[order]
    z_spacing = _slice_spacing(slices, positions, along, normal)

    array = np.empty((len(slices), int(slices[0].Rows), int(slices[0].Columns)),
                     dtype=np.float32)
    for k, ds in enumerate(slices):
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        array[k] = pixels * np.float32(slope) + np.float32(intercept)

    dy, dx = (float(v) for v in pixel_spacings[0])
    origin = tuple(float(v) for v in positions[0])
    return Volume(array=array, spacing=(z_spacing, dy, dx),
                  origin=(origin[0], origin[1], origin[2]), direction=direction,
                  sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in slices))


def _slice_spacing(slices: list[Dataset], positions: NDArray[np.float64],
                   along: NDArray[np.float64], normal: NDArray[np.float64]) -> float:
    """Distance between consecutive slices, checking the stack is regular."""
    if len(slices) == 1:
        ds = slices[0]
        value = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        return float(value)
    gaps = np.diff(along)
    for k, gap in enumerate(gaps):
        if gap < GAP_TOLERANCE_MM:
            raise NotAVolume(f"two slices at the same position {positions[k].tolist()}: "
                             f"{_describe(slices[k], k)} and {_describe(slices[k + 1], k + 1)}")
    steps = np.diff(positions, axis=0)
    off_axis = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    if np.max(off_axis) > max(GAP_TOLERANCE * float(np.mean(gaps)), GAP_TOLERANCE_MM):
        raise NotAVolume("slice positions do not follow the slice normal (gantry tilt or "
                         "a shifted slice); the volume would be sheared")
    mean = float(np.mean(gaps))
    smallest = float(np.min(gaps))
    tolerance = max(GAP_TOLERANCE * smallest, GAP_TOLERANCE_MM)
    worst = int(np.argmax(np.abs(gaps - smallest)))
    if abs(float(gaps[worst]) - smallest) > tolerance:
        missing = round(float(gaps[worst]) / smallest) - 1
        hint = f" (about {missing} missing slice{'s' if missing != 1 else ''})" \
            if missing >= 1 else ""
        raise NotAVolume(f"uneven slice spacing: gap of {gaps[worst]:.4g} mm after "
                         f"{_describe(slices[worst], worst)}, others {smallest:.4g} mm{hint}")
    return mean

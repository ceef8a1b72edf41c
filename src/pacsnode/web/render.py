"""Rendering one frame to JPEG or PNG for WADO-RS ``…/rendered`` and
``…/thumbnail`` (PS3.18 8.3.5.1 and 9.5.1.2 rendered media types).

The grey-scale pipeline of PS3.3 C.11: Modality LUT (Rescale Slope/Intercept
or Modality LUT Sequence), then VOI — the ``window`` query parameter if given,
else the data set's VOI LUT Sequence, else its first Window Center/Width (with
VOI LUT Function), else the frame's own minimum/maximum — then MONOCHROME1
inversion.  Enhanced multi-frame objects take rescale and window from their
per-frame or shared functional groups.  Colour (RGB, YBR decoded to RGB,
PALETTE COLOR through its LUT) is scaled to 8 bits and not windowed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from ..errors import BadQuery
from ..query.parse import integer_param
from ..transcode import decoded_frame

__all__ = ["RenderOptions", "parse_window", "parse_viewport", "parse_quality", "render_frame",
           "THUMBNAIL_SIZE"]

#: Thumbnails fit in this square unless ``viewport`` says otherwise.
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int, tuple[int, int, int, int] | None] | None = None
    quality: int = 90


def parse_window(value: str | None) -> tuple[float, float, str] | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    if value is None or value == "":
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise BadQuery(f"window must be center,width[,function], not {value!r}")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        center = width = math.nan
    if not (value.isascii() and math.isfinite(center) and math.isfinite(width)):
        raise BadQuery(f"window center and width must be numbers, not {value[:80]!r}")
    function = (parts[2] if len(parts) == 3 else "linear").lower()
    if function not in ("linear", "linear_exact", "sigmoid"):
        raise BadQuery(f"window function must be linear, linear_exact or sigmoid, "
                       f"not {parts[2]!r}")
    if width <= 0 or (function == "linear" and width < 1):
        raise BadQuery(f"window width must be positive (at least 1 for linear), not {width:g}")
    return center, width, function


def parse_viewport(value: str | None) -> tuple[int, int, tuple[int, int, int, int] | None] | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3)."""
    if value is None or value == "":
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 6):
        raise BadQuery(f"viewport must be vw,vh or vw,vh,sx,sy,sw,sh, not {value!r}")
    if not all(p == "" or (p.isascii() and p.isdigit() and len(p) <= 9) for p in parts):
        raise BadQuery(f"viewport values must be integers (digits 0-9), not {value[:80]!r}")
    numbers = [int(p) if p else 0 for p in parts]
    vw, vh = numbers[0], numbers[1]
    if not (0 < vw <= 8192 and 0 < vh <= 8192):
        raise BadQuery(f"viewport width and height must be 1-8192, not {value!r}")
    crop = None
    if len(numbers) == 6:
        sx, sy, sw, sh = numbers[2:]
        if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
            raise BadQuery("viewport source region must have sx,sy >= 0 and sw,sh > 0")
        crop = (sx, sy, sw, sh)
    return vw, vh, crop


def parse_quality(value: str | None) -> int:
    if value is None or value == "":
        return 90
    return integer_param("quality", value, minimum=1, maximum=100)


def _frame_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` from the frame's functional groups."""
    for groups, item_index in (("PerFrameFunctionalGroupsSequence", index),
                               ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or len(seq) <= item_index:
            continue
        inner = seq[item_index].get(sequence)
        if inner is not None and len(inner):
            item: Dataset = inner[0]
            return item
    return None


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2/3: window to [0, 1]."""
    x = arr.astype(np.float64)
    if function == "sigmoid":
        # 1 / (1 + exp(-4 (x - c) / w)), written so that it cannot overflow.
        return 0.5 * (1.0 + np.tanh(2.0 * (x - center) / width))
    if function == "linear_exact":
        out = (x - center) / width + 0.5
    else:
        out = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else \
            (x > center - 0.5).astype(np.float64)
    return np.clip(out, 0.0, 1.0)


def _grey(arr: np.ndarray, ds: Dataset, index: int,
          window: tuple[float, float, str] | None) -> np.ndarray:
    from pydicom.pixels.processing import apply_modality_lut, apply_voi
    transform = _frame_group(ds, index, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        values = arr.astype(np.float64) * float(transform.RescaleSlope) + \
            float(transform.get("RescaleIntercept", 0))
    elif "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float64)
    else:
        values = arr.astype(np.float64)
    if window is not None:
        out = _window(values, *window)
    elif "VOILUTSequence" in ds:
        lut_out = apply_voi(values.astype(np.int64) if not np.issubdtype(arr.dtype, np.floating)
                            else values, ds, 0).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
        out = np.clip(lut_out / float(2 ** bits - 1), 0.0, 1.0)
    else:
        voi = _frame_group(ds, index, "FrameVOILUTSequence")
        source = voi if voi is not None and "WindowCenter" in voi else ds
        if "WindowCenter" in source and "WindowWidth" in source and \
                _first(source.WindowWidth) > 0:
            function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").lower()
            if function not in ("linear", "linear_exact", "sigmoid"):
                function = "linear"
            width = _first(source.WindowWidth)
            if function == "linear" and width < 1:
                function = "linear_exact"
            out = _window(values, _first(source.WindowCenter), width, function)
        else:
            low, high = float(values.min()), float(values.max())
            out = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 1.0 - out
    return (out * 255.0 + 0.5).astype(np.uint8)


def _colour(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut
        arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if arr.dtype == np.uint8 and bits <= 8:
        return arr
    scale = 255.0 / float(2 ** min(bits, 16) - 1)
    return np.clip(arr.astype(np.float64) * scale + 0.5, 0, 255).astype(np.uint8)


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to fit in ``box`` keeping the aspect ratio."""
    w, h = size
    scale = min(box[0] / w, box[1] / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def render_frame(path: str | Path, index: int, options: RenderOptions,
                 thumbnail: bool = False) -> bytes:
    """Frame ``index`` (0-based) of a stored instance as JPEG or PNG bytes."""
    from PIL import Image
    ds = dcmread(path, stop_before_pixels=True, force=True)
    arr = decoded_frame(path, index)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        image = Image.fromarray(np.ascontiguousarray(_colour(arr, ds)), "RGB")
    else:
        image = Image.fromarray(_grey(arr, ds, index, options.window), "L")
    viewport = options.viewport
    if viewport is not None:
        vw, vh, crop = viewport
        if crop is not None:
            sx, sy, sw, sh = crop
            image = image.crop((sx, sy, min(sx + sw, image.width), min(sy + sh, image.height)))
        image = image.resize(_fit(image.size, (vw, vh)), Image.Resampling.LANCZOS)
    elif thumbnail:
        image = image.resize(_fit(image.size, (THUMBNAIL_SIZE, THUMBNAIL_SIZE)),
                             Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=options.quality)
    return out.getvalue()

"""Turning data set values into index column values, and query values into
the same normal form, so that both sides of a comparison agree."""

from __future__ import annotations

import unicodedata
from typing import Any

from pydicom.multival import MultiValue

from .catalogue import ATTRIBUTES, Attribute, Level

__all__ = ["norm_time", "norm_datetime", "fuzzy_tokens", "fold",
           "text_value", "TIME_LOW", "TIME_HIGH", "person_name_json"]


def fold(text: str) -> str:
    """Case folding used for case-insensitive matching (PN)."""
    return text.upper()


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def fuzzy_tokens(name: str) -> str:
    """Name components, accent-free and upper-cased, each preceded by a space:
    ``"Doe^John Paul"`` → ``" DOE JOHN PAUL"``.  A fuzzy query for ``jo``
    becomes ``LIKE '% JO%'``."""
    parts = []
    for group in name.replace("=", "^").split("^"):
        for word in group.replace(",", " ").split():
            parts.append(_strip_accents(word).upper())
    return "".join(" " + p for p in parts)


def fuzzy_prefix(value: str) -> str:
    return _strip_accents(value.strip()).upper()


# Fixed-width forms: TM → HHMMSS.FFFFFF (13), DT → YYYYMMDDHHMMSS.FFFFFF (21).
TIME_LOW = "000000.000000"
TIME_HIGH = "235959.999999"
_DT_LOW = "00000101" + TIME_LOW.replace(".", "", 0)
_DT_HIGH = "99991231" + TIME_HIGH


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' (which int() refuses)
    and '٣' (which int() reads as 3)."""
    return text.isascii() and text.isdigit()


def norm_time(value: str, high: bool = False) -> str:
    """Normalise a TM value (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.F…``, also
    the retired ``HH:MM:SS``) to ``HHMMSS.FFFFFF``.  Unspecified trailing
    components become the lowest value, or the highest for an upper range
    bound (``0800`` as an upper bound covers the whole minute)."""
    text = value.strip().replace(":", "")
    if not text:
        return ""
    if "." in text:
        whole, frac = text.split(".", 1)
    else:
        whole, frac = text, ""
    if not _digits(whole) or len(whole) not in (2, 4, 6) or (frac and not _digits(frac)):
        raise ValueError(f"not a DICOM time: {value!r}")
    template = TIME_HIGH if high else TIME_LOW
    padded = whole + template[len(whole):6]
    if frac or len(whole) == 6:
        frac = (frac + template[7 + len(frac):])[:6] if frac else template[7:]
    else:
        frac = template[7:]
    hh, mm, ss = int(padded[:2]), int(padded[2:4]), int(padded[4:6])
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"not a DICOM time: {value!r}")
    return f"{padded}.{frac}"


def norm_date(value: str) -> str:
    text = value.strip().replace(".", "").replace("-", "") if len(value.strip()) == 10 \
        else value.strip()
    if len(text) != 8 or not _digits(text):
        raise ValueError(f"not a DICOM date: {value!r}")
    month, day = int(text[4:6]), int(text[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError(f"not a DICOM date: {value!r}")
    return text


def norm_datetime(value: str, high: bool = False) -> str:
    """Normalise a DT value to ``YYYYMMDDHHMMSS.FFFFFF`` (UTC offset ignored)."""
    text = value.strip()
    for sign in "+-":
        pos = text.find(sign, 4)
        if pos != -1:
            text = text[:pos]
    if not text:
        return ""
    date_part, time_part = text[:8], text[8:]
    if not _digits(date_part) or len(date_part) not in (4, 6, 8):
        raise ValueError(f"not a DICOM date-time: {value!r}")
    template = "99991231" if high else "00000101"
    if len(date_part) < 8:
        date_part = date_part + (("12" + "31")[len(date_part) - 4:] if high
                                 else ("01" + "01")[len(date_part) - 4:])
    time_norm = norm_time(time_part, high) if time_part else (TIME_HIGH if high else TIME_LOW)
    del template
    return date_part + time_norm


def text_value(value: Any) -> str:
    """The stored text of an element value: multi-values joined with ``\\``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, MultiValue)):
        return "\\".join(text_value(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    return str(value)


def _int_value(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, MultiValue)):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return None


def attribute_columns(attr: Attribute, value: Any) -> dict[str, Any]:
    """Column values for one catalogue attribute."""
    col = attr.column
    kind = attr.kind
    if kind == "int":
        return {col: _int_value(value)}
    text = text_value(value)
    if attr.multi_valued and text:
        # Guards on both ends so "any value matches" is a LIKE '%\v\%'.
        text = "\\" + text + "\\"
    if kind == "pn":
        return {col: text, col + "_ci": fold(text), col + "_fz": fuzzy_tokens(text)}
    if kind == "time":
        try:
            n = norm_time(text.split("\\")[0]) if text else ""
        except ValueError:
            n = ""
        return {col: text, col + "_n": n}
    if kind == "datetime":
        try:
            n = norm_datetime(text) if text else ""
        except ValueError:
            n = ""
        return {col: text, col + "_n": n}
    return {col: text}


_BY_LEVEL: dict[Level, list[tuple[str, Attribute]]] = {
    level: [(f"{a.tag:08X}", a) for a in ATTRIBUTES if a.level == level] for level in Level}


def _json_value(entry: dict[str, Any] | None, vr: str) -> Any:
    """A DICOM JSON element's value in the form pydicom would give: PN as
    ``Alphabetic=Ideographic=Phonetic``, several values as a list."""
    if not entry:
        return None
    values = entry.get("Value")
    if not values:
        return None
    if vr == "PN":
        values = ["=".join(v.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic"))
                  .rstrip("=") if isinstance(v, dict) else str(v) for v in values]
    return values[0] if len(values) == 1 else values


def row_values_from_json(body: dict[str, Any], level: Level) -> dict[str, Any]:
    """Column values of ``level``'s catalogue attributes, read from the
    header's DICOM JSON (so element values are decoded only once)."""
    out = dict(_ABSENT[level])
    for key, attr in _BY_LEVEL[level]:
        entry = body.get(key)
        if entry:
            out.update(attribute_columns(attr, _json_value(entry, attr.vr)))
    return out


def _absent_columns(level: Level) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, attr in _BY_LEVEL[level]:
        out.update(attribute_columns(attr, None))
    return out


#: Column values of a level whose attributes are all absent: most of a
#: header's catalogue attributes are, and these need no work per instance.
_ABSENT = {level: _absent_columns(level) for level in Level}


def stored_to_dicom(attr: Attribute, stored: Any) -> Any:
    """Turn a stored column value back into a value for a pydicom element."""
    if stored is None or stored == "":
        return None
    if attr.kind == "int":
        return stored
    text = str(stored)
    if attr.multi_valued:
        text = text.strip("\\")
        return text.split("\\") if "\\" in text else text
    if "\\" in text:
        return text.split("\\")
    return text


#: The DICOM JSON names of a Person Name's component groups (PS3.18 F.2.2).
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def person_name_json(groups: list[str]) -> dict[str, str]:
    """A Person Name value's groups (its text split at "=") as the DICOM JSON
    object: ``{"Alphabetic": …, "Ideographic": …, "Phonetic": …}``, as many
    as there are groups (at most three)."""
    return dict(zip(_PN_GROUPS, groups))

"""Extra query tags (DESIGN.md §11): attributes the catalogue does not
index, made matching and return keys of C-FIND and QIDO-RS by the setting
``extra_query_tags``::

    extra_query_tags = [{tag = "0018,0024", level = "SERIES"},
                        {tag = "0019,109C", creator = "GEMS_ACQU_01", level = "SERIES"}]

A public tag is named in queries by its keyword or its tag; a private one
by its tag as declared, and found in each data set by its creator,
wherever the creator's block sits (PS3.5 7.8.1): ``(0019,109C)`` of
``GEMS_ACQU_01`` is ``(0019,xx9C)`` where ``(0019,00xx)`` holds
``GEMS_ACQU_01``.

The values are kept in the index table ``extra_attrs`` (one row per value;
``pacsnode.index.extra_index``), filled on ingest and by ``pacsnode
reindex``.  The active declaration is process-wide (``configure``, called
when a ``Node`` is built), as the query parser and the ingest need it
without a Node at hand.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

from .catalogue import BY_KEYWORD, Level
from .values import fold, norm_date, norm_datetime, norm_time

__all__ = ["ExtraTag", "parse_extra_tags", "configure", "active", "by_name", "by_key",
           "signature"]

#: VRs whose values are kept as text (others: their text form).
_LEVELS = {"STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.IMAGE,
           "INSTANCE": Level.IMAGE}


@dataclass(frozen=True)
class ExtraTag:
    #: The tag as declared (a private one with the block byte it was declared with).
    tag: int
    level: Level
    #: The private creator; "" for a public tag.
    creator: str = ""
    #: The value representation values are read with ("LO" for a private tag
    #: unless declared with ``vr``).
    vr: str = "LO"

    @property
    def private(self) -> bool:
        return bool(self.creator)

    @property
    def keyword(self) -> str:
        return "" if self.private else keyword_for_tag(self.tag)

    @property
    def name(self) -> str:
        """What queries call it: the keyword, or the declared tag in hex."""
        return self.keyword or f"{self.tag:08X}"

    @property
    def key(self) -> str:
        """What ``extra_attrs.key`` holds: ``00180024``, or ``0019xx9C`` plus
        the creator (the block byte does not belong to the attribute)."""
        if not self.private:
            return f"{self.tag:08X}"
        return f"{self.tag >> 16:04X}xx{self.tag & 0xFF:02X}:{self.creator}"

    def json_key(self, body: Mapping[str, Any]) -> str | None:
        """The element's key in the DICOM JSON ``body`` of a data set (its
        block found by creator), or None."""
        if not self.private:
            return f"{self.tag:08X}"
        group = self.tag >> 16
        for block in range(0x10, 0x100):
            entry = body.get(f"{group:04X}00{block:02X}")
            if entry is None:
                continue
            if _texts(entry) == [self.creator]:
                return f"{group:04X}{block:02X}{self.tag & 0xFF:02X}"
        return None

    def values(self, body: Mapping[str, Any]) -> list[str]:
        """The element's values in ``body``, as stored for matching."""
        key = self.json_key(body)
        entry = body.get(key) if key else None
        if entry is None:
            return []
        return [normalised(self.vr, v) for v in _texts(entry) if v]


def _texts(entry: Mapping[str, Any]) -> list[str]:
    if "Value" in entry:
        out = []
        for v in entry["Value"]:
            if isinstance(v, dict):
                out.append(str(v.get("Alphabetic", "")))
            else:
                out.append(str(v))
        return out
    if "InlineBinary" in entry:  # UN: an implicit-VR private element
        raw = base64.b64decode(entry["InlineBinary"]).decode("latin-1")
        return [v.strip(" \x00") for v in raw.split("\\")]
    return []


def normalised(vr: str, value: str) -> str:
    """A value as ``extra_attrs.value`` keeps it: dates, times and date-times
    in the fixed widths the query parser normalises bounds to."""
    text = value.strip()
    try:
        if vr == "DA":
            return norm_date(text)
        if vr == "TM":
            return norm_time(text)
        if vr == "DT":
            return norm_datetime(text)
    except ValueError:
        return text
    return text


def value_ci(vr: str, value: str) -> str:
    return fold(value) if vr == "PN" else value


def _tag(text: str) -> int:
    digits = text.strip().strip("()").replace(",", "")
    if len(digits) != 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"extra_query_tags: {text!r} is not a tag (gggg,eeee)")
    return int(digits, 16)


def parse_extra_tags(raw: Iterable[Any]) -> tuple[ExtraTag, ...]:
    """The ``extra_query_tags`` setting, checked; ValueError says what is wrong."""
    tags: list[ExtraTag] = []
    for entry in raw or ():
        if not isinstance(entry, Mapping) or "tag" not in entry or "level" not in entry:
            raise ValueError(f"extra_query_tags: each entry is {{tag = \"gggg,eeee\", level = "
                             f"\"STUDY|SERIES|IMAGE\"[, creator = \"...\"]}}, not {entry!r}")
        tag = _tag(str(entry["tag"]))
        level = _LEVELS.get(str(entry["level"]).upper())
        if level is None:
            raise ValueError(f"extra_query_tags: level of {entry['tag']} must be STUDY, SERIES "
                             f"or IMAGE, not {entry['level']!r}")
        creator = str(entry.get("creator", "") or "")
        private = (tag >> 16) % 2 == 1
        if private:
            if not creator:
                raise ValueError(f"extra_query_tags: {entry['tag']} is private: name its "
                                 "creator (creator = \"...\")")
            if not 0x1000 <= (tag & 0xFFFF) <= 0xFFFF:
                raise ValueError(f"extra_query_tags: {entry['tag']} is a private creator "
                                 "element, not a private attribute")
            vr = str(entry.get("vr", "LO")).upper()
        else:
            if creator:
                raise ValueError(f"extra_query_tags: {entry['tag']} is public; it has no "
                                 "creator")
            try:
                vr = dictionary_VR(tag).split(" or ")[0]
            except KeyError:
                raise ValueError(f"extra_query_tags: {entry['tag']} is not in the DICOM "
                                 "dictionary") from None
            if keyword_for_tag(tag) in BY_KEYWORD:
                raise ValueError(f"extra_query_tags: {keyword_for_tag(tag)} is indexed "
                                 "already")
            if vr == "SQ":
                raise ValueError(f"extra_query_tags: {entry['tag']} is a sequence")
        extra = ExtraTag(tag, level, creator, vr)
        if any(t.key == extra.key for t in tags):
            raise ValueError(f"extra_query_tags: {entry['tag']} is declared twice")
        tags.append(extra)
    return tuple(tags)


_ACTIVE: tuple[ExtraTag, ...] = ()
_BY_NAME: dict[str, ExtraTag] = {}
_BY_KEY: dict[str, ExtraTag] = {}


def configure(tags: tuple[ExtraTag, ...]) -> None:
    """Make ``tags`` the extra query tags of this process."""
    global _ACTIVE
    _ACTIVE = tags
    _BY_NAME.clear()
    _BY_KEY.clear()
    for t in tags:
        _BY_NAME[t.name] = t
        _BY_NAME[f"{t.tag:08X}"] = t
        _BY_KEY[t.key] = t


def active() -> tuple[ExtraTag, ...]:
    return _ACTIVE


def by_name(name: str) -> ExtraTag | None:
    """The extra tag a query names (keyword, or tag in hex), or None."""
    return _BY_NAME.get(name) if _BY_NAME else None


def by_key(key: str) -> ExtraTag | None:
    return _BY_KEY.get(key)


def signature(tags: Iterable[ExtraTag]) -> str:
    """Names the set of declared tags (reindex progress is kept per set)."""
    text = ";".join(sorted(t.key + "@" + t.level.name for t in tags))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

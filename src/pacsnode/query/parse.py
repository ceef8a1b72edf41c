"""Building a Query from a C-FIND identifier or from QIDO-RS parameters.

Both go through ``constraint_for``, so a value means the same thing on both
protocols (PS3.4 C.2.2.2; PS3.18 8.3.4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ..dicom import extra_tags
from ..dicom.catalogue import BY_KEYWORD, COMPUTED, Level, UnknownAttribute, resolve_key
from ..dicom.header import valid_uid
from ..dicom.values import norm_date, norm_datetime, norm_time, text_value
from ..errors import BadQuery
from .model import (Constraint, Fuzzy, ListOfUID, Query, Range, ReturnKey, Sequence,
                    SingleValue, Wildcard)

__all__ = ["constraint_for", "query_from_identifier", "query_from_qido", "search_query",
           "QIDO_DEFAULTS", "search_params", "match_constraints", "resolve_attribute",
           "integer_param", "MAX_INTEGER", "MAX_MATCH_KEYS", "MAX_UIDS"]

#: The largest number any parameter may give (an offset, a sequence number):
#: the largest LIMIT/OFFSET value SQLite and PostgreSQL take (2^63 - 1).
MAX_INTEGER = 2 ** 63 - 1
#: Attribute matching parameters (``Attribute=value``) in one search.  Each
#: is one more condition; a thousand made SQLite's expression tree too deep.
MAX_MATCH_KEYS = 64
#: UIDs in one list (``StudyInstanceUID=a,b,…`` or a C-FIND value a\b\…).
MAX_UIDS = 1000


def integer_param(name: str, text: str, *, minimum: int = 0,
                  maximum: int = MAX_INTEGER) -> int:
    """A numeric parameter: ASCII digits only (``str.isdigit`` would take
    '²', which ``int`` refuses, and '٣', which ``int`` reads as 3; ``int``
    alone takes '1_000' and ' +5'), within ``minimum``..``maximum``;
    otherwise BadQuery (400) saying so."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or \
            not minimum <= int(digits) <= maximum:
        raise BadQuery(f"{name} must be an integer from {minimum} to {maximum} "
                       f"(digits 0-9), not {text[:40]!r}")
    return int(digits)


# Elements of an identifier that steer the query rather than match.
_CONTROL = {0x00080052, 0x00080005, 0x00080056, 0x00080054, 0x00088000}


#: What a date, time or date-time matching value looks like (PS3.4
#: C.2.2.2.5 range matching; PS3.5 6.2 DA, TM, DT), said in a refusal.
_FORMATS = {
    "DA": "a date: use YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end may be left out)",
    "TM": "a time: use HHMMSS (or HH, HHMM, HHMMSS.FFFFFF), or a range HHMMSS-HHMMSS "
          "(either end may be left out)",
    "DT": "a date-time: use YYYYMMDDHHMMSS (or a leading part of it such as YYYYMMDD, "
          "with .FFFFFF and a +ZZXX offset), or a range of two joined by - "
          "(either end may be left out)",
}


def _not_a(keyword: str, vr: str, value: str) -> BadQuery:
    return BadQuery(f"{keyword}: {value[:80]!r} is not {_FORMATS[vr]}")


def _range(keyword: str, vr: str, value: str) -> Range:
    low_text, _, high_text = value.partition("-")
    try:
        if vr == "DA":
            low = norm_date(low_text) if low_text.strip() else None
            high = norm_date(high_text) if high_text.strip() else None
        elif vr == "TM":
            low = norm_time(low_text) if low_text.strip() else None
            high = norm_time(high_text, high=True) if high_text.strip() else None
        else:
            low = norm_datetime(low_text) if low_text.strip() else None
            high = norm_datetime(high_text, high=True) if high_text.strip() else None
    except ValueError:
        raise _not_a(keyword, vr, value) from None
    if low is None and high is None:
        raise _not_a(keyword, vr, value)
    if low is not None and high is not None and low > high:
        raise BadQuery(f"{keyword}: range {value!r} ends before it starts")
    return Range(keyword, low, high)


def constraint_for(keyword: str, vr: str, value: str, fuzzy: bool = False) -> Constraint | None:
    """The constraint a non-empty value asks for, or None for universal
    matching (empty value, or ``*`` alone)."""
    value = value.strip()
    if value == "" or value == "*":
        return None
    if vr == "UI":
        uids = tuple(u.strip() for u in value.split("\\") if u.strip())
        if len(uids) > MAX_UIDS:
            raise BadQuery(f"{keyword}: a list of {len(uids)} UIDs; at most {MAX_UIDS} "
                           "are taken in one query")
        bad = [u for u in uids if not valid_uid(u)]
        if bad:
            raise BadQuery(f"{keyword}: {bad[0]!r} is not a valid UID")
        return ListOfUID(keyword, uids) if len(uids) > 1 else SingleValue(keyword, uids[0])
    if vr in ("DA", "TM", "DT"):
        if "-" in value:
            return _range(keyword, vr, value)
        try:
            if vr == "DA":
                return SingleValue(keyword, norm_date(value))
            if vr == "TM":
                return Range(keyword, norm_time(value), norm_time(value, high=True))
            return Range(keyword, norm_datetime(value), norm_datetime(value, high=True))
        except ValueError:
            raise _not_a(keyword, vr, value) from None
    if vr == "PN" and fuzzy:
        return Fuzzy(keyword, value)
    if "*" in value or "?" in value:
        return Wildcard(keyword, value)
    return SingleValue(keyword, value)


def _vr_of(tag: int, keyword: str) -> str:
    extra = extra_tags.by_name(keyword)
    if extra is not None:
        return extra.vr
    if keyword in COMPUTED:
        return COMPUTED[keyword][1]
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def query_from_identifier(identifier: Dataset) -> Query:
    """A C-FIND identifier → Query.  Every element is a return key; those
    with a value also match."""
    if "QueryRetrieveLevel" not in identifier:
        raise BadQuery("the identifier has no Query/Retrieve Level (0008,0052)")
    try:
        level = Level.parse(str(identifier.QueryRetrieveLevel))
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    query = Query(level)
    for elem in identifier:
        tag = int(elem.tag)
        if elem.tag.is_private:
            _private_key(identifier, elem, query)
            continue
        if tag in _CONTROL or elem.tag.group == 0x0000:
            continue
        keyword = elem.keyword or ""
        query.return_keys.append(ReturnKey(tag, keyword))
        if not keyword:
            continue
        if elem.VR == "SQ":
            items = list(elem.value or [])
            if items and len(items[0]):
                sub = []
                for item_elem in items[0]:
                    c = constraint_for(item_elem.keyword, item_elem.VR,
                                       text_value(item_elem.value))
                    if c is not None:
                        sub.append(c)
                if sub:
                    query.constraints.append(Sequence(keyword, tuple(sub)))
            continue
        c = constraint_for(keyword, elem.VR if elem.VR != "UN" else _vr_of(tag, keyword),
                           text_value(elem.value))
        if c is not None and (keyword in BY_KEYWORD or keyword in COMPUTED
                              or extra_tags.by_name(keyword) is not None):
            query.constraints.append(c)
        # Other optional keys: matching not supported, returned (PS3.4 C.2.2.1.3).
    return query


def _private_key(identifier: Dataset, elem: DataElement, query: Query) -> None:
    """A private element of a C-FIND identifier is a key when it is an extra
    query tag: found by its block's creator (PS3.5 7.8.1), whatever the block."""
    group, element = elem.tag.group, elem.tag.element
    if element < 0x1000 or not extra_tags.active():
        return
    creator = identifier.get((group << 16) | (element >> 8))
    if creator is None:
        return
    name = creator.value.decode("latin-1") if isinstance(creator.value, bytes) \
        else str(creator.value)
    name = name.strip(" \x00")
    extra = extra_tags.by_key(f"{group:04X}xx{element & 0xFF:02X}:{name}")
    if extra is None:
        return
    query.return_keys.append(ReturnKey(extra.tag, extra.name))
    value = elem.value
    text = value.decode("latin-1").strip(" \x00") if isinstance(value, bytes) \
        else text_value(value)
    c = constraint_for(extra.name, extra.vr, text)
    if c is not None:
        query.constraints.append(c)


#: PS3.18 Table 6.7.1-2: attributes returned by default per level (plus the
#: higher levels' for /series and /instances searched from the top).
QIDO_DEFAULTS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "StudyInstanceUID",
                  "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                  "PatientBirthDate", "PatientSex", "StudyDescription"),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                   "PerformedProcedureStepStartTime", "SeriesDate", "SeriesTime",
                   "BodyPartExamined"),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                  "BitsAllocated", "NumberOfFrames"),
}


def search_params(params: Iterable[tuple[str, str]], query: Query) -> tuple[bool, list[str],
                                                                            list[tuple[str, str]]]:
    """The parameters every DICOMweb search shares (PS3.18 8.3.4):
    ``limit``/``offset`` go into ``query``; returns (fuzzymatching,
    includefield values, the remaining attribute=value pairs)."""
    fuzzy = False
    includes: list[str] = []
    matches: list[tuple[str, str]] = []
    for name, value in params:
        if name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadQuery(f"fuzzymatching must be true or false, not {value!r}")
            fuzzy = value.lower() == "true"
        elif name == "includefield":
            includes.extend(v.strip() for v in value.split(",") if v.strip())
        elif name in ("accept", "charset"):
            continue  # content negotiation (PS3.18 8.3.3), not matching
        elif name in ("limit", "offset"):
            number = integer_param(name, value)
            if name == "limit":
                query.limit = number
            else:
                query.offset = number
        else:
            matches.append((name, value))
    if len(matches) > MAX_MATCH_KEYS:
        raise BadQuery(f"the query has {len(matches)} matching parameters; at most "
                       f"{MAX_MATCH_KEYS} are taken (a list of UIDs is one parameter: "
                       "a,b,c)")
    return fuzzy, includes, matches


def match_constraints(matches: Iterable[tuple[str, str]], fuzzy: bool,
                      searchable: Callable[[str], bool], add_return: Callable[[int, str], None],
                      what: str = "") -> list[Constraint]:
    """``Attribute=value`` and ``Sequence.Attribute=value`` pairs → constraints.
    Item constraints on one sequence must hold in one item (C.2.2.2.6); a UID
    list may be comma separated (PS3.18 8.3.4.1: a comma is never in a UID).
    ``searchable(keyword)`` says whether an attribute may be matched on."""
    constraints: list[Constraint] = []
    items: dict[str, list[Constraint]] = {}
    for name, value in matches:
        if "." in name:
            seq_name, _, item_name = name.partition(".")
            seq_tag, seq_kw = resolve_attribute(seq_name)
            item_tag, item_kw = resolve_attribute(item_name)
            if _vr_of(seq_tag, seq_kw) != "SQ":
                raise BadQuery(f"{seq_kw} is not a sequence")
            item_vr = _vr_of(item_tag, item_kw)
            if item_vr == "SQ":
                raise BadQuery(f"{name}: nested sequence matching is not supported")
            add_return(seq_tag, seq_kw)
            c = constraint_for(item_kw, item_vr,
                               value.replace(",", "\\") if item_vr == "UI" else value, fuzzy)
            if c is not None:
                items.setdefault(seq_kw, []).append(c)
            continue
        tag, keyword = resolve_attribute(name)
        add_return(tag, keyword)
        vr = _vr_of(tag, keyword)
        if vr == "SQ":
            if value.strip():
                raise BadQuery(f"{keyword} is a sequence: match on its items "
                               f"({keyword}.<Attribute>=...)")
            continue
        c = constraint_for(keyword, vr, value.replace(",", "\\") if vr == "UI" else value,
                           fuzzy)
        if c is None:
            continue
        if not searchable(keyword):
            raise BadQuery(f"matching on {keyword} is not supported{what} "
                           "(see docs/CONFORMANCE.md for the searchable attributes)")
        constraints.append(c)
    constraints.extend(Sequence(kw, tuple(cs)) for kw, cs in items.items())
    return constraints


def query_from_qido(level: Level, params: Iterable[tuple[str, str]], *,
                    scope: dict[str, str] | None = None, max_limit: int = 1000) -> Query:
    """QIDO-RS query parameters → Query.  ``scope`` holds the UIDs from the
    URL path (e.g. ``/studies/{StudyInstanceUID}/series``)."""
    defaults = [kw for lvl in (Level.STUDY, Level.SERIES, Level.IMAGE)
                if lvl <= level and (lvl == level or scope is None or _scope_level(scope) < lvl)
                for kw in QIDO_DEFAULTS[lvl]]
    return search_query(level, params, defaults=defaults,
                        searchable=lambda kw: kw in BY_KEYWORD or kw in COMPUTED
                        or extra_tags.by_name(kw) is not None,
                        max_limit=max_limit,
                        fixed=[SingleValue(key, uid) for key, uid in (scope or {}).items()])


def search_query(level: Level, params: Iterable[tuple[str, str]], *,
                 defaults: Iterable[str], searchable: Callable[[str], bool], max_limit: int,
                 fixed: Iterable[Constraint] = (), not_matchable: Mapping[int, str] | None = None,
                 what: str = "") -> Query:
    """The search every DICOMweb service shares (QIDO-RS, UPS-RS; PS3.18
    8.3.4): the ``defaults`` and ``includefield`` attributes are returned
    (an attribute path returns its sequence), ``attribute=value`` pairs
    become constraints after the ``fixed`` ones, ``limit`` is capped at
    ``max_limit`` (0: no cap).  ``searchable(keyword)`` says whether an
    attribute may be matched on; ``not_matchable`` names tags that may not
    even be named as a match key, with the reason."""
    query = Query(level)
    fuzzy, includes, matches = search_params(params, query)
    seen: set[int] = set()

    def add_return(tag: int, keyword: str) -> None:
        if tag not in seen:
            seen.add(tag)
            query.return_keys.append(ReturnKey(tag, keyword))

    for keyword in defaults:
        add_return(resolve_key(keyword)[0], keyword)
    for field in includes:
        if field == "all":
            query.include_all = True
            continue
        add_return(*resolve_attribute(field.split(".")[0]))
    if not_matchable:
        for name, _value in matches:
            tag = resolve_attribute(name.split(".")[0])[0]
            if tag in not_matchable:
                raise BadQuery(not_matchable[tag])
    query.constraints = [*fixed, *match_constraints(matches, fuzzy, searchable, add_return,
                                                    what=what)]
    if max_limit and (query.limit is None or query.limit > max_limit):
        query.limit = max_limit
    return query


def _scope_level(scope: dict[str, str]) -> Level:
    if "SeriesInstanceUID" in scope:
        return Level.SERIES
    if "StudyInstanceUID" in scope:
        return Level.STUDY
    return Level.PATIENT


def resolve_attribute(name: str) -> tuple[int, str]:
    """Keyword or tag → (tag, keyword); BadQuery for unknown or private ones."""
    try:
        tag, keyword = resolve_key(name)
    except UnknownAttribute as exc:
        raise BadQuery(str(exc)) from None
    if not keyword:
        extra = extra_tags.by_name(f"{tag:08X}")
        if extra is not None:
            return tag, extra.name
        raise BadQuery(f"{name}: private attributes cannot be searched (unless declared "
                       "in extra_query_tags)")
    return tag, keyword

"""Running a Query: SQL for matching and paging, batched aggregate queries for
the computed attributes, and each match's return keys gathered once
(``MatchFields``, empty but present when there is no value), then rendered
as a pydicom Dataset, as DICOM JSON (QIDO-RS), or by ``dimse.messages`` as
an encoded C-FIND identifier."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, Connection, Label, Row, Select, bindparam, func, select

from ..dicom import extra_tags
from ..dicom.catalogue import ATTRIBUTES, BY_KEYWORD, COMPUTED, UNIQUE, Attribute, Level
from ..dicom.values import person_name_json, stored_to_dicom
from ..index.db import Database
from ..index.extra_tables import extra_attrs
from ..index.schema import LEVEL_TABLES, instances, series, studies
from .model import Query
from .sql import base_select, compile_query

__all__ = ["QueryEngine", "Match", "MatchFields"]

_LEVEL_UID = {Level.PATIENT: None, Level.STUDY: "StudyInstanceUID",
              Level.SERIES: "SeriesInstanceUID", Level.IMAGE: "SOPInstanceUID"}


class Match(Dataset):
    """A result data set that also remembers its row id and level."""

    row_id: int = 0


#: One return key of a match: (tag, VR, value, header JSON entry or None).
#: The value is what ``stored_to_dicom`` gives (None, a string, a list of
#: strings, an int); with a header entry it is None and the entry says it.
Field = tuple[int, str, Any, Any]


@dataclass(eq=False)
class MatchFields:
    """What one match says, gathered once for every rendering."""

    row_id: int
    fields: list[Field]
    #: The representative instance's header JSON, when it was loaded.
    header: dict[str, Any] | None
    #: The whole header belongs in the answer (includefield=all at IMAGE level).
    include_header: bool
    #: Some value is not ASCII (the answer says ISO_IR 192).
    non_ascii: bool
    #: Each field's tag as a DICOM JSON key, when ``fields`` are in tag
    #: order (as the engine makes them).
    keys: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        """Every value came from an index column (none from header JSON)."""
        return not self.include_header and all(entry is None for *_, entry in self.fields)

    def dataset(self) -> Dataset:
        ds = Match()
        ds.row_id = self.row_id
        if self.include_header and self.header:
            ds.update(Dataset.from_json({k: v for k, v in self.header.items()
                                         if "BulkDataURI" not in v and "InlineBinary" not in v}))
        for tag, vr, value, entry in self.fields:
            if entry is not None:
                try:
                    ds[tag] = Dataset.from_json({f"{tag:08X}": entry})[tag]
                except Exception:
                    pass
                continue
            if vr == "SQ":
                value = [] if value is None else value
            ds.add_new(tag, vr, value)
        if self.non_ascii:
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds

    def json(self) -> dict[str, Any]:
        """``dataset().to_json_dict()`` without the Dataset."""
        if self.keys and not self.non_ascii and not (self.include_header and self.header):
            # Already in tag order, nothing to add: no sorting, no formatting.
            return {key: _json_element(vr, value) if entry is None else _entry(vr, entry)
                    for key, (_tag, vr, value, entry) in zip(self.keys, self.fields)}
        out: dict[int, dict[str, Any]] = {}
        if self.include_header and self.header:
            out.update((int(k, 16), v) for k, v in self.header.items()
                       if "BulkDataURI" not in v and "InlineBinary" not in v)
        for tag, vr, value, entry in self.fields:
            if entry is not None:
                out[tag] = _entry(vr, entry)
            else:
                out[tag] = _json_element(vr, value)
        if self.non_ascii:
            out[0x00080005] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        return {f"{tag:08X}": out[tag] for tag in sorted(out)}


def _columns(level: Level, wanted: list[tuple[int, str]]) -> list[Label[Any]]:
    """The index columns of the return keys ``wanted`` at ``level``, labelled
    with their keywords."""
    cols: list[Label[Any]] = []
    seen: set[str] = set()
    for _tag, kw in wanted:
        attr = BY_KEYWORD.get(kw)
        if attr is not None and attr.level <= level and kw not in seen:
            seen.add(kw)
            cols.append(_label(attr.level, attr.column, kw))
    return cols


@lru_cache(maxsize=None)
def _label(level: Level, column: str, keyword: str) -> Label[Any]:
    return LEVEL_TABLES[level].c[column].label(keyword)


def _in_ids(column: ColumnElement[Any]) -> ColumnElement[bool]:
    return column.in_(bindparam("ids", expanding=True))


def _count_by(owner: ColumnElement[Any], counted: ColumnElement[Any] | None = None,
              join: tuple[Any, ...] | None = None) -> Select[Any]:
    stmt = select(owner, func.count() if counted is None else func.count(counted))
    if join is not None:
        stmt = stmt.join(*join)
    return stmt.where(_in_ids(owner)).group_by(owner)


#: The batched statements behind the computed attributes, by query level
#: and keyword: (statement over the page's ``ids``, whether its rows are
#: (owner, value) pairs to gather into lists rather than (owner, count)).
#: Built once: building them for every page cost SQLAlchemy more than
#: SQLite took to run them (the labels below are cached for the same reason).
_COMPUTED_STATEMENTS: dict[Level, dict[str, tuple[Select[Any], bool]]] = {
    Level.PATIENT: {
        "NumberOfPatientRelatedStudies": (_count_by(studies.c.patient_fk), False),
        "NumberOfPatientRelatedSeries": (_count_by(
            studies.c.patient_fk, series.c.id, (series, series.c.study_fk == studies.c.id)),
            False),
        "NumberOfPatientRelatedInstances": (_count_by(
            studies.c.patient_fk, instances.c.id,
            (instances, instances.c.study_fk == studies.c.id)), False),
    },
    Level.STUDY: {
        "NumberOfStudyRelatedSeries": (_count_by(series.c.study_fk), False),
        "NumberOfStudyRelatedInstances": (_count_by(instances.c.study_fk), False),
        "ModalitiesInStudy": (
            select(series.c.study_fk, series.c.modality).distinct()
            .where(_in_ids(series.c.study_fk)).order_by(series.c.study_fk, series.c.modality),
            True),
        "SOPClassesInStudy": (
            select(instances.c.study_fk, instances.c.sopclassuid).distinct()
            .where(_in_ids(instances.c.study_fk)), True),
    },
    Level.SERIES: {
        "NumberOfSeriesRelatedInstances": (_count_by(instances.c.series_fk), False),
    },
}

#: The first stored instance of each study or series, whose header JSON
#: answers for attributes that are not index columns.
_REPRESENTATIVE = {
    level: select(fk, func.min(instances.c.id)).where(_in_ids(fk)).group_by(fk)
    for level, fk in ((Level.STUDY, instances.c.study_fk),
                      (Level.SERIES, instances.c.series_fk))
}
_HEADER_JSON = select(instances.c.id, instances.c.meta_json).where(_in_ids(instances.c.id))


class QueryEngine:
    def __init__(self, db: Database) -> None:
        self.db = db

    def search(self, query: Query) -> list[Dataset]:
        return list(self.iter(query))

    def count(self, query: Query) -> int:
        level_table = LEVEL_TABLES[query.level]
        stmt = compile_query(query, func.count(level_table.c.id))
        with self.db.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def iter(self, query: Query, batch: int = 500) -> Iterator[Dataset]:
        """Matches as Datasets, in a stable order."""
        for match in self.matches(query, batch):
            yield match.dataset()

    def search_json(self, query: Query) -> list[dict[str, Any]]:
        """The matches as DICOM JSON (PS3.18 F.2), equal to each ``iter``
        match's ``to_json_dict()`` — built straight from the rows, not
        through pydicom Datasets (which cost more than the query)."""
        return [match.json() for match in self.matches(query)]

    def matches(self, query: Query, batch: int = 500) -> Iterator[MatchFields]:
        """Each match's fields in a stable order, ``batch`` rows per SQL
        round trip."""
        wanted, cols, plan, keys = self._shape(query)
        for row, extras in self._rows(query, wanted, cols, batch):
            yield self._fields(query, plan, keys, row, extras)

    def _rows(self, query: Query, wanted: list[tuple[int, str]], cols: list[Label[Any]],
              batch: int = 500) -> Iterator[tuple[Row[Any], _Extras]]:
        """(row, the page's extras) for each match, ``batch`` rows per SQL
        round trip; the row is the level's id, then ``cols``."""
        level_table = LEVEL_TABLES[query.level]
        wanted_keywords = {kw for _t, kw in wanted}
        stmt = compile_query(query, level_table.c.id, *cols).order_by(*self._order(query))
        offset = query.offset
        remaining = query.limit
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            with self.db.read() as conn:
                rows = conn.execute(stmt.limit(size).offset(offset)).all()
                if not rows:
                    return
                extras = self._extras(conn, query, wanted_keywords, [r[0] for r in rows],
                                      rows)
            for row in rows:
                yield row, extras
            if len(rows) < size:
                return
            offset += len(rows)
            if remaining is not None:
                remaining -= len(rows)

    # -- building blocks

    @classmethod
    def _shape(cls, query: Query) -> _Shape:
        """What the query returns and how (``_wanted``, ``_columns``,
        ``_plan``, the JSON keys), the same for every query that asks for
        the same keys at the same level, and kept for them: worked out
        afresh it was ~25 µs of a ~0.35 ms C-FIND or QIDO-RS of the index
        (at 1k studies)."""
        key = (query.level, query.include_all,
               tuple((rk.tag, rk.keyword) for rk in query.return_keys), extra_tags.active())
        shape = _SHAPES.get(key)
        if shape is None:
            wanted = cls._wanted(query)
            cols = _columns(query.level, wanted)
            plan = _plan(query.level, wanted, cols)
            shape = (wanted, cols, plan, tuple(k.hex for k in plan))
            if len(_SHAPES) >= _SHAPES_MAX:
                _SHAPES.clear()
            _SHAPES[key] = shape
        return shape

    @staticmethod
    def _order(query: Query) -> list[ColumnElement[Any]]:
        table = LEVEL_TABLES[query.level]
        if query.level == Level.IMAGE:
            # Instances of a series in InstanceNumber order (DESIGN §4).
            return [table.c.series_fk, table.c.instancenumber.is_(None),
                    table.c.instancenumber, table.c.id]
        return [table.c.id]

    @staticmethod
    def _wanted(query: Query) -> list[tuple[int, str]]:
        keys = [(rk.tag, rk.keyword) for rk in query.return_keys]
        if query.include_all:
            have = {t for t, _ in keys}
            for attr in ATTRIBUTES:
                if attr.level <= query.level and attr.tag not in have:
                    keys.append((attr.tag, attr.keyword))
            for kw, (lvl, _vr) in COMPUTED.items():
                if lvl == query.level:
                    tag = int(Tag(kw))
                    if tag not in have:
                        keys.append((tag, kw))
        # The unique keys of the query level and above are always returned.
        uniques = [(a.tag, a.keyword) for a in ATTRIBUTES
                   if a.unique and a.level <= query.level and a.level != Level.PATIENT]
        have = {t for t, _ in keys}
        keys.extend(u for u in uniques if u[0] not in have)
        return keys

    def _extras(self, conn: Connection, query: Query, wanted: set[str],
                ids: list[int], rows: Sequence[Row[Any]] = ()) -> _Extras:
        """Computed attributes and header JSON of representative instances,
        one batched query each for the page's ids."""
        out: _Extras = {}
        lvl = query.level
        params = {"ids": ids}
        for kw, (stmt, as_list) in _COMPUTED_STATEMENTS.get(lvl, {}).items():
            if kw not in wanted:
                continue
            if not as_list:
                out[kw] = {int(k): v for k, v in conn.execute(stmt, params).all()}
                continue
            values: dict[int, list[str]] = {}
            for owner, value in conn.execute(stmt, params).all():
                if value:
                    values.setdefault(int(owner), []).append(value)
            out[kw] = values
        extras = [t for t in (extra_tags.by_name(kw) for kw in wanted
                              if kw not in BY_KEYWORD) if t is not None]
        if extras:
            out[_EXTRA] = _extra_values(conn, lvl, extras, ids, rows)
        # Attributes not in the catalogue come from a representative
        # instance's header JSON (the first stored of the entity).
        need_json = query.include_all and lvl == Level.IMAGE or any(
            (kw not in BY_KEYWORD or BY_KEYWORD[kw].level > lvl) and kw not in COMPUTED
            and extra_tags.by_name(kw) is None for kw in wanted)
        if need_json and lvl != Level.PATIENT:
            if lvl == Level.IMAGE:
                rep = {i: i for i in ids}
            else:
                rep = {int(k): v for k, v in
                       conn.execute(_REPRESENTATIVE[lvl], params).all()}
            metas = {int(k): v for k, v in
                     conn.execute(_HEADER_JSON, {"ids": list(rep.values())}).all()}
            out["__json__"] = {owner: metas.get(inst) for owner, inst in rep.items()}
        return out

    def _fields(self, query: Query, plan: list[_Key], keys: tuple[str, ...], row: Row[Any],
                extras: _Extras) -> MatchFields:
        """What a match says, for every rendering: per return key (tag, VR,
        value, header JSON entry or None), and the representative instance's
        header JSON if it was loaded."""
        row_id = int(row[0])
        raw_json = extras.get("__json__", {}).get(row_id)
        header: dict[str, Any] | None = json.loads(raw_json) if raw_json else None
        fields: list[Field] = []
        non_ascii = False
        for key in plan:
            if key.attr is not None:
                value = stored_to_dicom(key.attr, row[key.position])
            elif key.computed:
                value = extras.get(key.keyword, {}).get(row_id)
                if value is None and key.zero:
                    value = 0
            elif key.constant is not None:
                value = key.constant
            elif key.extra:
                value = extras.get(_EXTRA, {}).get((key.keyword, row_id))
            elif header is not None and key.hex in header:
                entry = header[key.hex]
                fields.append((key.tag, entry.get("vr", "UN"), None, entry))
                continue
            else:
                value = None
            if isinstance(value, str):
                if not value.isascii():
                    non_ascii = True
            elif isinstance(value, list) and not all(str(v).isascii() for v in value):
                non_ascii = True
            fields.append((key.tag, key.vr, value, None))
        include_header = query.include_all and query.level == Level.IMAGE
        return MatchFields(row_id, fields, header, include_header, non_ascii, keys)


@dataclass(frozen=True)
class _Key:
    """How one return key of a query gets its value, worked out once per
    query rather than for every match, with the keys in tag order and
    their JSON names made once (``MatchFields.keys``)."""

    tag: int
    keyword: str
    vr: str
    #: The tag as a DICOM JSON key.
    hex: str
    #: An index column of the row (at ``position``), or else
    attr: Attribute | None = None
    position: int = 0
    #: a computed attribute from the page's extras (0 when it has none and
    #: counts), or else the header JSON's entry under ``hex``, or nothing.
    computed: bool = False
    zero: bool = False
    #: An extra query tag, its values from the page's ``extra_attrs`` rows;
    #: or a fixed value (the private creator element of a private one).
    extra: bool = False
    constant: str | None = None


_EXTRA = "__extra__"

#: (wanted keys, their columns, the plan, its JSON keys) of a query shape.
_Shape = tuple[list[tuple[int, str]], list[Label[Any]], list["_Key"], tuple[str, ...]]
#: Query shapes seen (QueryEngine._shape), at most _SHAPES_MAX: a client
#: asking for ever new sets of keys empties it rather than growing it.
_SHAPES: dict[tuple[Any, ...], _Shape] = {}
_SHAPES_MAX = 512

#: What ``_extras`` loads for a page, by what: a computed attribute's keyword
#: (values by row id), ``_EXTRA`` (values by (extra tag name, row id)) or
#: ``"__json__"`` (header JSON by row id); the keys differ by entry, hence Any.
_Extras = dict[str, dict[Any, Any]]


def _extra_values(conn: Connection, level: Level, tags: list[extra_tags.ExtraTag],
                  ids: list[int], rows: Sequence[Row[Any]] = ()
                  ) -> dict[tuple[str, int], list[Any]]:
    """(name, row id) → the values of each extra tag at or above ``level``
    for the page's rows: the owners' UIDs (from the page's rows, which hold
    the unique keys of their level and above, else by a query), then their
    values by the owner index (as one join, SQLite walked the table by key
    instead)."""
    out: dict[tuple[str, int], list[Any]] = {}
    for tag in tags:
        if tag.level > level:
            continue  # a lower level's tag: matched on, not returned
        unique = UNIQUE[tag.level]
        owners: dict[str, list[int]] = {}
        pairs: Sequence[Sequence[Any]]  # (row id, owner UID)
        if rows and unique.keyword in rows[0]._mapping:
            pairs = [(r[0], r._mapping[unique.keyword]) for r in rows]
        else:
            owner = LEVEL_TABLES[tag.level].c[unique.column]
            pairs = conn.execute(base_select(level, LEVEL_TABLES[level].c.id, owner)
                                 .where(LEVEL_TABLES[level].c.id.in_(ids))).all()
        for row_id, uid in pairs:
            owners.setdefault(uid, []).append(int(row_id))
        if not owners:
            continue
        found = conn.execute(select(extra_attrs.c.owner_uid, extra_attrs.c.value).where(
            extra_attrs.c.owner_uid.in_(list(owners)), extra_attrs.c.key == tag.key,
            extra_attrs.c.level == int(tag.level))).all()
        for uid, value in sorted(found, key=lambda r: r[1]):
            for row_id in owners[uid]:
                out.setdefault((tag.name, row_id), []).append(value)
    return out


def _plan(level: Level, wanted: list[tuple[int, str]], cols: list[Any]) -> list[_Key]:
    """The return keys ``wanted`` at ``level``, in tag order, for
    ``_fields``; column positions count from 1 (the row's id comes first),
    in the order of ``cols`` (``_columns`` of the same keys)."""
    positions = {c.key: n for n, c in enumerate(cols, start=1)}
    plan = []
    for tag, kw in wanted:
        attr = BY_KEYWORD.get(kw)
        if attr is not None and attr.level <= level:
            plan.append(_Key(tag, kw, attr.vr, f"{tag:08X}", attr=attr,
                             position=positions[kw]))
        elif kw in COMPUTED:
            if COMPUTED[kw][0] == level:
                plan.append(_Key(tag, kw, COMPUTED[kw][1], f"{tag:08X}", computed=True,
                                 zero=kw.startswith("Number")))
        elif (extra := extra_tags.by_name(kw)) is not None:
            plan.append(_Key(tag, kw, extra.vr, f"{tag:08X}", extra=True))
            creator_tag = (tag & 0xFFFF0000) | ((tag >> 8) & 0xFF)
            if extra.private and all(k.tag != creator_tag for k in plan):
                plan.append(_Key(creator_tag, "", "LO", f"{creator_tag:08X}",
                                 constant=extra.creator))
        else:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
            plan.append(_Key(tag, kw, vr, f"{tag:08X}"))
    plan.sort(key=lambda key: key.tag)
    return plan


def _entry(vr: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A header JSON entry as a query answers it: bulk data has no value
    there (pydicom's from_json leaves it empty without a handler)."""
    return entry if "BulkDataURI" not in entry else {"vr": vr}


#: VRs whose JSON values are numbers (pydicom's jsonrep).
_INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
_FLOAT_VRS = frozenset({"DS", "FD", "FL"})


def _json_element(vr: str, value: Any) -> dict[str, Any]:
    """One element of a match in DICOM JSON, as pydicom writes it for the
    value ``stored_to_dicom`` gives (a string, a list of them, an int)."""
    element: dict[str, Any] = {"vr": vr}
    if vr == "SQ":
        element["Value"] = []
        return element
    if value is None or value == "" or value == []:
        return element
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        element["Value"] = [person_name_json(str(name).split("=")) for name in values]
    elif vr in _INT_VRS:
        element["Value"] = [int(v) for v in values]
    elif vr in _FLOAT_VRS:
        element["Value"] = [float(v) for v in values]
    else:
        element["Value"] = list(values)
    return element

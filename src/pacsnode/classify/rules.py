"""Classification rules: the model, and the loader of data-transfer-station's
``classifyRules.json`` format (read as it is).

A rule file is a JSON list of entries::

    {"type": "T1", "id": "MYT1", "description": "…",
     "rules": [{"tag": ["0x0018", "0x0020"], "value": "GR"},
               {"tag": ["EchoTime"], "operator": "<", "value": "6"},
               {"rule": "SIEMENSBYMANUFACTURER"},
               {"tag": ["ImageType"], "operator": "contains", "value": "DERIVED",
                "negate": "yes"}]}

An entry matches when all its tests match; a series gets the entry's
``type`` as a class when the entry matches (several entries of one type are
alternatives).  An entry without a type is a helper, only used through
``{"rule": id}`` references.  The matching itself is in ``engine.py``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

__all__ = ["RuleError", "AttributeRef", "Test", "Reference", "Rule", "RuleSet",
           "OPERATORS", "FACT_NAMES", "ALIASES", "BUILTIN_PREFIX", "as_number", "as_numbers",
           "parse_rules",
           "load_rules", "merge_rules"]

log = logging.getLogger("pacsnode.classify")

#: The operators of data-transfer-station's format ("regexp" is the default),
#: plus its "!=", "exist" and "notexist".
OPERATORS = frozenset({"regexp", "contains", "==", "!=", "<", ">", "approx", "exist",
                       "notexist"})

#: Facts derived from the whole series (``facts.SeriesFacts.attributes``),
#: testable by these names in ``tag``.  The first three are the names
#: data-transfer-station's receiver gives the same facts.
FACT_NAMES = frozenset({"NumFiles", "NumSlices", "ClassifyType", "NumberOfInstances",
                        "NumberOfVolumes", "Orientation", "Orientations",
                        "NumberOfOrientations", "DiffusionBValues", "EchoTimes",
                        "NumberOfEchoes"})

#: Names data-transfer-station's receiver gives to vendor private elements,
#: so that its rule files work unchanged.
ALIASES: dict[str, str] = {
    "SequenceType": "20011020",        # Philips scan technique, e.g. "DwiSE", "FEEPI"
    "PulseSequenceName": "0019109C",   # GE pulse sequence, e.g. "efgre3d"
    "ActiveCoils": "0051100F",         # Siemens coil elements
    "AcquisitionLength": "0051100A",   # Siemens "TA 05:11"
    "Slices": "0021104F",              # GE locations in acquisition
}

#: References to the built-in rules as shipped, even when a rule file
#: replaces them: ``{"rule": "builtin:T1"}``.
BUILTIN_PREFIX = "builtin:"

_HEX_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class AttributeRef:
    """What a test looks at: a data element (``key``: its DICOM JSON key,
    e.g. "00180024"), or a fact of the series (``fact``), optionally one value
    of it (``index``).  ``name`` is how the rule wrote it.  An unknown name
    refers to nothing (the attribute is always absent)."""

    name: str
    key: str | None = None
    fact: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class Test:
    """One test of one attribute."""

    attribute: AttributeRef
    value: Any
    operator: str = "regexp"
    negate: bool = False
    approx_level: float = 1e-4
    value_ref: AttributeRef | None = None  # the value is another attribute's
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Reference:
    """``{"rule": id}``: matches when any entry with that id matches."""

    rule_id: str
    negate: bool = False


@dataclass(frozen=True)
class Rule:
    """One entry of a rule file."""

    type: str
    id: str
    description: str
    tests: tuple[Test | Reference, ...]
    source: str = "built-in"


@dataclass(frozen=True)
class RuleSet:
    """The rules in evaluation order, and what references resolve to."""

    rules: tuple[Rule, ...]
    builtins: tuple[Rule, ...] = ()
    #: ids under which other rules answer too (the replaced built-in class
    #: ids: the rules of a file that define that class)
    aliases: dict[str, tuple[Rule, ...]] = field(default_factory=dict, compare=False)
    _by_id: dict[str, tuple[Rule, ...]] = field(default_factory=dict, compare=False,
                                                 repr=False)

    def __post_init__(self) -> None:
        by_id: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.id:
                by_id.setdefault(rule.id, []).append(rule)
        for alias, rules in self.aliases.items():
            for rule in rules:
                if rule not in by_id.get(alias, []):
                    by_id.setdefault(alias, []).append(rule)
        for rule in self.builtins:
            if rule.id:
                by_id.setdefault(BUILTIN_PREFIX + rule.id, []).append(rule)
        self._by_id.update({k: tuple(v) for k, v in by_id.items()})
        _check_references(self)

    def with_id(self, rule_id: str) -> tuple[Rule, ...]:
        return self._by_id.get(rule_id, ())

    @property
    def classes(self) -> list[str]:
        """The class names these rules can give, in order, without repeats
        (case-insensitively)."""
        seen: dict[str, str] = {}
        for rule in self.rules:
            if rule.type:
                seen.setdefault(rule.type.casefold(), rule.type)
        return list(seen.values())


def _attribute(raw: Any, where: str) -> AttributeRef:
    """``["0x0018","0x0024"]``, ``["0x19","0x109c", "0"]`` (a value index),
    ``["Keyword"]``, ``["NumSlices"]``; a bare string is taken as a
    one-element list."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not 1 <= len(items) <= 3 or \
            not all(isinstance(i, (str, int)) for i in items):
        raise RuleError(f"{where}: 'tag' must be [\"0xgggg\", \"0xeeee\"] or [\"Keyword\"], "
                        f"not {raw!r}")
    name = ",".join(str(i) for i in items)
    if len(items) == 1:
        word = str(items[0]).strip()
        if word in FACT_NAMES:
            return AttributeRef(name, fact=word)
        if word in ALIASES:
            return AttributeRef(name, key=ALIASES[word])
        tag = tag_for_keyword(word)
        if tag is not None:
            return AttributeRef(name, key=f"{tag:08X}")
        m = _HEX_TAG.match(word)
        if m:
            return AttributeRef(name, key=(m.group(1) + m.group(2)).upper())
        log.warning("%s: %r is neither a DICOM keyword nor a fact of the series; "
                    "it is always absent", where, word)
        return AttributeRef(name)
    try:
        group, element = (int(str(i), 0) for i in items[:2])
        index = int(str(items[2]), 0) if len(items) == 3 else None
    except ValueError:
        raise RuleError(f"{where}: 'tag' {raw!r} is not a pair of numbers such as "
                        "[\"0x0018\", \"0x0024\"]") from None
    if not (0 <= group <= 0xFFFF and 0 <= element <= 0xFFFF):
        raise RuleError(f"{where}: 'tag' {raw!r} is out of range")
    return AttributeRef(name, key=f"{group:04X}{element:04X}", index=index)


def _is_attribute_list(value: Any) -> bool:
    """A ``value`` that names an attribute, as data-transfer-station allows:
    a list of strings that is a tag or a known name (a list of numbers is a
    literal, e.g. for ``approx``)."""
    if not isinstance(value, list) or not 1 <= len(value) <= 3 or \
            not all(isinstance(v, str) for v in value):
        return False
    if len(value) == 1:
        word = value[0]
        return word in FACT_NAMES or word in ALIASES or tag_for_keyword(word) is not None
    return all(v.lower().startswith("0x") for v in value)


def _negate(raw: Mapping[str, Any]) -> bool:
    flag = raw.get("negate", "no")
    if isinstance(flag, bool):
        return flag
    return str(flag).strip().lower() in ("yes", "true", "1")


def _test(raw: Mapping[str, Any], where: str) -> Test | Reference:
    for word in ("rule", "notrule"):
        if word in raw:
            target = raw[word]
            if not isinstance(target, str) or not target:
                raise RuleError(f"{where}: '{word}' must name the id of another rule")
            return Reference(target, negate=_negate(raw) != (word == "notrule"))
    if "tag" not in raw:
        raise RuleError(f"{where}: a test needs 'tag' (or 'rule' to use another rule)")
    attribute = _attribute(raw["tag"], where)
    operator = str(raw.get("operator", "regexp")).strip()
    if operator == "regex":
        operator = "regexp"
    if operator not in OPERATORS:
        raise RuleError(f"{where}: unknown operator {operator!r}; use one of "
                        f"{', '.join(sorted(OPERATORS))}")
    value = raw.get("value", "")
    value_ref = _attribute(value, where) if _is_attribute_list(value) else None
    pattern = None
    if operator == "regexp" and value_ref is None:
        try:
            pattern = re.compile(str(value))
        except re.error as exc:
            raise RuleError(f"{where}: 'value' {value!r} is not a valid regular "
                            f"expression: {exc}") from None
    if operator in ("<", ">") and value_ref is None and as_number(value) is None:
        raise RuleError(f"{where}: operator {operator!r} needs a number as 'value', "
                        f"not {value!r}")
    if operator == "approx" and value_ref is None and not as_numbers(value):
        raise RuleError(f"{where}: operator 'approx' needs a number or a list of "
                        f"numbers as 'value', not {value!r}")
    try:
        level = float(raw.get("approxLevel", 1e-4))
    except (TypeError, ValueError):
        raise RuleError(f"{where}: 'approxLevel' must be a number") from None
    return Test(attribute, value, operator, _negate(raw), level, value_ref, pattern)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_numbers(value: Any) -> list[float]:
    """A number, a list of numbers, or a string of them separated by
    backslashes or commas."""
    if isinstance(value, str):
        value = [v for v in re.split(r"[\\,\s]+", value.strip(" []")) if v]
    items = value if isinstance(value, list) else [value]
    out = [as_number(v) for v in items]
    return [v for v in out if v is not None] if None not in out else []


def parse_rules(data: Any, source: str) -> tuple[Rule, ...]:
    """The entries of a rule file already parsed from JSON."""
    if not isinstance(data, list):
        raise RuleError(f"{source}: a rule file is a JSON list of entries "
                        "[{\"type\", \"id\", \"description\", \"rules\": [...]}, ...]")
    out = []
    for number, entry in enumerate(data, 1):
        where = f"{source}: entry {number}"
        if not isinstance(entry, dict):
            raise RuleError(f"{where}: must be an object with 'type' and 'rules'")
        rule_id = str(entry.get("id") or "")
        kind = str(entry.get("type") or "")
        if rule_id:
            where += f" (id {rule_id!r})"
        elif kind:
            where += f" (type {kind!r})"
        tests = entry.get("rules")
        if not isinstance(tests, list):
            raise RuleError(f"{where}: 'rules' must be a list of tests")
        if not kind and not rule_id:
            raise RuleError(f"{where}: give a 'type' (the class it assigns) or an 'id' "
                            "(to use it from other rules)")
        parsed = []
        for index, raw in enumerate(tests, 1):
            if not isinstance(raw, dict):
                raise RuleError(f"{where}, test {index}: must be an object")
            parsed.append(_test(raw, f"{where}, test {index}"))
        out.append(Rule(kind, rule_id, str(entry.get("description") or ""), tuple(parsed),
                        source))
    return tuple(out)


def _check_references(rules: RuleSet) -> None:
    """Every reference names an existing id, and no rule depends on itself."""
    def targets(rule: Rule) -> Iterable[str]:
        return (t.rule_id for t in rule.tests if isinstance(t, Reference))

    for rule in (*rules.rules, *rules.builtins):
        for target in targets(rule):
            if not rules.with_id(target):
                raise RuleError(f"{rule.source}: rule {rule.id or rule.type!r} refers to "
                                f"rule id {target!r}, which no rule has")
    # Depth-first search over ids; an id on the current path again is a cycle.
    done: set[str] = set()

    def visit(rule_id: str, path: list[str]) -> None:
        if rule_id in path:
            cycle = " -> ".join([*path[path.index(rule_id):], rule_id])
            source = rules.with_id(rule_id)[0].source
            raise RuleError(f"{source}: rules refer to each other in a cycle: {cycle}")
        if rule_id in done:
            return
        for rule in rules.with_id(rule_id):
            for target in targets(rule):
                visit(target, [*path, rule_id])
        done.add(rule_id)

    for rule in (*rules.rules, *rules.builtins):
        for target in targets(rule):
            visit(target, [rule.id or f"(type {rule.type})"])


def merge_rules(builtins: Sequence[Rule], user: Sequence[Rule]) -> RuleSet:
    """User rules add to and override the built-in ones: a built-in rule is
    left out when a user rule has its id, or a type equal
    (case-insensitively) to the built-in's id or type.  Built-in rules come
    first, then the user's, in file order.  The built-ins stay reachable as
    ``builtin:<id>``."""
    ids = {r.id for r in user if r.id}
    types = {r.type.casefold() for r in user if r.type}
    kept = [r for r in builtins
            if r.id not in ids and r.type.casefold() not in types
            and r.id.casefold() not in types]
    # A class the file defines keeps answering to the built-in id, so that
    # built-in rules that refer to it ("not a localizer") use the file's.
    aliases = {}
    for gone in {r.id for r in builtins if r.type and r not in kept and r.id not in ids}:
        aliases[gone] = tuple(r for r in user if r.type.casefold() == gone.casefold())
    return RuleSet(tuple([*kept, *user]), tuple(builtins),
                   {k: v for k, v in aliases.items() if v})


def load_rules(path: str | Path | None = None, *, builtins: bool = True) -> RuleSet:
    """The built-in rules merged with those of the file at ``path`` (a list
    in data-transfer-station's ``classifyRules.json`` format).  Raises
    ``RuleError`` with a plain message for a file that cannot be used."""
    from .builtin import BUILTIN_RULES

    base = parse_rules(BUILTIN_RULES, "built-in rules") if builtins else ()
    if not path:
        return RuleSet(base, base)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(f"{source}: cannot read the rule file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{source}: the rule file is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}") from None
    return merge_rules(base, parse_rules(data, source))

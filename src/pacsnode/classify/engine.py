"""Evaluating rules against one series: its representative header (DICOM
JSON, as the index stores it) and its facts.

How values are compared (an attribute may have several values, such as
ImageType ``ORIGINAL\\PRIMARY\\M\\ND`` or ScanningSequence ``SE\\IR``):

* ``regexp`` (the default): the pattern is searched (``re.search``) in the
  values joined with a backslash, as DICOM writes them (``"SE\\\\IR"``), and
  in the values joined with ", " (how data-transfer-station wrote them,
  e.g. AcquisitionMatrix ``"0, 256, 256, 0"``).  ``"^SE$"`` therefore means
  exactly the one value SE; ``"(^|\\\\\\\\)IR(\\\\\\\\|$)"`` means IR among the
  values.  Numbers are written as DICOM does (2300, 2.98).
* ``contains``: the text is part of any one value (``"MOSAIC"`` in ImageType,
  ``"HEA;HEP"`` in a coil string).
* ``==``, ``!=``, ``<``, ``>``: compare numbers; true when any value
  compares so (``"DiffusionBValues" > 0``: some b-value is above 0).
  ``==``/``!=`` with a value that is not a number compare text exactly.
* ``approx``: numbers within ``approxLevel`` (default 0.0001): a list value
  is compared element by element with the attribute's values; a single
  number with any value.
* ``exist`` / ``notexist``: the attribute is present (even empty) or not.

A test of an absent attribute is false (whatever the operator, except
``notexist``); ``negate: "yes"`` turns the result around, so a negated test
of an absent attribute is true.  ``{"rule": id}`` is true when any entry
with that id matches (``negate`` applies to the whole reference).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .facts import FactsBuilder, SeriesFacts, element_values
from .rules import AttributeRef, Reference, Rule, RuleSet, Test, as_number, as_numbers

__all__ = ["classify_series", "classify_headers", "class_matches", "format_value"]


def format_value(value: Any) -> str:
    """A value as DICOM text: 2300.0 → "2300", 2.98 → "2.98"."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


class _Series:
    """One evaluation: the series' attributes and the memo of rule results."""

    def __init__(self, header: Mapping[str, Any], facts: SeriesFacts | None,
                 rules: RuleSet) -> None:
        self.header = header
        self.facts = (facts or SeriesFacts()).attributes()
        self.rules = rules
        self.classes: list[str] = []
        self.memo: dict[str, bool] = {}

    def values(self, ref: AttributeRef) -> list[Any] | None:
        if ref.fact == "ClassifyType":
            found: list[Any] | None = list(self.classes)
        elif ref.fact is not None:
            found = self.facts.get(ref.fact)
        elif ref.key is not None:
            found = element_values(self.header, ref.key)
        else:
            return None
        if found is not None and ref.index is not None:
            return [found[ref.index]] if -len(found) <= ref.index < len(found) else None
        return found

    def rule_matches(self, rule: Rule) -> bool:
        return all(self.test(t) for t in rule.tests)

    def reference(self, ref: Reference) -> bool:
        if ref.rule_id not in self.memo:
            self.memo[ref.rule_id] = any(self.rule_matches(r)
                                         for r in self.rules.with_id(ref.rule_id))
        return self.memo[ref.rule_id] != ref.negate

    def test(self, test: Test | Reference) -> bool:
        if isinstance(test, Reference):
            return self.reference(test)
        values = self.values(test.attribute)
        if test.operator in ("exist", "notexist"):
            present = values is not None
            return (present == (test.operator == "exist")) != test.negate
        if values is None:
            return test.negate
        expected: Any = test.value
        if test.value_ref is not None:
            other = self.values(test.value_ref)
            if not other:
                return test.negate
            expected = other if test.operator == "approx" else other[0]
        return _compare(test, values, expected) != test.negate


def _compare(test: Test, values: list[Any], expected: Any) -> bool:
    op = test.operator
    if op == "regexp":
        pattern = test.pattern
        texts = [format_value(v) for v in values]
        if pattern is None:  # the pattern came from another attribute
            try:
                pattern = re.compile(format_value(expected))
            except re.error:
                return False
        return bool(pattern.search("\\".join(texts)) or pattern.search(", ".join(texts)))
    if op == "contains":
        needle = format_value(expected)
        return any(needle in format_value(v) for v in values)
    if op == "approx":
        wanted = as_numbers(expected)
        have = [n for n in (as_number(v) for v in values) if n is not None]
        if not wanted or len(have) != len(values):
            return False
        if len(wanted) == 1:
            return any(abs(h - wanted[0]) <= test.approx_level for h in have)
        return len(have) == len(wanted) and all(
            abs(h - w) <= test.approx_level for h, w in zip(have, wanted))
    number = as_number(expected)
    if op in ("==", "!="):
        if number is None:
            equal = any(format_value(v).strip() == str(expected).strip() for v in values)
        else:
            equal = any(as_number(v) == number for v in values)
        return equal if op == "==" else (bool(values) and not equal)
    if number is None:
        return False
    numbers = [n for n in (as_number(v) for v in values) if n is not None]
    if op == "<":
        return any(n < number for n in numbers)
    return any(n > number for n in numbers)  # ">"


def classify_series(header: Mapping[str, Any], facts: SeriesFacts | None,
                    rules: RuleSet) -> list[str]:
    """The classes of a series, in rule order, each once (names compared
    case-insensitively; the first spelling wins).  ``header`` is the DICOM
    JSON of a representative instance; ``facts`` those of the whole series
    (``facts.series_facts``).  Entries are evaluated in order, so a test of
    ``ClassifyType`` sees the classes given by the entries before it."""
    series = _Series(header, facts, rules)
    seen: set[str] = set()
    for rule in rules.rules:
        if not rule.type or rule.type.casefold() in seen:
            continue
        if series.rule_matches(rule):
            seen.add(rule.type.casefold())
            series.classes.append(rule.type)
            series.memo.clear()  # a referenced rule may test ClassifyType
    return series.classes


def classify_headers(headers: Iterable[Mapping[str, Any]], rules: RuleSet) -> list[str]:
    """The classes of the series whose instances have these headers (DICOM
    JSON, e.g. the index's stored headers), in one pass over them."""
    builder = FactsBuilder()
    for header in headers:
        builder.add(header)
    if builder.representative is None:
        return []
    return classify_series(builder.representative, builder.facts(), rules)


def class_matches(classes: list[str], wanted: str) -> bool:
    """``?class=`` and route ``match``: class names compare case-insensitively."""
    folded = wanted.casefold()
    return any(c.casefold() == folded for c in classes)

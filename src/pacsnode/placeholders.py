"""Command templates of the triggers and routes (``on_stable_study``,
``on_stable_series``, a route's ``run``): the placeholders they may use, and
how a template becomes an argument list without a shell."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

__all__ = ["PLACEHOLDERS", "build_command", "unknown_placeholders"]

#: Placeholders a command template may use (each inside any argument).
PLACEHOLDERS = ("study_uid", "series_uid", "path", "study_path", "patient_id", "calling_aet",
                "classes")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")


def build_command(template: str, values: Mapping[str, str]) -> list[str]:
    """Split ``template`` like a POSIX shell would (quotes, escapes), then
    replace ``{name}`` inside each argument.  Values are never re-split or
    re-scanned, so a patient ID such as ``$(rm -rf ~); `x``` stays one
    literal argument.  Unknown placeholders are left as written."""
    def one(arg: str) -> str:
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg)
    return [one(arg) for arg in shlex.split(template)]


def unknown_placeholders(template: str) -> list[str]:
    """The ``{names}`` of ``template`` that are not placeholders."""
    return sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(PLACEHOLDERS))

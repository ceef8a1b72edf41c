"""Index tables of a feature, defined on the shared `metadata` (placeholder)."""

from __future__ import annotations

from .schema import metadata  # noqa: F401  (tables are added to it here)

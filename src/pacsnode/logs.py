"""Logging of the node's processes: one format on standard error, for
``serve``, its DIMSE workers and the archive commands."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]

#: Libraries whose INFO lines would drown the node's own.
_QUIET = ("pynetdicom", "pylibjpeg", "openjpeg", "libjpeg", "uvicorn.access")


def setup_logging(level: str) -> None:
    """Log at ``level`` (a name: "INFO", "warning"…; unknown names mean INFO)
    to standard error, with the time, level and logger of each line."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)

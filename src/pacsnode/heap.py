"""The heap of a serving process, once it has started."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Take what startup made and the process keeps for good (modules,
    classes, functions, tables, the catalogue, settings) out of the
    garbage collector's generations (``gc.freeze``), after collecting
    what startup left behind.  Every full collection walked all of it
    again: with the modules a node imports, a third of the extra work a
    C-GET sub-operation did against b385fa7 (a callgrind count of the
    DIMSE thread) was the collector traversing them.  Objects made later
    are collected as usual."""
    gc.collect()
    gc.freeze()

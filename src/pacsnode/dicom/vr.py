"""Value Representations: the facts about them that the byte-level readers
and writers share (PS3.5 6.2, 7.1.2).  One table, so that a VR added by the
standard is added once."""

from __future__ import annotations

__all__ = ["VRS", "LONG_LENGTH_VRS", "SHORT_LENGTH_VRS", "LONG_LENGTH_CODES",
           "SHORT_LENGTH_CODES"]

#: Every VR of PS3.5 Table 6.2-1.
VRS: tuple[str, ...] = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
    "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
    "UL", "UN", "UR", "US", "UT", "UV")

#: VRs whose Explicit VR element header has 2 reserved bytes and a 4-byte
#: length (12 bytes in all; PS3.5 7.1.2, Table 7.1-1).
LONG_LENGTH_VRS: frozenset[str] = frozenset({
    "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})

#: VRs whose Explicit VR element header has a 2-byte length (8 bytes in all;
#: PS3.5 7.1.2, Table 7.1-2).
SHORT_LENGTH_VRS: frozenset[str] = frozenset(VRS) - LONG_LENGTH_VRS

#: The same sets as the two bytes a header holds.
LONG_LENGTH_CODES: frozenset[bytes] = frozenset(vr.encode() for vr in LONG_LENGTH_VRS)
SHORT_LENGTH_CODES: frozenset[bytes] = frozenset(vr.encode() for vr in SHORT_LENGTH_VRS)

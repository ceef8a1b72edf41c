"""One table of errors: each knows its DIMSE status, HTTP status and STOW-RS
failure reason (STYLE.md habit 4)."""

from __future__ import annotations

__all__ = ["PacsnodeError", "InvalidInstance", "InvalidUID", "NotDicom", "NotWhole",
           "ConflictingInstance", "DuplicateRefused", "StorageFailure", "BadQuery", "NotFound",
           "StudyMismatch"]


class PacsnodeError(Exception):
    #: DIMSE status for a C-STORE/C-FIND failure (PS3.4 B.2.3, C.4.1.1.4, PS3.7 C).
    dimse_status: int = 0xC000
    #: HTTP status.
    http_status: int = 400
    #: STOW-RS FailureReason (PS3.18 Table 10.5.3-1 / PS3.4 B.2.3).
    failure_reason: int = 0xC000

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInstance(PacsnodeError):
    """Not DICOM, or missing SOP Class/Instance or Study/Series UIDs.
    C-STORE 0xC000 "cannot understand"; STOW 0xC000 (PS3.4 B.2.3)."""

    dimse_status = 0xC000
    failure_reason = 0xC000


class NotDicom(InvalidInstance):
    """Bytes that do not read as DICOM at all.  The one place that says so:
    every ingest path (C-STORE, STOW-RS, import, check --repair) gives these
    words.  C-STORE 0xC000 "cannot understand"; STOW 0xC000 (PS3.4 B.2.3)."""

    #: A file (STOW-RS part, imported file) with neither a Part 10 header
    #: nor a data set that can be read.
    FILE = "not DICOM: no 'DICM' prefix and no readable data set"
    #: A data set (a C-STORE's, or after a Part 10 header) that does not
    #: start with a readable element.
    DATA_SET = "not DICOM: the data set does not start with a readable element"
    #: Nothing after the file meta (or an empty C-STORE data set).
    EMPTY = "not DICOM: the data set is empty"

    def __init__(self, reason: str = FILE, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)


class NotWhole(InvalidInstance):
    """A data set that ends inside an element, or whose declared lengths run
    past its end or its enclosing sequence (DESIGN.md §7): "truncated at
    byte N: …" or "malformed at byte N: …".  C-STORE 0xC000 "cannot
    understand" (PS3.4 B.2.3; the Error Comment names the byte); STOW
    FailureReason 0xC000 with the reason in the Warning header."""


class InvalidUID(InvalidInstance):
    """A UID that is not 1-64 characters of digits and dots (PS3.5 9.1)."""


class SOPMismatch(InvalidInstance):
    """Data set SOP Class/Instance differ from the command's (PS3.4 B.2.3:
    0xA900 "data set does not match SOP class")."""

    dimse_status = 0xA900
    failure_reason = 0xA900


class ConflictingInstance(PacsnodeError):
    """A SOP Instance UID already held under another study or series."""

    dimse_status = 0xA900
    http_status = 409
    failure_reason = 0xA900


class DuplicateRefused(PacsnodeError):
    """Same SOP Instance UID, different bytes, and the policy refuses
    replacement.  STOW FailureReason 45070 "already exists" (PS3.18 10.5)."""

    dimse_status = 0x0111  # PS3.7 C: Duplicate SOP Instance
    http_status = 409
    failure_reason = 45070


class StudyMismatch(PacsnodeError):
    """STOW-RS to /studies/{uid} with an instance of another study
    (PS3.18 10.5.3: FailureReason 43265)."""

    http_status = 409
    failure_reason = 43265


class StorageFailure(PacsnodeError):
    """Disk or database trouble: 0xA700 out of resources."""

    dimse_status = 0xA700
    http_status = 503
    failure_reason = 0xA700


class BadQuery(PacsnodeError):
    """A query we cannot parse (unknown attribute, bad date range, bad level).
    C-FIND 0xA900 "identifier does not match SOP class", or 0xC000."""

    dimse_status = 0xA900
    http_status = 400


class NotFound(PacsnodeError):
    dimse_status = 0xC000
    http_status = 404

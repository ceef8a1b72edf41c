"""A small push parser for ``multipart/related`` bodies (RFC 2387 / RFC 2046),
and the header helpers that go with it.

Why not python-multipart: its ``FormParser`` speaks ``multipart/form-data``
(it wants ``Content-Disposition`` names and spills file fields into temp files
of its own choosing), and its low-level ``MultipartParser`` is a callback
machine that still leaves header assembly, size limits and the RFC 2046
preamble/epilogue handling to the caller.  STOW-RS needs less and something
else: each part's bytes must go straight into a temp file of the blob store
(same filesystem as the archive, so ingest is a rename), a cap on header
size, and an exact count of body bytes.  This parser is fed whatever chunks
the ASGI server hands over and returns events; it never holds more than one
chunk plus a boundary's length of a part body in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["MultipartError", "PartStart", "PartData", "PartEnd", "MultipartParser",
           "parse_content_type", "new_boundary"]

#: Largest header block of one part.
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


@dataclass
class PartStart:
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass
class PartData:
    data: bytes


@dataclass
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _DONE = range(5)


class MultipartParser:
    """``feed(chunk)`` returns the events the chunk completes; ``close()``
    checks that the closing delimiter was seen."""

    def __init__(self, boundary: str | bytes) -> None:
        if isinstance(boundary, str):
            boundary = boundary.encode("latin-1")
        if not boundary or len(boundary) > 200:
            raise MultipartError("the multipart boundary is empty or too long")
        self._dash = b"--" + boundary
        self._delim = b"\r\n" + self._dash  # a delimiter inside the body
        self._buf = bytearray()
        self._state = _PREAMBLE
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, chunk: bytes) -> list[Event]:
        if self._state == _DONE:
            return []  # epilogue: ignored (RFC 2046 5.1.1)
        self._buf += chunk
        events: list[Event] = []
        while True:
            if self._state == _PREAMBLE:
                if not self._find_first_delimiter():
                    break
            elif self._state == _AFTER_DELIM:
                # After "--boundary": "--" closes, otherwise optional
                # whitespace (transport padding) then CRLF opens a part.
                if len(self._buf) < 2:
                    break
                if self._buf[:2] == b"--":
                    self._state = _DONE
                    self._buf.clear()
                    break
                eol = self._buf.find(b"\r\n")
                if eol == -1:
                    if len(self._buf) > 1024:
                        raise MultipartError("garbage after a multipart boundary")
                    break
                if self._buf[:eol].strip(b" \t"):
                    raise MultipartError("garbage after a multipart boundary")
                del self._buf[:eol + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if self._buf.startswith(b"\r\n"):
                    headers: dict[str, str] = {}  # a part with no headers at all
                    del self._buf[:2]
                else:
                    end = self._buf.find(b"\r\n\r\n")
                    if end == -1:
                        if len(self._buf) > MAX_HEADER_BYTES:
                            raise MultipartError("a part's headers exceed "
                                                 f"{MAX_HEADER_BYTES} bytes")
                        break
                    if end > MAX_HEADER_BYTES:
                        raise MultipartError(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
                    headers = _parse_headers(bytes(self._buf[:end]))
                    del self._buf[:end + 4]
                self._state = _BODY
                self.parts += 1
                events.append(PartStart(headers))
            elif self._state == _BODY:
                pos = self._buf.find(self._delim)
                if pos == -1:
                    # Keep a tail that might be the start of a delimiter.
                    keep = len(self._delim) - 1
                    if len(self._buf) > keep:
                        cut = len(self._buf) - keep
                        events.append(PartData(bytes(self._buf[:cut])))
                        del self._buf[:cut]
                    break
                if pos:
                    events.append(PartData(bytes(self._buf[:pos])))
                events.append(PartEnd())
                del self._buf[:pos + len(self._delim)]
                self._state = _AFTER_DELIM
            else:  # pragma: no cover - _DONE is handled above
                break
        return events

    def _find_first_delimiter(self) -> bool:
        if self._buf.startswith(self._dash):
            del self._buf[:len(self._dash)]
            self._state = _AFTER_DELIM
            return True
        pos = self._buf.find(self._delim)
        if pos == -1:
            if len(self._buf) > 64 * 1024:
                raise MultipartError("no multipart boundary in the first 64 KiB of the body")
            return False
        del self._buf[:pos + len(self._delim)]
        self._state = _AFTER_DELIM
        return True

    def close(self) -> None:
        if self._state != _DONE:
            if self._state == _PREAMBLE:
                raise MultipartError("the body holds no part with the declared boundary")
            raise MultipartError("the body ended before the closing multipart boundary")


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed part header {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers


_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` →
    ``("multipart/related", {"type": "application/dicom", "boundary": "x"})``.
    The media type and parameter names are lower-cased."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM_RE.finditer(";" + rest):
        raw = m.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[m.group(1).lower()] = raw
    return media.strip().lower(), params


def new_boundary() -> str:
    import uuid
    return f"pacsnode-{uuid.uuid4().hex}"

"""What we propose when we send instances (C-STORE as SCU): the one builder
of storage presentation contexts for an association we request, used by a
C-MOVE's sub-operations (``retrieve.store_contexts``) and by
``pacsnode send`` (``remote.scu``).

For each SOP class: one context with the native little-endian syntaxes
(:data:`NATIVE_LITTLE_ENDIAN`, which we produce from anything we decode);
one per syntax an instance of that class is in, other than Explicit VR
Little Endian, alone — so the peer can accept it and the bytes go as they
are; and, room permitting, one with the lossless compressed syntaxes we can
produce, for a peer that takes nothing uncompressed.  At most
:data:`MAX_CONTEXTS` (PS3.8 9.3.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable

from .acse import Context

# Transfer syntax UIDs (PS3.5 A / PS3.6 A), spelled out: a C-STORE SCU
# builds its contexts without loading pydicom.
ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
ImplicitVRLittleEndian = "1.2.840.10008.1.2"
JPEG2000Lossless = "1.2.840.10008.1.2.4.90"
JPEGLSLossless = "1.2.840.10008.1.2.4.80"
RLELossless = "1.2.840.10008.1.2.5"

__all__ = ["NATIVE_LITTLE_ENDIAN", "MAX_CONTEXTS", "storage_contexts", "contexts_needed"]

#: The two native little-endian syntaxes, in the order we offer them: one
#: context carries both.  (Not ``transcode.UNCOMPRESSED``, which also holds
#: the deflated and big-endian syntaxes: every syntax whose pixel data is
#: not compressed.)
NATIVE_LITTLE_ENDIAN: tuple[str, ...] = (str(ExplicitVRLittleEndian),
                                         str(ImplicitVRLittleEndian))
#: Most presentation contexts in an A-ASSOCIATE-RQ (ids 1-255, odd).
MAX_CONTEXTS = 128
#: Lossless compressed syntaxes proposed for a peer that may take nothing
#: uncompressed (only those we can produce are proposed).
_COMPRESSED_FALLBACK = (JPEG2000Lossless, JPEGLSLossless, RLELossless)


def _alone(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, None], dict[tuple[str, str], None]]:
    classes: dict[str, None] = {}
    alone: dict[tuple[str, str], None] = {}
    for sop_class, ts in pairs:
        classes[str(sop_class)] = None
        if str(ts) != ExplicitVRLittleEndian:
            alone[(str(sop_class), str(ts))] = None
    return classes, alone


def contexts_needed(pairs: Iterable[tuple[str, str]]) -> int:
    """How many contexts :func:`storage_contexts` needs at least for these
    (SOP class, transfer syntax) pairs (the fallback contexts aside)."""
    classes, alone = _alone(pairs)
    return len(classes) + len(alone)


def storage_contexts(pairs: Iterable[tuple[str, str]], *,
                     compressed_fallback: bool = True) -> list[Context]:
    """The contexts to propose for sending instances of these (SOP class,
    stored transfer syntax) pairs (see the module text).  Without
    ``compressed_fallback`` only the stored and the native syntaxes are
    proposed (what ``pacsnode send`` does, as storescu: knowing which
    encoders are installed means loading pydicom's pixel stack)."""
    classes, alone = _alone(pairs)
    contexts = [Context(None, sop_class, list(NATIVE_LITTLE_ENDIAN)) for sop_class in classes]
    contexts += [Context(None, sop_class, [ts]) for sop_class, ts in alone]
    if compressed_fallback and len(contexts) + len(classes) <= MAX_CONTEXTS:
        from ..transcode import can_transcode
        fallback = [ts for ts in _COMPRESSED_FALLBACK
                    if can_transcode(ExplicitVRLittleEndian, ts)]
        if fallback:
            contexts += [Context(None, sop_class, fallback) for sop_class in classes]
    return contexts[:MAX_CONTEXTS]

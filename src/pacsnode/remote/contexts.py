"""Presentation contexts for the storage side of our SCU work.

- :func:`get_contexts` — what we propose, as Storage SCP, on a C-GET
  association: the SOP classes we expect, each with the uncompressed
  transfer syntaxes in one context plus one context per compressed syntax,
  so a peer can send each instance in the syntax it is stored in instead of
  transcoding it.  Everything within PS3.8's 128-context limit.
- :func:`send_contexts` — what we propose for C-STORE of given files: each
  file's own SOP class and transfer syntax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pydicom.uid as sc  # pydicom names every storage SOP class (and is typed)
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom.presentation import PresentationContext, build_context, build_role

from .peer import MAX_CONTEXTS

__all__ = ["UNCOMPRESSED", "OTHER_SYNTAXES", "IMAGE_STORAGE", "OTHER_STORAGE",
           "get_contexts", "scp_roles", "send_contexts", "context_key"]

#: The little-endian uncompressed syntaxes, preferred first; one context
#: carries both, and pynetdicom converts between them as needed.
UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Other syntaxes (compressed, deflated, big endian), most common in
#: archives first; each gets a context of its own.
OTHER_SYNTAXES: tuple[str, ...] = (
    JPEGLosslessSV1, JPEGBaseline8Bit, JPEG2000Lossless, JPEG2000, RLELossless,
    JPEGLSLossless, JPEGExtended12Bit, JPEGLSNearLossless, JPEGLossless,
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
)

#: Image storage SOP classes, the ones most often met first.  These get
#: contexts for the other syntaxes too, as far as the context budget goes.
IMAGE_STORAGE: tuple[str, ...] = (
    sc.CTImageStorage, sc.MRImageStorage, sc.ComputedRadiographyImageStorage,
    sc.DigitalXRayImageStorageForPresentation, sc.SecondaryCaptureImageStorage,
    sc.UltrasoundImageStorage, sc.UltrasoundMultiFrameImageStorage,
    sc.DigitalMammographyXRayImageStorageForPresentation,
    sc.XRayAngiographicImageStorage, sc.NuclearMedicineImageStorage,
    sc.PositronEmissionTomographyImageStorage, sc.EnhancedCTImageStorage,
    sc.EnhancedMRImageStorage, sc.XRayRadiofluoroscopicImageStorage,
    sc.DigitalXRayImageStorageForProcessing,
    sc.DigitalMammographyXRayImageStorageForProcessing, sc.BreastTomosynthesisImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage, sc.EnhancedPETImageStorage,
    sc.RTImageStorage, sc.VLPhotographicImageStorage, sc.EnhancedXAImageStorage,
    sc.DigitalIntraOralXRayImageStorageForPresentation,
    sc.OphthalmicPhotography8BitImageStorage, sc.VLWholeSlideMicroscopyImageStorage,
    sc.XRay3DAngiographicImageStorage,
)

#: Non-image (or rarely compressed) storage SOP classes: uncompressed only.
OTHER_STORAGE: tuple[str, ...] = (
    sc.RTDoseStorage, sc.RTStructureSetStorage, sc.RTPlanStorage, sc.RTIonPlanStorage,
    sc.RTBeamsTreatmentRecordStorage, sc.SegmentationStorage, sc.BasicTextSRStorage,
    sc.EnhancedSRStorage, sc.ComprehensiveSRStorage, sc.Comprehensive3DSRStorage,
    sc.XRayRadiationDoseSRStorage, sc.KeyObjectSelectionDocumentStorage,
    sc.GrayscaleSoftcopyPresentationStateStorage, sc.RawDataStorage,
    sc.EncapsulatedPDFStorage, sc.SpatialRegistrationStorage,
    sc.DeformableSpatialRegistrationStorage, sc.ParametricMapStorage,
    sc.MRSpectroscopyStorage, sc.TwelveLeadECGWaveformStorage,
)


def _add(out: list[PresentationContext], seen: set[tuple[str, tuple[str, ...]]],
         sop: str, syntaxes: Sequence[str], budget: int) -> None:
    key = (str(sop), tuple(syntaxes))
    if key in seen or len(out) >= budget:
        return
    seen.add(key)
    out.append(build_context(sop, list(syntaxes)))


def get_contexts(sop_classes: Sequence[str] | None = None, *,
                 budget: int = MAX_CONTEXTS - 1) -> list[PresentationContext]:
    """Storage contexts to propose (with SCP role) on a C-GET association.

    With ``sop_classes`` (e.g. a study's SOPClassesInStudy) those come first,
    each with every syntax; the rest of the ``budget`` (default: 128 minus
    the one Q/R context) is filled with the common classes, uncompressed
    first, then compressed syntax by syntax.
    """
    out: list[PresentationContext] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    wanted = list(dict.fromkeys(str(uid) for uid in sop_classes or ()))
    for sop in wanted:
        _add(out, seen, sop, UNCOMPRESSED, budget)
    for ts in OTHER_SYNTAXES:
        for sop in wanted:
            _add(out, seen, sop, [ts], budget)
    for sop in (*IMAGE_STORAGE, *OTHER_STORAGE):
        _add(out, seen, sop, UNCOMPRESSED, budget)
    for ts in OTHER_SYNTAXES:
        for sop in IMAGE_STORAGE:
            _add(out, seen, sop, [ts], budget)
    return out


def scp_roles(contexts: Iterable[PresentationContext]) -> list[object]:
    """SCP/SCU Role Selection items (PS3.7 D.3.3.4) making us the Storage
    SCP for each abstract syntax in ``contexts``; required for C-GET."""
    uids = dict.fromkeys(str(cx.abstract_syntax) for cx in contexts)
    return [build_role(uid, scp_role=True) for uid in uids]


def context_key(sop_class: str, transfer_syntax: str) -> tuple[str, str]:
    """Files that can share one presentation context have the same key."""
    ts = UID(transfer_syntax)
    return (str(sop_class), "uncompressed" if ts in UNCOMPRESSED else str(ts))


def send_contexts(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """One context per :func:`context_key` of the ``(sop_class, syntax)``
    pairs: uncompressed files share a context offering the file's syntax
    first and the other one after it (pynetdicom converts between them);
    other files offer exactly their own syntax."""
    contexts: dict[tuple[str, str], PresentationContext] = {}
    for sop, ts in pairs:
        key = context_key(sop, ts)
        if key in contexts:
            continue
        if key[1] == "uncompressed":
            syntaxes = list(dict.fromkeys([str(ts), *UNCOMPRESSED]))
        else:
            syntaxes = [str(ts)]
        contexts[key] = build_context(sop, syntaxes)
    return list(contexts.values())

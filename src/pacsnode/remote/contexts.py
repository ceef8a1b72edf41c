"""Presentation contexts we propose as the Storage SCP of a C-GET
association (:func:`get_contexts`): the SOP classes we expect, each with the
native little-endian syntaxes in one context plus one context per other
syntax, so a peer can send each instance in the syntax it is stored in
instead of transcoding it.  Everything within PS3.8's 128-context limit.

What we propose when *we* send (``pacsnode send``, a C-MOVE's
sub-operations) is built in one place, :mod:`pacsnode.dimse.contexts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pydicom.uid as sc  # pydicom names every storage SOP class (and is typed)
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom.presentation import PresentationContext, build_context

from ..dimse.contexts import MAX_CONTEXTS, NATIVE_LITTLE_ENDIAN

__all__ = ["NATIVE_LITTLE_ENDIAN", "OTHER_SYNTAXES", "IMAGE_STORAGE", "OTHER_STORAGE",
           "get_contexts"]

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
        _add(out, seen, sop, NATIVE_LITTLE_ENDIAN, budget)
    for ts in OTHER_SYNTAXES:
        for sop in wanted:
            _add(out, seen, sop, [ts], budget)
    for sop in (*IMAGE_STORAGE, *OTHER_STORAGE):
        _add(out, seen, sop, NATIVE_LITTLE_ENDIAN, budget)
    for ts in OTHER_SYNTAXES:
        for sop in IMAGE_STORAGE:
            _add(out, seen, sop, [ts], budget)
    return out

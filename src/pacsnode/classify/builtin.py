"""The built-in rules, written in the rule file format itself (so that a
rule file can override any of them by id or type, and reach them as
``builtin:<id>``).

Class rules carry the class as both ``type`` and ``id`` (all alternatives
of a class share the id, so ``{"rule": "localizer"}`` means "is a
localizer").  Helper rules have an id and no type.

What each class looks at (physics first; the SeriesDescription only when
the header has no EchoTime at all, or to rule out what the physics cannot
tell apart):

* T1 — IR-prepared gradient echo with a short TE (MPRAGE, BRAVO, TFE);
  spoiled gradient echo with TE < 6.5 ms and TR < 16 ms or flip angle
  > 24° (FLASH, VIBE, FSPGR, LAVA), not an angiogram (AngioFlag Y); spin
  echo without inversion with TR < 1000 ms and TE < 30 ms; inversion
  recovery with TI 300–1300 ms and TE < 40 ms ("T1 FLAIR"/TIRM).  Never a
  localizer, field map or SWI.
* T2 — spin echo (not EPI, no inversion, no diffusion) with TE ≥ 60 ms and
  TR ≥ 1000 ms.
* FLAIR — inversion recovery with TI ≥ 1400 ms and TE ≥ 60 ms (the
  fluid-suppressed T2; "T1 FLAIR" is T1).
* PD — spin echo (as T2) with TR ≥ 1000 ms and TE < 45 ms.
* DWI — diffusion weighting: a b-value above 0 (DiffusionBValue, GE
  (0043,1039), Philips (2001,1003), Siemens' sequence name "ep_b1000"),
  ImageType DIFFUSION/TRACEW, or Philips' scan technique "Dwi…"; not a
  computed map (ImageType ADC, FA…).  A DTI series is also DWI.
* ADC — ImageType ADC, or a derived image described as an ADC map.
* DTI — diffusion weighting (as DWI) in 7 volumes or more (b0 plus at
  least six directions).
* SWI — ImageType SWI, or a 3D gradient echo (not EPI) with an echo time
  above 15 ms and TR < 100 ms (GE SWAN, Philips SWIp).
* BOLD — a gradient-echo (EPI) time series of 20 volumes or more with TE
  20–70 ms, without diffusion weighting, without a contrast agent and not
  described as perfusion or ASL.
* fieldmap — Siemens' field-mapping sequence (``fm2d``), a gradient echo
  with two or more echoes all at 10 ms or less, ImageType B0 (Philips), or
  a spin-echo EPI without diffusion weighting in fewer than 7 volumes
  ("SpinEchoFieldMap", "se_epi_ap").
* localizer — ImageType LOCALIZER (any modality); an MR series in more
  than one orientation; a fast gradient echo (TR < 20 ms) described as
  localizer/scout/survey/loc; a CT series of at most 3 coronal or sagittal
  projections that is not derived.
* axial — a CT series whose slice normal is closest to the feet–head axis,
  not a localizer.
* derived — ImageType's first value DERIVED.
* secondary-capture — a Secondary Capture SOP class (1.2.840.10008.5.1.4.1.1.7…).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BUILTIN_RULES", "BUILTIN_CLASSES"]

#: The built-in class names (DESIGN §10), exactly.
BUILTIN_CLASSES = ("T1", "T2", "FLAIR", "PD", "DWI", "ADC", "SWI", "BOLD", "DTI", "localizer",
                   "fieldmap", "axial", "derived", "secondary-capture")

_SC_SOP = r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.7(\.\d+)*$"


def _value(name: str, pattern: str) -> dict[str, Any]:
    """A regular expression test of a keyword or fact."""
    return {"tag": [name], "value": pattern}


def _has(name: str, value: str) -> dict[str, Any]:
    """One of the values is ``value`` (multi-valued CS such as ImageType)."""
    return {"tag": [name], "value": rf"(^|\\){value}(\\|$)"}


def _op(name: str, operator: str, value: str) -> dict[str, Any]:
    return {"tag": [name], "operator": operator, "value": value}


def _not(test: dict[str, Any]) -> dict[str, Any]:
    return {**test, "negate": "yes"}


def _rule(rule_id: str) -> dict[str, Any]:
    return {"rule": rule_id}


def _not_rule(rule_id: str) -> dict[str, Any]:
    return {"rule": rule_id, "negate": "yes"}


def _helper(rule_id: str, description: str, *tests: dict[str, Any]) -> dict[str, Any]:
    return {"id": rule_id, "description": description, "rules": list(tests)}


def _class(name: str, description: str, *tests: dict[str, Any]) -> dict[str, Any]:
    return {"type": name, "id": name, "description": description, "rules": list(tests)}


def _no_physics() -> dict[str, Any]:
    return _op("EchoTime", "notexist", "")


_GRADIENT_ECHO = _has("ScanningSequence", "GR")
_SPIN_ECHO = _has("ScanningSequence", "SE")

HELPERS: list[dict[str, Any]] = [
    _helper("mr-image", "An MR image (not a secondary capture)",
            _value("Modality", "^MR$"), _not(_value("SOPClassUID", _SC_SOP))),
    _helper("ct-image", "A CT image (not a secondary capture)",
            _value("Modality", "^CT$"), _not(_value("SOPClassUID", _SC_SOP))),
    _helper("derived-image", "ImageType's first value is DERIVED",
            _value("ImageType", "^DERIVED")),
    _helper("epi", "Echo planar: ScanningSequence EP", _has("ScanningSequence", "EP")),
    _helper("epi", "Echo planar: Siemens sequence name ep…", _value("SequenceName", r"^\*?ep")),
    _helper("epi", "Echo planar: GE scan option EPI_GEMS",
            _op("ScanOptions", "contains", "EPI")),
    _helper("epi", "Echo planar: Philips scan technique …EPI / Dwi…",
            _value("SequenceType", "(?i)epi|^dwi")),
    _helper("gradient-echo-readout", "Gradient echo, EPI or not",
            _GRADIENT_ECHO),
    _helper("gradient-echo-readout", "Siemens gradient-echo EPI (epfid)",
            _value("SequenceName", r"^\*?epfid")),
    _helper("spin-echo-epi", "Spin-echo EPI", _rule("epi"), _SPIN_ECHO),
    _helper("spin-echo-epi", "Siemens spin-echo EPI (epse)", _value("SequenceName", r"^\*?epse")),
    _helper("spin-echo-epi", "Philips spin-echo EPI", _value("SequenceType", "(?i)^seepi")),
    _helper("inversion-recovery", "ScanningSequence IR", _has("ScanningSequence", "IR")),
    _helper("inversion-recovery", "Scan option IR (Siemens IR, GE IR_GEMS)",
            _value("ScanOptions", r"(^|\\)IR(_GEMS)?(\\|$)")),
    _helper("prepared", "Inversion prepared", _rule("inversion-recovery")),
    _helper("prepared", "Magnetization prepared (SequenceVariant MP)",
            _has("SequenceVariant", "MP")),
    _helper("diffusion", "A diffusion b-value above 0", _op("DiffusionBValues", ">", "0")),
    _helper("diffusion", "ImageType of a diffusion series",
            _value("ImageType", r"(^|\\)(DIFFUSION|TRACEW|ADC|FA)(\\|$)")),
    _helper("diffusion", "Philips scan technique Dwi…", _value("SequenceType", "(?i)^dwi")),
    _helper("diffusion-map", "A map computed from diffusion images",
            _value("ImageType", r"(^|\\)(ADC|EADC|FA|EXP|TENSOR|ISOTROPIC_ADC)(\\|$)")),
    _helper("time-series", "20 volumes or more", _op("NumberOfVolumes", ">", "19")),
    _helper("time-series", "20 temporal positions or more",
            _op("NumberOfTemporalPositions", ">", "19")),
    _helper("short-tr-or-high-flip", "TR under 16 ms", _op("RepetitionTime", "<", "16")),
    _helper("short-tr-or-high-flip", "Flip angle above 24 degrees",
            _op("FlipAngle", ">", "24")),
]

CLASSES: list[dict[str, Any]] = [
    # ---- T1
    _class("T1", "IR- or magnetization-prepared gradient echo (MPRAGE, BRAVO, TFE)",
           _rule("mr-image"), _GRADIENT_ECHO, _not_rule("epi"), _rule("prepared"),
           _op("EchoTime", "<", "10"),
           _not_rule("localizer"), _not_rule("fieldmap"), _not_rule("SWI")),
    _class("T1", "Spoiled gradient echo with a short TE (FLASH, VIBE, FSPGR, LAVA)",
           _rule("mr-image"), _GRADIENT_ECHO, _not_rule("epi"), _op("EchoTime", "<", "6.5"),
           _rule("short-tr-or-high-flip"), _not(_value("AngioFlag", "^Y")),
           _not_rule("diffusion"),
           _not_rule("localizer"), _not_rule("fieldmap"), _not_rule("SWI")),
    _class("T1", "Spin echo, short TR and TE",
           _rule("mr-image"), _SPIN_ECHO, _not_rule("inversion-recovery"), _not_rule("epi"),
           _op("RepetitionTime", "<", "1000"), _op("EchoTime", "<", "30"),
           _not_rule("diffusion"), _not_rule("localizer")),
    _class("T1", "Inversion recovery with TI 300-1300 ms and a short TE (T1 FLAIR, TIRM)",
           _rule("mr-image"), _rule("inversion-recovery"), _not(_GRADIENT_ECHO),
           _not_rule("epi"),
           _op("InversionTime", ">", "300"), _op("InversionTime", "<", "1300"),
           _op("EchoTime", "<", "40"), _not_rule("localizer")),
    _class("T1", "Without sequence parameters: the description says T1",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription",
                  r"(?i)(^|[^a-z0-9])t1|mprage|bravo|spgr|(^|[^a-z])tfe|vibe"),
           _not_rule("localizer")),
    # ---- T2
    _class("T2", "Spin echo (not EPI), TE >= 60 ms, TR >= 1000 ms, no inversion",
           _rule("mr-image"), _SPIN_ECHO, _not_rule("inversion-recovery"), _not_rule("epi"),
           _not_rule("diffusion"), _op("EchoTime", ">", "59.9"),
           _op("RepetitionTime", ">", "999"), _not_rule("localizer")),
    _class("T2", "Without sequence parameters: the description says T2",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)(^|[^a-z0-9])t2(?![*a-z_]*(star|\*|flair|tirm|stir))"),
           _not(_value("SeriesDescription", r"(?i)flair|tirm|stir|dark.?fl|swi|hemo")),
           _not_rule("localizer")),
    # ---- FLAIR
    _class("FLAIR", "Inversion recovery, TI >= 1400 ms, TE >= 60 ms",
           _rule("mr-image"), _rule("inversion-recovery"),
           _op("InversionTime", ">", "1399"), _op("EchoTime", ">", "59.9")),
    _class("FLAIR", "Without sequence parameters: the description says FLAIR",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)flair|dark.?fl"),
           _not(_value("SeriesDescription", r"(?i)(^|[^a-z0-9])t1"))),
    # ---- PD
    _class("PD", "Spin echo (not EPI), TE < 45 ms, TR >= 1000 ms, no inversion",
           _rule("mr-image"), _SPIN_ECHO, _not_rule("inversion-recovery"), _not_rule("epi"),
           _not_rule("diffusion"), _op("EchoTime", "<", "45"),
           _op("RepetitionTime", ">", "999"), _not_rule("localizer")),
    _class("PD", "Without sequence parameters: the description says PD",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)(^|[^a-z0-9])pd([^a-z]|$)|proton")),
    # ---- DWI
    _class("DWI", "Diffusion weighted, not a computed map",
           _rule("mr-image"), _rule("diffusion"), _not_rule("diffusion-map")),
    _class("DWI", "Without sequence parameters: the description says diffusion",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)dwi|diff|trace|dti|mddw"),
           _not(_value("SeriesDescription", r"(?i)adc|(^|[^a-z])c?fa([^a-z]|$)"))),
    # ---- ADC
    _class("ADC", "ImageType ADC", _rule("mr-image"), _has("ImageType", "ADC")),
    _class("ADC", "A derived image described as an ADC map",
           _rule("mr-image"), _rule("derived-image"),
           _value("SeriesDescription", r"(?i)apparent diffusion|(^|[^a-z])d?adc([^a-z]|$)"),
           _not(_value("SeriesDescription", r"(?i)exponential|eadc"))),
    # ---- DTI
    _class("DTI", "Diffusion weighted in 7 volumes or more (b0 and 6+ directions)",
           _rule("mr-image"), _rule("diffusion"), _not_rule("diffusion-map"),
           _op("NumberOfVolumes", ">", "6")),
    _class("DTI", "Without sequence parameters: the description says DTI",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)dti|mddw|tensor"),
           _not(_value("SeriesDescription", r"(?i)adc|(^|[^a-z])c?fa([^a-z]|$)"))),
    # ---- SWI
    _class("SWI", "ImageType SWI (Siemens)", _rule("mr-image"), _has("ImageType", "SWI")),
    _class("SWI", "3D gradient echo with a long echo (GE SWAN, Philips SWIp)",
           _rule("mr-image"), _GRADIENT_ECHO, _not_rule("epi"),
           _value("MRAcquisitionType", "^3D$"), _op("EchoTimes", ">", "15"),
           _op("RepetitionTime", "<", "100")),
    _class("SWI", "Without sequence parameters: the description says SWI",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)swi|swan|suscept")),
    # ---- BOLD
    _class("BOLD", "Gradient-echo time series (fMRI)",
           _rule("mr-image"), _rule("gradient-echo-readout"), _not_rule("diffusion"),
           _op("EchoTime", ">", "19.9"), _op("EchoTime", "<", "70"), _rule("time-series"),
           _not(_value("ContrastBolusAgent", r"\S")),
           _not(_value("SeriesDescription", r"(?i)perf|dsc|dce|asl"))),
    _class("BOLD", "Without sequence parameters: the description says BOLD/fMRI",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)bold|fmri|rest|task"),
           _not(_value("SeriesDescription", r"(?i)perf|dsc|dce|asl"))),
    # ---- fieldmap
    _class("fieldmap", "Siemens field mapping sequence (fm2d/fm3d)",
           _rule("mr-image"), _value("SequenceName", r"^\*?fm[23]d")),
    _class("fieldmap", "Gradient echo with two or more short echoes (B0 map)",
           _rule("mr-image"), _GRADIENT_ECHO, _not_rule("epi"),
           _op("NumberOfEchoes", ">", "1"), _not(_op("EchoTimes", ">", "10"))),
    _class("fieldmap", "ImageType B0 (Philips B0 map)",
           _rule("mr-image"), _value("ImageType", r"(^|\\)B0( MAP)?(\\|$)")),
    _class("fieldmap", "Spin-echo EPI without diffusion in few volumes (topup pairs)",
           _rule("mr-image"), _rule("spin-echo-epi"), _not_rule("diffusion"),
           _op("NumberOfVolumes", "<", "7")),
    _class("fieldmap", "Without sequence parameters: the description says field map",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)field.?map|fmap|b0.?map")),
    # ---- localizer
    _class("localizer", "ImageType LOCALIZER", _has("ImageType", "LOCALIZER")),
    _class("localizer", "MR images in more than one orientation",
           _rule("mr-image"), _op("NumberOfOrientations", ">", "1")),
    _class("localizer", "A fast gradient echo described as localizer, scout or survey",
           _rule("mr-image"),
           _value("SeriesDescription",
                  r"(?i)locali[sz]er|scout|survey|(^|[^a-z])loc([^a-z]|$)|3.?pl(ane)?([^a-z]|$)"),
           _op("RepetitionTime", "<", "20")),
    _class("localizer", "Without sequence parameters: the description says localizer",
           _rule("mr-image"), _no_physics(),
           _value("SeriesDescription", r"(?i)locali[sz]er|scout|survey")),
    _class("localizer", "A few coronal or sagittal CT projections",
           _rule("ct-image"), _op("NumberOfInstances", "<", "4"),
           _value("Orientation", "^(coronal|sagittal)$"), _not_rule("derived-image")),
    # ---- axial (CT)
    _class("axial", "CT slices across the feet-head axis",
           _rule("ct-image"), _value("Orientation", "^axial$"), _not_rule("localizer")),
    # ---- derived, secondary capture
    _class("derived", "ImageType's first value is DERIVED", _rule("derived-image")),
    _class("secondary-capture", "A Secondary Capture SOP class",
           _value("SOPClassUID", _SC_SOP)),
]

#: Helpers first, then the classes in the order they are listed.
BUILTIN_RULES: list[dict[str, Any]] = [*HELPERS, *CLASSES]

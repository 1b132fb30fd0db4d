"""Check a data set against its IOD: what an archive can tell a sender about its objects.

Checks (each failure is one :class:`Finding`):

* the IOD's modules (PS3.3 Annex A): every Type 1 attribute of a module of
  usage M present and not empty, every Type 2 attribute present; modules of
  usage C or U are checked the same way when they are present (one of their
  own Type 1/2 attributes is); items of a present sequence are checked
  against the Type 1/2 attributes of that sequence, at every depth. A Type
  1C/2C attribute that is absent is reported when its condition holds: the
  standard's sentence, parsed by :mod:`dicomhub.iod.conditions`, evaluated on
  the data set or on the item the attribute belongs in, and quoted in the
  finding (Planar Configuration, Pixel Data and Window Width keep the wording
  of ``_CONDITIONS``); conditions that do not parse are not evaluated;
* every standard element (any depth): VR against the data dictionary (data
  sets encoded with explicit VR), VM against the dictionary, UID syntax of
  UI values (PS3.5 9.1), the form and length of text values (PS3.5 6.2), and
  values that do not decode;
* enumerated values of a curated set of attributes (the tables carry no
  enumerations), and Bits Allocated / Bits Stored / High Bit consistency;
* a SOP class without an IOD in the tables gives a single warning; the
  element checks still run.

References
----------
PS3.3 Annex A and C (Section 5.4 for Type 1C/2C), PS3.5 Sections 6.2 and 9.1,
PS3.3 C.7.6.3.1.
"""

from __future__ import annotations

import enum
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Literal

import pydicom
from pydicom.datadict import get_entry
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VALIDATORS

from dicomhub.errors import InvalidIdentifier
from dicomhub.iod.tables import IodTable, ModuleTable, Requirement, iod_for_sop_class
from dicomhub.model.identifiers import require_uid

__all__ = [
    "Finding",
    "Severity",
    "validate_dataset",
    "validate_encoded",
    "validate_part10",
]


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One departure from the standard.

    ``code`` says what kind (``type1-missing``, ``type1-empty``,
    ``type2-missing``, ``conditional-missing``, ``vr``, ``vm``, ``uid``,
    ``enumerated``, ``consistency``, ``value``, ``decode``,
    ``unknown-sop-class``, ``unreadable``); ``attribute`` is a keyword, with
    the sequence items it sits in (``ReferencedSeriesSequence[0].SeriesInstanceUID``);
    ``module`` is the module key (``general-series``) for IOD findings, else "".
    """

    severity: Severity
    code: str
    module: str
    attribute: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def as_dict(self) -> dict[str, str]:
        out = asdict(self)
        out["severity"] = self.severity.value
        return out


# ------------------------------------------------------------------ entry points


def validate_part10(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
) -> list[Finding]:
    """Validate a Part 10 file (path, bytes or binary file object), header only.

    The file is read up to the pixel data, which is never loaded: only its
    presence is noted (for the Pixel Data requirement).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _validate_stream(io.BytesIO(source), force=False)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fp:
            return _validate_stream(fp, force=False)
    return _validate_stream(source, force=False)


def validate_encoded(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> list[Finding]:
    """Validate a data set received without File Meta (a C-STORE data set) in ``transfer_syntax_uid``."""
    uid = pydicom.uid.UID(transfer_syntax_uid)
    fp = io.BytesIO(data)
    try:
        ds = (
            pydicom.filereader.read_dataset(
                fp, uid.is_implicit_VR, uid.is_little_endian, stop_when=_stop_at_pixels
            )
            if not uid.is_deflated
            else None
        )
    except Exception as exc:  # noqa: BLE001 - any parser failure is the finding
        return [_unreadable(exc)]
    if ds is None:  # deflated: let pydicom inflate it
        return _validate_stream(io.BytesIO(bytes(data)), force=True)
    tag = _pixels_follow(fp, uid.is_little_endian)
    return validate_dataset(ds, pixel_data_present=tag is not None, pixel_data_tag=tag)


def validate_dataset(
    ds: Dataset, *, pixel_data_present: bool | None = None, pixel_data_tag: int | None = None
) -> list[Finding]:
    """Validate ``ds`` against the IOD of its SOP Class UID.

    Parameters
    ----------
    ds
        The data set (its values may still be raw; the ones that are read get
        decoded). A File Meta header, when present, is checked for agreement.
    pixel_data_present
        Whether the object has pixel data, for a data set read without it
        (``stop_before_pixels``); None looks in ``ds``.
    pixel_data_tag
        Which of Pixel Data, Float Pixel Data and Double Float Pixel Data it is, for
        the conditions that name one; with ``pixel_data_present`` True and no tag,
        Pixel Data (7FE0,0010) is assumed.

    Returns
    -------
    list[Finding]
        In the order found: IOD findings module by module, then element
        findings in tag order; one finding per attribute and kind.
    """
    out = _Findings()
    sop_class = _text(ds.get("SOPClassUID"))
    _check_elements(ds, out, explicit_vr=_explicit_vr(ds), prefix="")
    meta = getattr(ds, "file_meta", None)
    if meta is not None and sop_class:
        stored = _text(meta.get("MediaStorageSOPClassUID"))
        if stored and stored != sop_class:
            out.add(
                Severity.ERROR,
                "consistency",
                "sop-common",
                "SOPClassUID",
                f"SOP Class UID {sop_class} differs from the File Meta's {stored}",
            )
    if not sop_class:
        out.add(Severity.ERROR, "type1-missing", "sop-common", "SOPClassUID", "SOP Class UID is missing")
        return out.items
    iod = iod_for_sop_class(sop_class)
    if iod is None:
        out.add(
            Severity.WARNING,
            "unknown-sop-class",
            "",
            "SOPClassUID",
            f"SOP Class {sop_class} has no IOD in the standard's tables: module checks skipped",
        )
        return out.items
    pixels = (
        "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        if pixel_data_present is None
        else pixel_data_present
    )
    # The pixel data element a header-only read left out, for conditions that name it.
    unread = frozenset({pixel_data_tag or 0x7FE00010}) if pixel_data_present else frozenset()
    iod_findings = _Findings()
    _check_iod(ds, iod, iod_findings, pixels, unread)
    return iod_findings.items + out.items


# ------------------------------------------------------------------ reading


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def _pixels_follow(fp: BinaryIO, little_endian: bool) -> int | None:
    """After a parse stopped before the pixel data: the tag of the pixel data element next, if any."""
    head = fp.read(4)
    if len(head) < 4:
        return None
    order: Literal["little", "big"] = "little" if little_endian else "big"
    group = int.from_bytes(head[:2], order)
    element = int.from_bytes(head[2:], order)
    tag = group << 16 | element
    return tag if tag in _PIXEL_TAGS else None


def _validate_stream(fp: BinaryIO, *, force: bool) -> list[Finding]:
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - a file pydicom cannot read is a finding
        return [_unreadable(exc)]
    little = bool(getattr(ds, "original_encoding", (False, True))[1])
    tag = _pixels_follow(fp, little)
    return validate_dataset(ds, pixel_data_present=tag is not None, pixel_data_tag=tag)


def _unreadable(exc: BaseException) -> Finding:
    return Finding(Severity.ERROR, "unreadable", "", "", f"the object cannot be parsed: {exc}")


def _explicit_vr(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", (None, None))
    implicit = encoding[0] if encoding else None
    if implicit is None:
        return True  # built in memory: its VRs were chosen, check them
    return not implicit


# ------------------------------------------------------------------ findings


class _Findings:
    """Findings with one entry per (attribute, code)."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, severity: Severity, code: str, module: str, attribute: str, message: str) -> None:
        missing = code.endswith("-missing")
        key = (attribute, "missing" if missing else code)
        finding = Finding(severity, code, module, attribute, message)
        if key in self._seen:
            if code == "type1-missing":  # Type 1 in one module, Type 2 in another: say Type 1
                self.items = [
                    finding if (f.attribute, f.code) == (attribute, "type2-missing") else f
                    for f in self.items
                ]
            return
        self._seen.add(key)
        self.items.append(finding)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.dataelem.DataElement):
        value = value.value
    return str(value).rstrip("\x00 ") if value is not None else ""


# ------------------------------------------------------------------ IOD checks


def _check_iod(ds: Dataset, iod: IodTable, out: _Findings, pixels: bool, unread: frozenset[int]) -> None:
    for module in iod.modules:
        if module.usage != "M" and not _module_present(ds, module):
            continue
        _check_requirements(ds, module, module.attributes, out, "", pixels, top=True, unread=unread)


def _module_present(ds: Dataset, module: ModuleTable) -> bool:
    return any(tag in ds for tag in module.markers)


def _check_requirements(
    ds: Dataset,
    module: ModuleTable,
    requirements: tuple[Requirement, ...],
    out: _Findings,
    prefix: str,
    pixels: bool,
    *,
    top: bool,
    unread: frozenset[int] = frozenset(),
) -> None:
    for req in requirements:
        name = prefix + req.keyword
        present = req.tag in ds
        if req.type in ("1C", "2C"):
            _check_condition(ds, module, req, out, name, present, pixels, top=top, unread=unread)
        elif req.type in ("1", "2") and not present:
            code = f"type{req.type}-missing"
            out.add(
                Severity.ERROR,
                code,
                module.key,
                name,
                f"Type {req.type} {req.keyword} is missing ({module.name} module)",
            )
            continue
        elif req.type == "1" and _is_empty(ds, req.tag):
            out.add(
                Severity.ERROR,
                "type1-empty",
                module.key,
                name,
                f"Type 1 {req.keyword} is empty ({module.name} module)",
            )
            continue
        if req.children and present:
            value = _value(ds, req.tag)
            if isinstance(value, Sequence):
                for i, item in enumerate(value):
                    _check_requirements(item, module, req.children, out, f"{name}[{i}].", pixels, top=False)


def _is_empty(ds: Dataset, tag: int) -> bool:
    value = _value(ds, tag)
    if value is None:
        return True
    if isinstance(value, (str, bytes, list, tuple, MultiValue, Sequence)):
        return len(value) == 0 or (isinstance(value, str) and not value.strip("\x00 "))
    return False


def _value(ds: Dataset, tag: int) -> Any:
    try:
        return ds[tag].value
    except Exception:  # noqa: BLE001 - reported by the element checks
        return None


def _number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except Exception:  # noqa: BLE001 - reported by the element checks
        return None


_Condition = Callable[[Dataset, bool], bool]

# (module, keyword) -> (is the attribute required?, the condition as the standard words it)
_CONDITIONS: dict[tuple[str, str], tuple[_Condition, str]] = {
    ("image-pixel", "PlanarConfiguration"): (
        lambda ds, _pixels: (_number(ds, "SamplesPerPixel") or 1) > 1,
        "required when Samples per Pixel is greater than 1",
    ),
    ("image-pixel", "PixelData"): (
        lambda ds, pixels: not pixels and "PixelDataProviderURL" not in ds,
        "required when Pixel Data Provider URL is absent",
    ),
    ("voi-lut", "WindowWidth"): (
        lambda ds, _pixels: "WindowCenter" in ds,
        "required when Window Center is present",
    ),
}


def _check_condition(
    ds: Dataset,
    module: ModuleTable,
    req: Requirement,
    out: _Findings,
    name: str,
    present: bool,
    pixels: bool,
    *,
    top: bool,
    unread: frozenset[int],
) -> None:
    """A Type 1C/2C attribute that is absent although its condition holds on ``ds``.

    ``ds`` is the data set or the sequence item the attribute belongs in: the
    tables keep a condition inside an item only when it looks at that item.
    """
    if present:
        return
    rule = _CONDITIONS.get((module.key, req.keyword)) if top else None
    if rule is not None:
        required, wording = rule
        if required(ds, pixels):
            out.add(
                Severity.ERROR,
                "conditional-missing",
                module.key,
                name,
                f"Type {req.type} {req.keyword} is missing, {wording} ({module.name} module)",
            )
        return
    condition = req.condition
    if condition is not None and condition.holds(ds, unread):
        out.add(
            Severity.ERROR,
            "conditional-missing",
            module.key,
            name,
            f'Type {req.type} {req.keyword} is missing ({module.name} module): "{condition.text}"',
        )


# ------------------------------------------------------------------ element checks

# PS3.3 enumerated values (not defined terms) of common attributes, per value
# position (None: every value). The tables carry no enumerations.
_ENUMERATED: dict[str, tuple[tuple[int | None, frozenset[str]], ...]] = {
    "PatientSex": ((None, frozenset({"M", "F", "O"})),),  # C.7.1.1
    "PatientSexNeutered": ((None, frozenset({"ALTERED", "UNALTERED"})),),
    "Laterality": ((None, frozenset({"R", "L"})),),  # C.7.3.1
    "ImageLaterality": ((None, frozenset({"R", "L", "U", "B"})),),
    "AnatomicalOrientationType": ((None, frozenset({"BIPED", "QUADRUPED"})),),
    "ImageType": (
        (0, frozenset({"ORIGINAL", "DERIVED"})),
        (1, frozenset({"PRIMARY", "SECONDARY"})),
    ),  # C.7.6.1.1.2
    "PhotometricInterpretation": (  # C.7.6.3.1.2, retired values included
        (
            None,
            frozenset(
                {
                    "MONOCHROME1",
                    "MONOCHROME2",
                    "PALETTE COLOR",
                    "RGB",
                    "YBR_FULL",
                    "YBR_FULL_422",
                    "YBR_PARTIAL_422",
                    "YBR_PARTIAL_420",
                    "YBR_ICT",
                    "YBR_RCT",
                    "HSV",
                    "ARGB",
                    "CMYK",
                    "XYB",
                }
            ),
        ),
    ),
    "PixelRepresentation": ((None, frozenset({"0", "1"})),),
    "PlanarConfiguration": ((None, frozenset({"0", "1"})),),
    "LossyImageCompression": ((None, frozenset({"00", "01"})),),
    "BurnedInAnnotation": ((None, frozenset({"YES", "NO"})),),
    "RecognizableVisualFeatures": ((None, frozenset({"YES", "NO"})),),
    "PresentationIntentType": ((None, frozenset({"FOR PRESENTATION", "FOR PROCESSING"})),),
    "PresentationLUTShape": ((None, frozenset({"IDENTITY", "INVERSE", "LIN OD"})),),
    "CompletionFlag": ((None, frozenset({"PARTIAL", "COMPLETE"})),),
    "VerificationFlag": ((None, frozenset({"UNVERIFIED", "VERIFIED"})),),
    "RTPlanGeometry": ((None, frozenset({"PATIENT", "TREATMENT_DEVICE"})),),
    "BeamType": ((None, frozenset({"STATIC", "DYNAMIC"})),),
}

_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UR", "LO", "SH", "ST", "LT", "PN", "UC"}
)


def _check_elements(ds: Dataset, out: _Findings, *, explicit_vr: bool, prefix: str) -> None:
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0:
            continue
        try:
            dict_vr, dict_vm, _name, _retired, keyword = get_entry(tag)
        except KeyError:  # not in the dictionary: nothing to check it against
            continue
        keyword = keyword or str(tag)
        name = prefix + keyword
        try:
            elem = ds[tag]
            value = elem.value
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot read is the finding
            out.add(Severity.ERROR, "decode", "", name, f"{keyword} does not decode: {exc}")
            continue
        vr = str(elem.VR)
        allowed = dict_vr.split(" or ")
        # "UN" and a still ambiguous "OB or OW" (built in memory) say nothing about the sender.
        if explicit_vr and vr not in allowed and vr != "UN" and " or " not in vr:
            out.add(
                Severity.ERROR,
                "vr",
                "",
                name,
                f"{keyword} has VR {vr}, the dictionary says {' or '.join(allowed)}",
            )
        if vr == "SQ":
            if isinstance(value, Sequence):
                for i, item in enumerate(value):
                    _check_elements(item, out, explicit_vr=explicit_vr, prefix=f"{name}[{i}].")
            continue
        if value is None or value == "" or (isinstance(value, (list, MultiValue)) and not value):
            continue
        _check_vm(elem.VM, dict_vm, keyword, name, out)
        values = list(value) if isinstance(value, (list, MultiValue)) else [value]
        if vr == "UI":
            _check_uids(values, keyword, name, out)
        elif vr in _TEXT_VRS:
            _check_text(vr, values, keyword, name, out)
        rules = _ENUMERATED.get(keyword)
        if rules:
            _check_enumerated(rules, values, keyword, name, out)
    if "BitsAllocated" in ds:
        _check_bits(ds, out, prefix)


def _check_vm(vm: int, expected: str, keyword: str, name: str, out: _Findings) -> None:
    if not _vm_allows(expected, vm):
        out.add(
            Severity.ERROR, "vm", "", name, f"{keyword} has {vm} values, the dictionary says VM {expected}"
        )


def _vm_allows(expected: str, vm: int) -> bool:
    low, _sep, high = expected.partition("-")
    try:
        minimum = int(low)
    except ValueError:
        return True
    if not high:
        return vm == minimum
    if high.endswith("n"):  # "1-n", "2-2n", "3-3n": at least low, a multiple of the step
        step = int(high[:-1] or 1)
        return vm >= minimum and vm % step == 0
    return minimum <= vm <= int(high)


def _check_uids(values: Iterable[Any], keyword: str, name: str, out: _Findings) -> None:
    for value in values:
        if value in (None, ""):
            continue
        try:
            require_uid(str(value), keyword)
        except InvalidIdentifier as exc:
            out.add(Severity.ERROR, "uid", "", name, f"{exc}: {str(value)!r}")
            return


def _check_text(vr: str, values: Iterable[Any], keyword: str, name: str, out: _Findings) -> None:
    validator: Callable[[str, Any], tuple[bool, str]] | None = VALIDATORS.get(vr)
    if validator is None:
        return
    for value in values:
        text = getattr(value, "original_string", None) or str(value)
        if vr == "PN" and not isinstance(value, str):
            text = str(value)
        try:
            ok, message = validator(vr, text)
        except Exception as exc:  # noqa: BLE001 - a validator that trips over a value: report it
            ok, message = False, str(exc)
        if not ok:
            message = message.split(" Please see", 1)[0]
            out.add(Severity.WARNING, "value", "", name, f"{keyword}: {message}")
            return


def _check_enumerated(
    rules: tuple[tuple[int | None, frozenset[str]], ...],
    values: list[Any],
    keyword: str,
    name: str,
    out: _Findings,
) -> None:
    for position, allowed in rules:
        chosen = values if position is None else values[position : position + 1]
        for value in chosen:
            text = str(value).strip()
            if text and text not in allowed:
                out.add(
                    Severity.ERROR,
                    "enumerated",
                    "",
                    name,
                    f"{keyword} value {text!r} is not one of {', '.join(sorted(allowed))}",
                )
                return


def _check_bits(ds: Dataset, out: _Findings, prefix: str) -> None:
    allocated = _number(ds, "BitsAllocated")
    stored = _number(ds, "BitsStored")
    high = _number(ds, "HighBit")
    if allocated is not None and allocated != 1 and allocated % 8:
        out.add(
            Severity.ERROR,
            "consistency",
            "image-pixel",
            prefix + "BitsAllocated",
            f"Bits Allocated {allocated} is neither 1 nor a multiple of 8",
        )
    if allocated is not None and stored is not None and not 0 < stored <= allocated:
        out.add(
            Severity.ERROR,
            "consistency",
            "image-pixel",
            prefix + "BitsStored",
            f"Bits Stored {stored} is not between 1 and Bits Allocated {allocated}",
        )
    if stored is not None and high is not None and high != stored - 1:
        out.add(
            Severity.ERROR,
            "consistency",
            "image-pixel",
            prefix + "HighBit",
            f"High Bit {high} is not Bits Stored - 1 ({stored - 1})",
        )

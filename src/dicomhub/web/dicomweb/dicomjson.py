"""Query matches as DICOM JSON (PS3.18 F.2) and Native DICOM Model XML (PS3.19 A.1).

A QIDO-RS response of a hundred studies must not cost a hundred pydicom
Datasets: values that come from index columns (plain strings) are written
directly; only values taken from a stored header (pydicom ``DataElement``,
sequences in particular) go through pydicom's own ``to_json_dict``. The XML
form is derived from the JSON form, so both always carry the same content.

References
----------
PS3.18 F.2 (DICOM JSON Model), PS3.19 A.1 (Native DICOM Model).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement

from dicomhub.model.match import Match

__all__ = [
    "NATIVE_DICOM_NAMESPACE",
    "attributes_to_xml",
    "match_to_json",
    "match_to_xml",
    "matches_to_json_bytes",
]

NATIVE_DICOM_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

# VRs whose value is one text that may contain a backslash (no multiplicity).
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_BULK_THRESHOLD = 1024
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def _bulk_uri(elem: DataElement) -> str:
    return f"bulkdata:{elem.tag:08X}"


def _number(text: str, vr: str) -> int | float | str:
    text = text.strip()
    try:
        if vr == "IS":
            return int(text)
        as_float = float(text)
    except ValueError:
        return text  # kept as received rather than dropped
    if as_float.is_integer() and "." not in text and "e" not in text.lower():
        return int(as_float)
    return as_float


def _person_name(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for group, part in zip(_PN_GROUPS, text.split("="), strict=False):
        if part:
            out[group] = part
    return out


def _plain_values(vr: str, value: str | list[str]) -> list[Any]:
    if isinstance(value, list):
        texts = [str(v) for v in value]
    elif vr in _SINGLE_TEXT_VRS:
        texts = [value]
    else:
        texts = value.split("\\")
    if vr == "PN":
        return [_person_name(t) if t else None for t in texts]
    if vr in ("IS", "DS"):
        return [_number(t, vr) if t.strip() else None for t in texts]
    if vr == "AT":
        return [t.upper() for t in texts]
    return [t if t != "" else None for t in texts]


def _attribute(vr: str, value: Any) -> dict[str, Any]:
    if isinstance(value, DataElement):
        if not isinstance(value.value, str) or value.VR == "PN":
            # Sequences, numbers, binary values, multi-valued elements.
            result: dict[str, Any] = value.to_json_dict(_bulk_uri, _BULK_THRESHOLD)
            return result
        vr, value = value.VR, value.value
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "SQ":
        return {"vr": vr}  # a sequence asked for but not held: empty
    values = _plain_values(vr, value)
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def match_to_json(match: Match) -> dict[str, Any]:
    """One match as a DICOM JSON object, attributes in tag order.

    Empty attributes carry only their ``vr``; IS and DS values are numbers;
    person names are objects with ``Alphabetic``/``Ideographic``/``Phonetic``.
    """
    return {f"{tag:08X}": _attribute(vr, value) for tag, (vr, value) in sorted(match.values.items())}


def matches_to_json_bytes(matches: Iterable[Match]) -> bytes:
    """A JSON array of matches, UTF-8 encoded."""
    return json.dumps([match_to_json(m) for m in matches], ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


@functools.lru_cache(maxsize=4096)
def _keyword(tag: str) -> str:
    try:
        return str(keyword_for_tag(int(tag, 16)) or "")
    except ValueError:
        return ""


def _xml_person_name(number: int, value: Mapping[str, str]) -> str:
    groups = []
    for group in _PN_GROUPS:
        text = value.get(group)
        if not text:
            continue
        comps = "".join(
            f"<{name}>{escape(part)}</{name}>"
            for name, part in zip(_PN_COMPONENTS, text.split("^"), strict=False)
            if part
        )
        groups.append(f"<{group}>{comps}</{group}>")
    return f'<PersonName number="{number}">{"".join(groups)}</PersonName>'


def _xml_attribute(tag: str, attr: Mapping[str, Any]) -> str:
    vr = str(attr.get("vr", "UN"))
    keyword = _keyword(tag)
    head = f'<DicomAttribute tag="{tag}" vr="{vr}"'
    if keyword:
        head += f' keyword="{keyword}"'
    head += ">"
    body: list[str] = []
    if "Value" in attr:
        for n, value in enumerate(attr["Value"], start=1):
            if vr == "SQ":
                body.append(f'<Item number="{n}">{attributes_to_xml(value or {})}</Item>')
            elif vr == "PN":
                body.append(_xml_person_name(n, value or {}))
            elif value is None:
                body.append(f'<Value number="{n}"></Value>')
            else:
                body.append(f'<Value number="{n}">{escape(str(value))}</Value>')
    elif "BulkDataURI" in attr:
        body.append(f"<BulkData uri={quoteattr(str(attr['BulkDataURI']))}/>")
    elif "InlineBinary" in attr:
        body.append(f"<InlineBinary>{escape(str(attr['InlineBinary']))}</InlineBinary>")
    return head + "".join(body) + "</DicomAttribute>"


def attributes_to_xml(obj: Mapping[str, Any]) -> str:
    """The ``DicomAttribute`` elements of a DICOM JSON object (no root element)."""
    return "".join(_xml_attribute(tag, obj[tag]) for tag in sorted(obj))


def match_to_xml(match: Match) -> bytes:
    """One match as a PS3.19 ``NativeDicomModel`` XML document, UTF-8 encoded."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<NativeDicomModel xmlns="{NATIVE_DICOM_NAMESPACE}">'
        f"{attributes_to_xml(match_to_json(match))}</NativeDicomModel>\n"
    ).encode()

"""HL7 v2 messages -> order service calls, and the ACK that answers each.

Read (docs/orders.md has the table of segments and fields):

- ``ORM^O01`` and ``OMI^O23``: one order per ORC group, all applied or none; ORC-1 NW places,
  XO replaces, CA cancels, DC discontinues, SC moves the steps to ORC-5
  (IP, CM, DC, CA); the order is named by its Accession Number (OBR-18 or
  IPC-1), else the placer order number (ORC-2 or OBR-2).
- ``ADT^A01``, ``A04`` and ``A08``: the patient of PID is created or updated.
- ``ADT^A40``: the patient of MRG-1 is merged into the patient of PID.

Every message is answered: ``MSA|AA`` when it was applied; ``AR`` (with an
ERR segment, HL7 table 0357 code) when the message cannot be read or is not
supported (undecodable text, no MSH, unknown type, unknown MSH-18 character
set); ``AE`` when it was read but cannot be applied (a required field is
missing, an unknown order, an illegal state change, refused access).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import hl7

from dicomhub.errors import Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.orders import (
    CodedEntry,
    IllegalTransition,
    Order,
    Patient,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)
from dicomhub.services.access import Forbidden
from dicomhub.services.orders import OrderKey, OrderService

__all__ = ["CHARSETS", "Hl7Reject", "handle", "nak"]

LOGGER = logging.getLogger("dicomhub.hl7")

#: MSH-18 values (HL7 table 0211) and the Python codec of each; no MSH-18 is ASCII.
CHARSETS: dict[str, str] = {
    "": "ascii",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
}

# HL7 table 0357 (message error condition codes) used here.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_RECORD_LOCKED = "206"
APPLICATION_INTERNAL_ERROR = "207"

_SUPPORTED = {("ORM", "O01"), ("OMI", "O23"), ("ADT", "A01"), ("ADT", "A04"), ("ADT", "A08"), ("ADT", "A40")}
_ORDER_CONTROLS = ("NW", "XO", "CA", "DC", "SC")
# ORC-5 order status (HL7 table 0038) -> the state SC moves the steps to.
_ORDER_STATUS = {
    "IP": StepStatus.IN_PROGRESS,
    "CM": StepStatus.COMPLETED,
    "DC": StepStatus.DISCONTINUED,
    "CA": StepStatus.CANCELLED,
}
# OBR-27.6 / TQ1-9 priority -> Requested Procedure Priority.
_PRIORITY = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "MEDIUM", "T": "MEDIUM"}
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O"}  # U (unknown) and N (not applicable): empty
_TS = re.compile(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?")
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_control_ids = itertools.count(1)


class Hl7Reject(Exception):
    """Why a message is answered AE or AR: the ACK code, the table 0357 code, the text,
    and where (segment and field, e.g. ``PID-3``)."""

    def __init__(self, ack_code: str, code: str, text: str, location: str = "") -> None:
        super().__init__(text)
        self.ack_code = ack_code
        self.code = code
        self.text = text
        self.location = location


# ---------------------------------------------------------------- decoding


def _msh_fields(raw: bytes) -> list[str]:
    """The fields of the MSH segment, read byte-transparently (latin-1) before the
    character set is known; [] when the message does not start with MSH."""
    head = raw.split(b"\r", 1)[0].decode("latin-1")
    if not head.startswith("MSH") or len(head) < 4:
        return []
    return head.split(head[3])


def decode(raw: bytes) -> str:
    """The text of ``raw`` in the character set its MSH-18 declares."""
    fields = _msh_fields(raw)
    if not fields:
        raise Hl7Reject(
            "AR",
            SEGMENT_SEQUENCE_ERROR,
            "not an HL7 v2 message: it does not start with an MSH segment",
            "MSH",
        )
    declared = fields[17].split(fields[1][:1] or "^")[0].strip() if len(fields) > 17 else ""
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        known = ", ".join(repr(k) for k in CHARSETS if k)
        raise Hl7Reject(
            "AR",
            TABLE_VALUE_NOT_FOUND,
            f"character set {declared!r} is not supported (MSH-18: {known})",
            "MSH-18",
        )
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise Hl7Reject(
            "AR",
            DATA_TYPE_ERROR,
            f"the message is not valid {declared or 'ASCII'} text (byte {exc.start})",
            "MSH-18",
        ) from None


def _value(segment: Any, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """One value of a parsed segment ("" when absent), unescaped."""
    try:
        node: Any = segment[field]
    except IndexError:
        return ""
    for index in (rep, comp, sub):
        if isinstance(node, str):
            return node if index == 1 else ""
        if index > len(node):
            return ""
        node = node[index - 1]
    return str(node)


def _check_encoding_characters(text: str) -> None:
    """Refuse an MSH-1/MSH-2 whose separators (with the defaults the parser fills
    in) are not all different: the ``hl7`` package would fail an assertion."""
    plan = hl7.parser.create_parse_plan(text)
    used = plan.separators + plan.esc
    if len(set(used)) != len(used):
        raise Hl7Reject(
            "AR",
            DATA_TYPE_ERROR,
            f"MSH-1/MSH-2 encoding characters {text[3:8]!r} are not distinct separators",
            "MSH-2",
        )


# ---------------------------------------------------------------- mapping


@dataclasses.dataclass
class _Message:
    parsed: Any
    text: str

    def segments(self, name: str) -> list[Any]:
        return [s for s in self.parsed if str(s[0]) == name]

    def first(self, name: str) -> Any | None:
        found = self.segments(name)
        return found[0] if found else None

    def get(self, segment: Any, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        if segment is None:
            return ""
        value = _value(segment, field, rep, comp, sub)
        return str(self.parsed.unescape(value)).strip() if "\\" in value else value.strip()


def _person_name(m: _Message, seg: Any, field: int, offset: int = 0) -> str:
    """An XPN (or XCN from ``offset`` 1) as a DICOM PN: Family^Given^Middle^Prefix^Suffix."""
    family, given, middle, suffix, prefix = (m.get(seg, field, 1, offset + i) for i in range(1, 6))
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def _date(m: _Message, seg: Any, field: int, where: str) -> str:
    text = m.get(seg, field)
    if not text:
        return ""
    match = _TS.match(text)
    if not match:
        raise Hl7Reject("AE", DATA_TYPE_ERROR, f"{where} {text!r} is not a date (YYYYMMDD...)", where)
    return match.group(1)


def _datetime(text: str, where: str) -> dt.datetime | None:
    if not text:
        return None
    match = _TS.match(text)
    try:
        if not match:
            raise ValueError(text)
        digits = match.group(0).ljust(14, "0")
        return dt.datetime.strptime(digits[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise Hl7Reject("AE", DATA_TYPE_ERROR, f"{where} {text!r} is not a date and time", where) from None


def _issuer(m: _Message, seg: Any, field: int, rep: int = 1) -> str:
    return m.get(seg, field, rep, 4, 1) or m.get(seg, field, rep, 4, 2)


def _patient(m: _Message) -> Patient:
    pid = m.first("PID")
    if pid is None:
        raise Hl7Reject("AE", SEGMENT_SEQUENCE_ERROR, "the message has no PID segment", "PID")
    patient_id = m.get(pid, 3, 1, 1)
    if not patient_id:
        raise Hl7Reject("AE", REQUIRED_FIELD_MISSING, "PID-3 (patient identifier list) is empty", "PID-3")
    others = []
    for rep in range(2, 20):
        other = m.get(pid, 3, rep, 1)
        if not other:
            break
        others.append(str(PatientRef(other, _issuer(m, pid, 3, rep))))
    return Patient(
        ref=PatientRef(patient_id, _issuer(m, pid, 3)),
        patient_name=_person_name(m, pid, 5),
        patient_birth_date=_date(m, pid, 7, "PID-7"),
        patient_sex=_SEX.get(m.get(pid, 8).upper(), ""),
        other_patient_ids=tuple(others),
    )


def _groups(m: _Message) -> list[list[Any]]:
    """The ORC groups: each ORC with the segments up to the next ORC."""
    groups: list[list[Any]] = []
    for seg in m.parsed:
        name = str(seg[0])
        if name == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


def _in(group: list[Any], name: str) -> list[Any]:
    return [s for s in group if str(s[0]) == name]


def _order(m: _Message, group: list[Any], patient: Patient) -> Order:
    orc = group[0]
    obr = next(iter(_in(group, "OBR")), None)
    ipcs = _in(group, "IPC")
    tq1 = next(iter(_in(group, "TQ1")), None)
    zds = next(iter(_in(group, "ZDS")), None)
    pv1 = m.first("PV1")
    accession = m.get(obr, 18) or (m.get(ipcs[0], 1) if ipcs else "")
    code = CodedEntry(m.get(obr, 4, 1, 1), m.get(obr, 4, 1, 3), m.get(obr, 4, 1, 2))
    start_text = m.get(tq1, 7) or m.get(obr, 36) or m.get(obr, 27, 1, 4) or m.get(orc, 7, 1, 4)
    start = _datetime(start_text, "TQ1-7/OBR-27.4")
    priority = _PRIORITY.get((m.get(tq1, 9) or m.get(obr, 27, 1, 6) or m.get(orc, 7, 1, 6)).upper()[:1], "")
    step_description = m.get(obr, 4, 1, 5) or code.meaning
    performing = _person_name(m, obr, 34, 1) if obr is not None else ""
    procedures: list[RequestedProcedure] = []
    if ipcs:
        by_id: dict[str, RequestedProcedure] = {}
        for ipc in ipcs:
            rp_id = m.get(ipc, 2) or accession
            rp = by_id.get(rp_id) or RequestedProcedure(
                rp_id, code.meaning[:64], code, m.get(ipc, 3), priority
            )
            step = ScheduledProcedureStep(
                step_id=m.get(ipc, 4) or rp_id,
                modality=m.get(ipc, 5),
                description=step_description[:64],
                station_ae_title=m.get(ipc, 9),
                station_name=m.get(ipc, 7),
                location=m.get(ipc, 8),
                start=start,
                performing_physician=performing,
                protocol_code=CodedEntry(m.get(ipc, 6, 1, 1), m.get(ipc, 6, 1, 3), m.get(ipc, 6, 1, 2)),
            )
            by_id[rp_id] = dataclasses.replace(rp, steps=(*rp.steps, step))
        procedures = list(by_id.values())
    elif obr is not None:
        rp_id = m.get(obr, 19) or accession
        procedures = [
            RequestedProcedure(
                rp_id,
                code.meaning[:64],
                code,
                m.get(zds, 1, 1, 1),
                priority,
                steps=(
                    ScheduledProcedureStep(
                        step_id=m.get(obr, 20) or rp_id,
                        modality=m.get(obr, 24),
                        description=step_description[:64],
                        station_ae_title=m.get(obr, 21),
                        start=start,
                        performing_physician=performing,
                    ),
                ),
            )
        ]
    referring = _person_name(m, pv1, 8, 1) if pv1 is not None else ""
    if not referring and obr is not None:
        referring = _person_name(m, obr, 16, 1)
    return Order(
        accession_number=accession,
        patient=patient.ref,
        placer_order_number=m.get(orc, 2, 1, 1) or m.get(obr, 2, 1, 1),
        filler_order_number=m.get(orc, 3, 1, 1) or m.get(obr, 3, 1, 1),
        referring_physician=referring,
        reason=m.get(obr, 31, 1, 2) or m.get(obr, 31, 1, 1),
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        procedures=tuple(procedures),
        source="hl7",
    )


def _apply_order(
    m: _Message, group: list[Any], patient: Patient, orders: OrderService, caller: Caller
) -> None:
    orc = group[0]
    control = m.get(orc, 1).upper()
    if control not in _ORDER_CONTROLS:
        raise Hl7Reject(
            "AE", TABLE_VALUE_NOT_FOUND,
            f"ORC-1 order control {control!r} is not supported ({', '.join(_ORDER_CONTROLS)})", "ORC-1",
        )  # fmt: skip
    order = _order(m, group, patient)
    if control == "NW":
        if not order.procedures:
            raise Hl7Reject("AE", SEGMENT_SEQUENCE_ERROR, "ORC NW without an OBR segment", "OBR")
        orders.place_order(order, caller, patient)
        return
    if not (order.accession_number or order.placer_order_number):
        raise Hl7Reject(
            "AE", REQUIRED_FIELD_MISSING,
            "the order is named by neither an Accession Number (OBR-18, IPC-1) "
            "nor a placer order number (ORC-2)",
            "ORC-2",
        )  # fmt: skip
    key = OrderKey(accession_number=order.accession_number, placer=order.placer_order_number)
    if control == "XO":
        orders.replace_order(key, order, caller, patient)
    elif control == "CA":
        orders.cancel_order(key, caller)
    elif control == "DC":
        orders.discontinue_order(key, caller)
    else:  # SC
        status = m.get(orc, 5).upper()
        if status == "SC":
            return  # still scheduled: nothing moves
        to = _ORDER_STATUS.get(status)
        if to is None:
            raise Hl7Reject(
                "AE", TABLE_VALUE_NOT_FOUND, f"ORC-5 order status {status!r} (IP, CM, DC, CA, SC)", "ORC-5"
            )
        orders.move_step(key, None, to, caller)


def _apply(m: _Message, kind: tuple[str, str], orders: OrderService, caller: Caller) -> None:
    patient = _patient(m)
    if kind[0] in ("ORM", "OMI"):
        groups = _groups(m)
        if not groups:
            raise Hl7Reject("AE", SEGMENT_SEQUENCE_ERROR, f"{kind[0]} without an ORC segment", "ORC")
        # One message, one outcome: a later group that fails takes the earlier ones
        # back with it, so the AE means "nothing applied" and a corrected resend works.
        with orders.unit_of_work():
            for group in groups:
                _apply_order(m, group, patient, orders, caller)
    elif kind[1] == "A40":
        mrg = m.first("MRG")
        prior = m.get(mrg, 1, 1, 1)
        if mrg is None or not prior:
            raise Hl7Reject(
                "AE", REQUIRED_FIELD_MISSING, "ADT^A40 needs MRG-1 (the prior patient identifier)", "MRG-1"
            )
        orders.merge_patients(patient, PatientRef(prior, _issuer(m, mrg, 1)), caller, "hl7")
    else:
        orders.put_patient(patient, caller)


# ---------------------------------------------------------------- acknowledgements


def _escape(text: str) -> str:
    for plain, escaped in _ESCAPES:
        text = text.replace(plain, escaped)
    return text.replace("\r", " ").replace("\n", " ")


def _ack(fields: Sequence[str], ack_code: str, reject: Hl7Reject | None, codec: str) -> bytes:
    def field(n: int) -> str:
        # fields[0] is "MSH", fields[1] the encoding characters (MSH-2): MSH-n is fields[n - 1].
        return _escape(fields[n - 1]) if len(fields) >= n else ""

    component = fields[1][:1] if len(fields) > 1 and fields[1] else "^"
    trigger = (fields[8].split(component) + ["", ""])[1] if len(fields) > 8 else ""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    control = f"DH{now}{next(_control_ids):06d}"
    charset = fields[17] if len(fields) > 17 and codec != "ascii" else ""
    msh = (
        f"MSH|^~\\&|{field(5)}|{field(6)}|{field(3)}|{field(4)}|{now}||ACK^{_escape(trigger)}^ACK|{control}|P|"
        f"{field(12) or '2.5'}|||||{_escape(charset)}"
    ).rstrip("|")
    segments = [msh]
    text = _escape(reject.text)[:200] if reject else ""
    segments.append(f"MSA|{ack_code}|{field(10)}|{text}".rstrip("|"))
    if reject is not None:
        location = reject.location.replace("-", "^").replace(".", "^")
        segments.append(f"ERR||{location}|{reject.code}^{text}^HL70357|E||||{_escape(reject.text)[:250]}")
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")


def nak(raw: bytes, reject: Hl7Reject) -> bytes:
    """The negative ACK of ``raw`` (whatever could be read of its MSH)."""
    fields = _msh_fields(raw)
    declared = fields[17].upper().strip() if len(fields) > 17 else ""
    return _ack(fields, reject.ack_code, reject, CHARSETS.get(declared, "ascii"))


def _reject_of(exc: DicomhubError) -> Hl7Reject:
    if isinstance(exc, Forbidden):
        return Hl7Reject("AE", APPLICATION_RECORD_LOCKED, str(exc))
    if isinstance(exc, NotFound):
        return Hl7Reject("AE", UNKNOWN_KEY_IDENTIFIER, str(exc))
    if isinstance(exc, IllegalTransition):
        return Hl7Reject("AE", APPLICATION_RECORD_LOCKED, str(exc))
    if isinstance(exc, Conflict):
        return Hl7Reject("AE", DUPLICATE_KEY_IDENTIFIER, str(exc))
    if isinstance(exc, InvalidRequest):
        return Hl7Reject("AE", DATA_TYPE_ERROR, str(exc))
    return Hl7Reject("AE", APPLICATION_INTERNAL_ERROR, f"the message could not be applied: {exc}")


def handle(raw: bytes, orders: OrderService, caller_of: Callable[[str], Caller]) -> bytes:
    """Apply one HL7 v2 message (the bytes inside an MLLP frame) and return its ACK.

    ``caller_of(sending_application)``: the caller the message acts as.
    Never raises for anything the message holds: every failure is an AE or AR.
    """
    fields = _msh_fields(raw)
    try:
        text = decode(raw)
        try:
            message_text = text.replace("\n", "\r").rstrip("\r")
            _check_encoding_characters(message_text)
            parsed = hl7.parse(message_text)
        except (hl7.ParseException, IndexError, ValueError) as exc:
            raise Hl7Reject(
                "AR", SEGMENT_SEQUENCE_ERROR, f"the message does not parse: {exc}", "MSH"
            ) from None
        m = _Message(parsed, text)
        msh = m.first("MSH")
        kind = (m.get(msh, 9, 1, 1).upper(), m.get(msh, 9, 1, 2).upper())
        if not m.get(msh, 10):
            raise Hl7Reject("AR", REQUIRED_FIELD_MISSING, "MSH-10 (message control id) is empty", "MSH-10")
        if kind not in _SUPPORTED:
            code = (
                UNSUPPORTED_EVENT_CODE if kind[0] in {k for k, _ in _SUPPORTED} else UNSUPPORTED_MESSAGE_TYPE
            )
            supported = ", ".join(f"{a}^{b}" for a, b in sorted(_SUPPORTED))
            raise Hl7Reject(
                "AR", code, f"message type {kind[0]}^{kind[1]} is not supported ({supported})", "MSH-9"
            )
        caller = caller_of(m.get(msh, 3, 1, 1))
        try:
            _apply(m, kind, orders, caller)
        except DicomhubError as exc:
            raise _reject_of(exc) from exc
    except Hl7Reject as reject:
        LOGGER.warning(
            "HL7 message %s answered %s: %s",
            fields[9] if len(fields) > 9 else "?",
            reject.ack_code,
            reject.text,
        )
        return nak(raw, reject)
    except Exception as exc:  # noqa: BLE001 - a bug must cost one message an AE, never the listener
        LOGGER.exception("HL7 message could not be applied")
        return nak(raw, Hl7Reject("AE", APPLICATION_INTERNAL_ERROR, f"internal error: {type(exc).__name__}"))
    declared = fields[17].upper().strip() if len(fields) > 17 else ""
    return _ack(fields, "AA", None, CHARSETS.get(declared, "ascii"))

"""DIMSE messages: the group 0000 command sets of PS3.7 9 (DIMSE-C) and 10 (DIMSE-N).

A command set is always implicit VR little endian (PS3.7 6.3.1).  Decoding
is hand-rolled and cheap (one :class:`Command` per message, the hot path of
C-STORE); encoding writes the elements in ascending tag order, as the
command dictionary (PS3.7 Annex E) requires.

References
----------
PS3.7 Sections 9.3 (DIMSE-C), 10.3 (DIMSE-N), E (command dictionary),
C (status type encoding).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Final

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomhub.dimse.pdu import ProtocolError

__all__ = [
    "N_REQUESTS",
    "Command",
    "NRequest",
    "NResponse",
    "attribute_tags",
    "decode_dataset",
    "encode_dataset",
    "encode_command",
    "encode_n_request",
    "encode_n_response",
    "encode_request",
    "encode_response",
    "encode_store_rq",
    "parse_command",
]

# DIMSE command fields (PS3.7 Annex E).
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF
N_EVENT_REPORT_RQ: Final = 0x0100
N_EVENT_REPORT_RSP: Final = 0x8100
N_GET_RQ: Final = 0x0110
N_GET_RSP: Final = 0x8110
N_SET_RQ: Final = 0x0120
N_SET_RSP: Final = 0x8120
N_ACTION_RQ: Final = 0x0130
N_ACTION_RSP: Final = 0x8130
N_CREATE_RQ: Final = 0x0140
N_CREATE_RSP: Final = 0x8140
N_DELETE_RQ: Final = 0x0150
N_DELETE_RSP: Final = 0x8150
#: The DIMSE-N requests (PS3.7 10.3) and their names.
N_REQUESTS: Final = {
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT",
    N_GET_RQ: "N-GET",
    N_SET_RQ: "N-SET",
    N_ACTION_RQ: "N-ACTION",
    N_CREATE_RQ: "N-CREATE",
    N_DELETE_RQ: "N-DELETE",
}
# Requests that name their SOP Class/Instance in the Affected elements
# (0000,0002)/(0000,1000); the other N requests use Requested (0000,0003)/(0000,1001).
_N_AFFECTED: Final = frozenset({N_EVENT_REPORT_RQ, N_CREATE_RQ})
NO_DATA_SET: Final = 0x0101
DATA_SET_PRESENT: Final = 0x0001

# Command set element numbers (group 0000).
E_GROUP_LENGTH: Final = 0x0000
E_AFFECTED_SOP_CLASS: Final = 0x0002
E_REQUESTED_SOP_CLASS: Final = 0x0003
E_COMMAND_FIELD: Final = 0x0100
E_MESSAGE_ID: Final = 0x0110
E_MESSAGE_ID_RSP: Final = 0x0120
E_MOVE_DESTINATION: Final = 0x0600
E_PRIORITY: Final = 0x0700
E_DATA_SET_TYPE: Final = 0x0800
E_STATUS: Final = 0x0900
E_ERROR_COMMENT: Final = 0x0902
E_AFFECTED_SOP_INSTANCE: Final = 0x1000
E_REQUESTED_SOP_INSTANCE: Final = 0x1001
E_EVENT_TYPE_ID: Final = 0x1002
E_ATTRIBUTE_IDENTIFIER_LIST: Final = 0x1005
E_ACTION_TYPE_ID: Final = 0x1008
E_REMAINING: Final = 0x1020
E_COMPLETED: Final = 0x1021
E_FAILED: Final = 0x1022
E_WARNING: Final = 0x1023
E_MOVE_ORIGINATOR_AE: Final = 0x1030
E_MOVE_ORIGINATOR_ID: Final = 0x1031

ELEMENT_HEADER: Final = struct.Struct("<HHI")
UINT2_LE: Final = struct.Struct("<H")
US_ELEMENT: Final = struct.Struct("<HHIH")
UL_ELEMENT: Final = struct.Struct("<HHII")


@dataclass(slots=True)
class Command:
    """The fields of a command set (request or response) this package acts on."""

    command_field: int
    message_id: int | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    has_data_set: bool
    move_originator_ae_title: str | None
    move_originator_message_id: int | None
    message_id_responded_to: int | None = None
    status: int | None = None
    error_comment: str | None = None
    move_destination: str | None = None
    # N-ACTION-RQ: Requested SOP Class/Instance UID and Action Type ID;
    # N-EVENT-REPORT: Event Type ID.
    requested_sop_class_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    event_type_id: int | None = None
    # N-GET-RQ: the raw Attribute Identifier List (AT values), None when absent.
    attribute_identifier_list: bytes | None = None
    # C-GET/C-MOVE-RSP: Number of Remaining/Completed/Failed/Warning Sub-operations.
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


def parse_command(data: bytes) -> Command:
    """Parse a command set.

    Raises
    ------
    ProtocolError
        If it is not a well-formed group 0000 element list or lacks the
        Command Field.
    """
    values: dict[int, bytes] = {}
    unpack = ELEMENT_HEADER.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("truncated command element")
        group, element, length = unpack(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError(f"invalid command element ({group:04X},{element:04X})")
        values[element] = data[pos : pos + length]
        pos += length

    def us(element: int) -> int | None:
        raw = values.get(element)
        if raw is None:
            return None
        if len(raw) != 2:
            raise ProtocolError(f"(0000,{element:04X}) is not a US value")
        return int(UINT2_LE.unpack(raw)[0])

    def text(element: int) -> str | None:
        raw = values.get(element)
        if raw is None:
            return None
        # UI is padded with NUL, AE/LO with spaces; all ASCII in practice.
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ") or None

    command_field = us(E_COMMAND_FIELD)
    if command_field is None:
        raise ProtocolError("command set without Command Field")
    data_set_type = us(E_DATA_SET_TYPE)
    command = Command(
        command_field=command_field,
        message_id=us(E_MESSAGE_ID),
        sop_class_uid=text(E_AFFECTED_SOP_CLASS),
        sop_instance_uid=text(E_AFFECTED_SOP_INSTANCE),
        # PS3.7 E.1: 0x0101 means "no data set", any other value means one follows.
        has_data_set=data_set_type is not None and data_set_type != NO_DATA_SET,
        move_originator_ae_title=text(E_MOVE_ORIGINATOR_AE),
        move_originator_message_id=us(E_MOVE_ORIGINATOR_ID),
    )
    if command_field & 0x8000 or command_field == C_CANCEL_RQ:
        command.message_id_responded_to = us(E_MESSAGE_ID_RSP)
        command.status = us(E_STATUS)
        command.error_comment = text(E_ERROR_COMMENT)
        if command_field in (C_GET_RSP, C_MOVE_RSP):
            command.remaining = us(E_REMAINING)
            command.completed = us(E_COMPLETED)
            command.failed = us(E_FAILED)
            command.warning = us(E_WARNING)
    elif command_field == C_MOVE_RQ:
        command.move_destination = text(E_MOVE_DESTINATION)
    elif command_field in N_REQUESTS and command_field not in _N_AFFECTED:
        command.requested_sop_class_uid = text(E_REQUESTED_SOP_CLASS)
        command.requested_sop_instance_uid = text(E_REQUESTED_SOP_INSTANCE)
        if command_field == N_ACTION_RQ:
            command.action_type_id = us(E_ACTION_TYPE_ID)
        elif command_field == N_GET_RQ:
            command.attribute_identifier_list = values.get(E_ATTRIBUTE_IDENTIFIER_LIST)
    if command_field in (N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP):
        command.event_type_id = us(E_EVENT_TYPE_ID)
    elif command_field == N_ACTION_RSP:
        command.action_type_id = us(E_ACTION_TYPE_ID)
    return command


def attribute_tags(raw: bytes) -> tuple[int, ...]:
    """Decode an *Attribute Identifier List* (AT, VM 1-n) into tags (group << 16 | element).

    Raises
    ------
    ValueError
        If its length is not a multiple of 4 (PS3.5 6.2: AT is two US values).
    """
    if len(raw) % 4:
        raise ValueError(f"Attribute Identifier List of {len(raw)} bytes")
    return tuple((group << 16) | element for group, element in _AT_VALUE.iter_unpack(raw))


_AT_VALUE: Final = struct.Struct("<HH")


@dataclass(frozen=True, slots=True)
class NRequest:
    """A decoded DIMSE-N request (PS3.7 10.1), as a provider receives it.

    Attributes
    ----------
    command_field : int
        :data:`N_EVENT_REPORT_RQ`, :data:`N_GET_RQ`, :data:`N_SET_RQ`,
        :data:`N_ACTION_RQ`, :data:`N_CREATE_RQ` or :data:`N_DELETE_RQ`.
    message_id : int
    context_id : int
        The presentation context it came on (a provider sends follow-ups on it).
    sop_class_uid : str
        *Requested SOP Class UID*, or *Affected SOP Class UID* for
        N-EVENT-REPORT and N-CREATE.
    sop_instance_uid : str or None
        *Requested*/*Affected SOP Instance UID*; ``None`` only for an
        N-CREATE that leaves the choice of the instance UID to the SCP.
    transfer_syntax_uid : str
        Of the presentation context; the response's data set uses it too.
    dataset : Dataset or None
        The *Event Information* (N-EVENT-REPORT), *Modification List*
        (N-SET), *Action Information* (N-ACTION) or *Attribute List*
        (N-CREATE), decoded; ``None`` when the request carried none.
    event_type_id, action_type_id : int or None
        N-EVENT-REPORT and N-ACTION only.
    attribute_identifier_list : tuple of int or None
        N-GET only: the tags asked for (``None``: all attributes).
    calling_ae_title : str
        The peer's AE title.
    """

    command_field: int
    message_id: int
    context_id: int
    sop_class_uid: str
    sop_instance_uid: str | None
    transfer_syntax_uid: str
    dataset: Dataset | None = None
    event_type_id: int | None = None
    action_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    calling_ae_title: str = ""

    @property
    def name(self) -> str:
        """The request's name, e.g. ``"N-GET"``."""
        return N_REQUESTS.get(self.command_field, f"0x{self.command_field:04X}")


@dataclass(frozen=True, slots=True)
class NResponse:
    """What a provider answers a DIMSE-N request with (PS3.7 10.1).

    Attributes
    ----------
    status : int
        Of the response; PS3.7 Annex C codes (see :mod:`dicomhub.dimse.status`).
    dataset : Dataset or None
        The response's data set (N-GET *Attribute List*, N-ACTION *Action
        Reply*, N-CREATE/N-SET *Attribute List*, N-EVENT-REPORT *Event Reply*).
    sop_instance_uid : str or None
        The *Affected SOP Instance UID* to answer with; defaults to the
        request's (an N-CREATE without one must set it).
    error_comment : str or None
        Sent with a failure status only.
    attribute_identifier_list : tuple of int or None
        Sent with a failure status only: the tags (``0xGGGGEEEE``) the failure
        concerns (e.g. 0x0120 *Missing Attribute*, 0x0106 *Invalid Attribute Value*).
    after : callable or None
        Called once the response is sent, on the association's thread (for
        example to send an N-EVENT-REPORT that must follow the response).
    """

    status: int
    dataset: Dataset | None = None
    sop_instance_uid: str | None = None
    error_comment: str | None = None
    after: Callable[[], None] | None = None
    attribute_identifier_list: tuple[int, ...] | None = None


def text_element(element: int, value: bytes, pad: bytes) -> bytes:
    """Encode one even-length text element (UI padded with NUL, others with space)."""
    if len(value) & 1:
        value += pad
    return ELEMENT_HEADER.pack(0, element, len(value)) + value


def encode_command(parts: Iterable[bytes]) -> bytes:
    """Prefix already encoded elements (ascending tag order) with the group length."""
    rest = b"".join(parts)
    return UL_ELEMENT.pack(0, E_GROUP_LENGTH, 4, len(rest)) + rest


def _uid(element: int, uid: str) -> bytes:
    return text_element(element, uid.encode("ascii", "replace"), b"\x00")


def encode_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    status: int,
    error_comment: str | None = None,
    *,
    has_data_set: bool = False,
    suboperations: tuple[int | None, int, int, int] | None = None,
) -> bytes:
    """Encode a response command set (elements in ascending tag order).

    Parameters
    ----------
    suboperations : tuple, optional
        *Number of Remaining/Completed/Failed/Warning Sub-operations*
        (C-GET/C-MOVE); a remaining count of ``None`` is left out.
    """
    parts = []
    if sop_class_uid:
        parts.append(_uid(E_AFFECTED_SOP_CLASS, sop_class_uid))
    parts += [
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field),
        US_ELEMENT.pack(0, E_MESSAGE_ID_RSP, 2, message_id),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET),
        US_ELEMENT.pack(0, E_STATUS, 2, status),
    ]
    if error_comment and status != 0x0000:
        comment = error_comment[:64].encode("ascii", "replace")
        parts.append(text_element(E_ERROR_COMMENT, comment, b" "))
    if sop_instance_uid:
        parts.append(_uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid))
    if suboperations is not None:
        remaining, completed, failed, warning = suboperations
        if remaining is not None:
            parts.append(US_ELEMENT.pack(0, E_REMAINING, 2, min(remaining, 0xFFFF)))
        parts += [
            US_ELEMENT.pack(0, E_COMPLETED, 2, min(completed, 0xFFFF)),
            US_ELEMENT.pack(0, E_FAILED, 2, min(failed, 0xFFFF)),
            US_ELEMENT.pack(0, E_WARNING, 2, min(warning, 0xFFFF)),
        ]
    return encode_command(parts)


def encode_n_action_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, action_type_id: int
) -> bytes:
    """Encode an N-ACTION-RSP command set without a data set (PS3.7 10.3.4)."""
    return encode_command(
        [
            _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
            US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, N_ACTION_RSP),
            US_ELEMENT.pack(0, E_MESSAGE_ID_RSP, 2, message_id),
            US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, NO_DATA_SET),
            US_ELEMENT.pack(0, E_STATUS, 2, status),
            _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
            US_ELEMENT.pack(0, E_ACTION_TYPE_ID, 2, action_type_id),
        ]
    )


def encode_n_event_report_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int
) -> bytes:
    """Encode an N-EVENT-REPORT-RQ command set; a data set follows (PS3.7 10.3.1)."""
    return encode_command(
        [
            _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
            US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, N_EVENT_REPORT_RQ),
            US_ELEMENT.pack(0, E_MESSAGE_ID, 2, message_id & 0xFFFF),
            US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT),
            _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
            US_ELEMENT.pack(0, E_EVENT_TYPE_ID, 2, event_type_id),
        ]
    )


def encode_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
    priority: int = 0,
) -> bytes:
    """Encode a C-STORE-RQ command set (a data set follows)."""
    parts = [
        _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, C_STORE_RQ),
        US_ELEMENT.pack(0, E_MESSAGE_ID, 2, message_id & 0xFFFF),
        US_ELEMENT.pack(0, E_PRIORITY, 2, priority),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, 0x0000),
        _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
    ]
    if move_originator_ae_title:
        ae = move_originator_ae_title.strip()[:16].encode("ascii", "replace")
        parts.append(text_element(E_MOVE_ORIGINATOR_AE, ae, b" "))
    if move_originator_message_id is not None:
        parts.append(US_ELEMENT.pack(0, E_MOVE_ORIGINATOR_ID, 2, move_originator_message_id))
    return encode_command(parts)


def encode_request(
    command_field: int,
    message_id: int,
    *,
    affected_sop_class_uid: str | None = None,
    requested_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
    requested_sop_instance_uid: str | None = None,
    has_data_set: bool = False,
    priority: int | None = None,
    move_destination: str | None = None,
    event_type_id: int | None = None,
    action_type_id: int | None = None,
    attribute_identifier_list: Sequence[int] | None = None,
) -> bytes:
    """Encode any request command set of PS3.7 9.3 / 10.3 (elements in ascending tag order).

    C-CANCEL-RQ takes `message_id` as its *Message ID Being Responded To*.
    `attribute_identifier_list` (N-GET-RQ) holds tags as ``0xGGGGEEEE``.
    """
    parts = []
    if affected_sop_class_uid:
        parts.append(_uid(E_AFFECTED_SOP_CLASS, affected_sop_class_uid))
    if requested_sop_class_uid:
        parts.append(_uid(E_REQUESTED_SOP_CLASS, requested_sop_class_uid))
    parts.append(US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field))
    id_element = E_MESSAGE_ID_RSP if command_field == C_CANCEL_RQ else E_MESSAGE_ID
    parts.append(US_ELEMENT.pack(0, id_element, 2, message_id & 0xFFFF))
    if move_destination:
        ae = move_destination.strip()[:16].encode("ascii", "replace")
        parts.append(text_element(E_MOVE_DESTINATION, ae, b" "))
    if priority is not None:
        parts.append(US_ELEMENT.pack(0, E_PRIORITY, 2, priority))
    parts.append(US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET))
    if affected_sop_instance_uid:
        parts.append(_uid(E_AFFECTED_SOP_INSTANCE, affected_sop_instance_uid))
    if requested_sop_instance_uid:
        parts.append(_uid(E_REQUESTED_SOP_INSTANCE, requested_sop_instance_uid))
    if event_type_id is not None:
        parts.append(US_ELEMENT.pack(0, E_EVENT_TYPE_ID, 2, event_type_id))
    if attribute_identifier_list:
        # AT values: group then element, each a little endian US (PS3.5 6.2).
        tags = b"".join(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in attribute_identifier_list)
        parts.append(ELEMENT_HEADER.pack(0, E_ATTRIBUTE_IDENTIFIER_LIST, len(tags)) + tags)
    if action_type_id is not None:
        parts.append(US_ELEMENT.pack(0, E_ACTION_TYPE_ID, 2, action_type_id))
    return encode_command(parts)


def encode_n_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    status: int,
    *,
    error_comment: str | None = None,
    has_data_set: bool = False,
    type_id: int | None = None,
    attribute_identifier_list: Sequence[int] = (),
) -> bytes:
    """Encode a DIMSE-N response command set (PS3.7 10.3).

    Parameters
    ----------
    command_field : int
        One of the ``N_*_RSP`` values.
    type_id : int, optional
        *Event Type ID* (N-EVENT-REPORT-RSP) or *Action Type ID*
        (N-ACTION-RSP); left out when ``None``.
    """
    parts = []
    if sop_class_uid:
        parts.append(_uid(E_AFFECTED_SOP_CLASS, sop_class_uid))
    parts += [
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field),
        US_ELEMENT.pack(0, E_MESSAGE_ID_RSP, 2, message_id),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET),
        US_ELEMENT.pack(0, E_STATUS, 2, status),
    ]
    if error_comment and status != 0x0000:
        comment = error_comment[:64].encode("ascii", "replace")
        parts.append(text_element(E_ERROR_COMMENT, comment, b" "))
    if sop_instance_uid:
        parts.append(_uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid))
    if type_id is not None and command_field == N_EVENT_REPORT_RSP:
        parts.append(US_ELEMENT.pack(0, E_EVENT_TYPE_ID, 2, type_id))
    if attribute_identifier_list and status != 0x0000:
        # (0000,1005) lies between Event Type ID (1002) and Action Type ID (1008).
        tags = b"".join(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in attribute_identifier_list)
        parts.append(ELEMENT_HEADER.pack(0, E_ATTRIBUTE_IDENTIFIER_LIST, len(tags)) + tags)
    if type_id is not None and command_field != N_EVENT_REPORT_RSP:
        parts.append(US_ELEMENT.pack(0, E_ACTION_TYPE_ID, 2, type_id))
    return encode_command(parts)


def encode_n_request(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str | None,
    *,
    has_data_set: bool = False,
    type_id: int | None = None,
    attribute_identifier_list: Sequence[int] = (),
) -> bytes:
    """Encode a DIMSE-N request command set (PS3.7 10.3), Affected or Requested UIDs as it needs.

    Parameters
    ----------
    command_field : int
        One of the ``N_*_RQ`` values.
    type_id : int, optional
        *Event Type ID* (N-EVENT-REPORT) or *Action Type ID* (N-ACTION).
    attribute_identifier_list : sequence of int
        N-GET: the tags (group << 16 | element) asked for; empty = all.
    """
    affected = command_field in _N_AFFECTED
    parts = [
        _uid(E_AFFECTED_SOP_CLASS if affected else E_REQUESTED_SOP_CLASS, sop_class_uid),
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field),
        US_ELEMENT.pack(0, E_MESSAGE_ID, 2, message_id & 0xFFFF),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET),
    ]
    if sop_instance_uid:
        element = E_AFFECTED_SOP_INSTANCE if affected else E_REQUESTED_SOP_INSTANCE
        parts.append(_uid(element, sop_instance_uid))
    if type_id is not None:
        element = E_EVENT_TYPE_ID if command_field == N_EVENT_REPORT_RQ else E_ACTION_TYPE_ID
        parts.append(US_ELEMENT.pack(0, element, 2, type_id))
    if attribute_identifier_list:
        value = b"".join(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF) for tag in attribute_identifier_list)
        parts.append(ELEMENT_HEADER.pack(0, E_ATTRIBUTE_IDENTIFIER_LIST, len(value)) + value)
    return encode_command(parts)


# --------------------------------------------------------------------------
# Data sets of messages (identifiers, N-* attribute lists): uncompressed only
# --------------------------------------------------------------------------

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"


def _syntax_flags(transfer_syntax: str) -> tuple[bool, bool]:
    """(is_implicit_VR, is_little_endian) of an uncompressed transfer syntax."""
    return transfer_syntax == IMPLICIT_VR_LE, transfer_syntax != _EXPLICIT_VR_BE


def decode_dataset(fragments: list[memoryview], transfer_syntax: str) -> Dataset:
    """Decode an identifier completely (so that errors surface here)."""
    raw = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
    implicit, little = _syntax_flags(transfer_syntax)
    dataset = read_dataset(BytesIO(raw), implicit, little)
    for _ in dataset:  # converts every raw element; raises on garbage
        pass
    return dataset


def encode_dataset(dataset: Dataset | Callable[[str], bytes], transfer_syntax: str) -> bytes:
    """Encode a data set in an uncompressed transfer syntax (or call what encodes it)."""
    if not isinstance(dataset, Dataset):
        return dataset(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = _syntax_flags(transfer_syntax)
    write_dataset(fp, dataset)
    return fp.getvalue()

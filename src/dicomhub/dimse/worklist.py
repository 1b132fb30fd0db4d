"""Modality Worklist C-FIND request -> :class:`~dicomhub.services.worklist.WorklistService` -> answers.

The handler behind :class:`~dicomhub.dimse.providers.worklist.WorklistProvider`:
checks the calling peer's role (``query``), parses the identifier, runs the
query and turns each matching step into its answer. Errors go through
:mod:`dicomhub.dimse.status` (a bad identifier 0xA900, anything else 0xCxxx)
with the reason as Error Comment; one QUERY audit event per request.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterator

from dicomhub.dimse import messages as M
from dicomhub.dimse import status
from dicomhub.dimse.providers.worklist import WorklistResponse
from dicomhub.dimse.requests import QueryRequest
from dicomhub.dimse.session import AssociationSession
from dicomhub.errors import DicomhubError
from dicomhub.model.audit import AuditAction, AuditOutcome
from dicomhub.model.peer import Role
from dicomhub.model.worklist import MODALITY_WORKLIST_FIND, AnswerElement, answer_dataset, worklist_answer
from dicomhub.services.archive import Archive

__all__ = ["encode_answer", "handle_worklist_find"]

LOGGER = logging.getLogger("dicomhub.dimse")

_PENDING = 0xFF00
# PS3.4 K.4.1.3.1 (Table K.4-1): pending, one or more Optional Keys not supported.
_PENDING_KEYS_NOT_SUPPORTED = 0xFF01
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def encode_answer(answer: tuple[AnswerElement, ...], transfer_syntax_uid: str) -> bytes:
    """``answer`` encoded in ``transfer_syntax_uid``: little endian framed here (sequences and
    items of undefined length), big endian through pydicom. Text is UTF-8, which the answer
    announces with Specific Character Set when it is not ASCII."""
    if transfer_syntax_uid == _BIG_ENDIAN:
        return M.encode_dataset(answer_dataset(answer), transfer_syntax_uid)
    out = bytearray()
    _write(out, answer, transfer_syntax_uid == _IMPLICIT)
    return bytes(out)


def _write(out: bytearray, elements: tuple[AnswerElement, ...], implicit: bool) -> None:
    for tag, vr, value in elements:
        group, element = tag >> 16, tag & 0xFFFF
        if isinstance(value, str):
            body = value.encode("utf-8")
            if len(body) % 2:
                body += b"\x00" if vr == "UI" else b" "
            length = len(body)
        else:
            body, length = b"", _UNDEFINED
        if implicit:
            out += struct.pack("<HHI", group, element, length)
        elif vr in _LONG_VRS:
            out += struct.pack("<HH2s2xI", group, element, vr.encode(), length)
        else:
            out += struct.pack("<HH2sH", group, element, vr.encode(), length)
        if isinstance(value, str):
            out += body
            continue
        for item in value:
            out += _ITEM
            _write(out, item, implicit)
            out += _ITEM_END
        out += _SEQUENCE_END


def handle_worklist_find(
    archive: Archive, req: QueryRequest, session: AssociationSession
) -> Iterator[WorklistResponse]:
    """One pending response per matching scheduled procedure step, then the final one."""
    caller = session.caller
    count = 0
    detail: dict[str, object] = {"sop_class_uid": MODALITY_WORKLIST_FIND}
    try:
        session.require(Role.QUERY)
        query = archive.worklist.query(req.identifier)
        detail["keys"] = {k.removeprefix("step."): str(m) for k, m in query.conditions.items()}
        pending = _PENDING_KEYS_NOT_SUPPORTED if query.unsupported else _PENDING
        if query.unsupported:
            LOGGER.info("worklist C-FIND from %s: keys not supported: %s", caller.name, query.unsupported)
        for entry in archive.worklist.find(query, caller):
            count += 1
            yield WorklistResponse(pending, functools.partial(encode_answer, worklist_answer(entry, query)))
    except DicomhubError as exc:
        code = status.find_status(exc)
        LOGGER.warning("worklist C-FIND from %s failed (0x%04X): %s", caller.name, code, exc)
        session.audit(AuditAction.QUERY, AuditOutcome.MAJOR_FAILURE, detail={**detail, "reason": str(exc)})
        yield WorklistResponse(code, None, str(exc)[:64])
        return
    except GeneratorExit:
        # C-CANCEL (or the association ended) between two answers.
        session.audit(
            AuditAction.QUERY, AuditOutcome.SUCCESS, detail={**detail, "matches": count, "cancelled": True}
        )
        raise
    LOGGER.info("worklist C-FIND from %s: %d answers", caller.name, count)
    session.audit(AuditAction.QUERY, AuditOutcome.SUCCESS, detail={**detail, "matches": count})
    yield WorklistResponse(status.SUCCESS)

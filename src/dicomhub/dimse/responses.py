"""What a DIMSE requestor receives (PS3.7): the responses to its requests, iterated
until the final one, and the requests a peer sends back on the same association
(C-STORE sub-operations of a C-GET, N-EVENT-REPORT), with their data sets still
encoded in the presentation context's transfer syntax until asked for.

:class:`dicomhub.dimse.requestor.Association` produces them; this module holds only
the values and the encoding helpers, so that the association's code reads as the
state machine it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Final

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from dicomhub.dimse import messages as M

if TYPE_CHECKING:
    from dicomhub.dimse.requestor import Association

__all__ = [
    "STATUS_CANCEL",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_PENDING",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "EventReport",
    "EventReportHandler",
    "IncomingStore",
    "Response",
    "Responses",
    "StoreHandler",
    "decode_dataset",
    "encode_dataset",
]

_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
_DEFLATED: Final = frozenset({"1.2.840.10008.1.2.1.99"})

# Statuses (PS3.7 C.1-C.4) this module produces or tests for.
STATUS_SUCCESS: Final = 0x0000
STATUS_CANCEL: Final = 0xFE00
STATUS_PENDING: Final = frozenset({0xFF00, 0xFF01})
STATUS_PROCESSING_FAILURE: Final = 0x0110
STATUS_CANNOT_UNDERSTAND: Final = 0xC000


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax."""
    return (
        transfer_syntax_uid == _IMPLICIT_VR_LE,
        transfer_syntax_uid != _EXPLICIT_VR_BE,
        transfer_syntax_uid in _DEFLATED,
    )


def encode_dataset(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """``ds`` encoded (no File Meta) in ``transfer_syntax_uid``; ValueError if it cannot be."""
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    data = encode(ds, implicit, little, deflated)
    if data is None:
        raise ValueError("the data set cannot be encoded in the context's transfer syntax")
    return data


def decode_dataset(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """The data set of a message, decoded from ``transfer_syntax_uid``."""
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    return decode(BytesIO(data), implicit, little, deflated)


@dataclass(frozen=True, slots=True)
class Response:
    """One response of the peer: its command set and, if any, its data set (still encoded).

    Attributes
    ----------
    command : dicomhub.dimse.pdu.Command
        The parsed command set (sub-operation counts for C-GET/C-MOVE).
    data : bytes or None
        The data set (identifier, attribute list, event reply...), encoded in
        `transfer_syntax_uid`.
    """

    command: M.Command
    data: bytes | None
    transfer_syntax_uid: str

    @property
    def status(self) -> int:
        return self.command.status if self.command.status is not None else STATUS_PROCESSING_FAILURE

    @property
    def error_comment(self) -> str | None:
        return self.command.error_comment

    @property
    def is_pending(self) -> bool:
        return self.status in STATUS_PENDING

    @property
    def dataset(self) -> Dataset | None:
        """The data set decoded (a new Dataset each time), or None when there is none."""
        return None if self.data is None else decode_dataset(self.data, self.transfer_syntax_uid)

    @property
    def suboperations(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(remaining, completed, failed, warning) of a C-GET/C-MOVE response."""
        c = self.command
        return c.remaining, c.completed, c.failed, c.warning


@dataclass(frozen=True, slots=True)
class IncomingStore:
    """A C-STORE-RQ the peer sent us (a C-GET sub-operation): its data set as received."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes
    move_originator_ae_title: str | None = None


@dataclass(frozen=True, slots=True)
class EventReport:
    """An N-EVENT-REPORT-RQ the peer sent us: Event Information still encoded."""

    sop_class_uid: str
    sop_instance_uid: str
    event_type_id: int
    data: bytes | None
    transfer_syntax_uid: str

    @property
    def dataset(self) -> Dataset | None:
        return None if self.data is None else decode_dataset(self.data, self.transfer_syntax_uid)


#: Serves an incoming C-STORE-RQ; returns its Status (0x0000 once durable).
StoreHandler = Callable[[IncomingStore], int]
#: Serves an incoming N-EVENT-REPORT-RQ; returns its Status.
EventReportHandler = Callable[[EventReport], int]


class Responses(Iterator[Response]):
    """The responses to one C-FIND, C-GET or C-MOVE, pending ones first, the final one last.

    Stop early with :meth:`cancel` (C-CANCEL-RQ; the peer's remaining responses
    still come, ending with a final one, typically *Cancel* 0xFE00) or
    :meth:`close` (cancel and drain), which leaves the association usable.
    """

    def __init__(self, assoc: Association, message_id: int, response_field: int) -> None:
        self._assoc = assoc
        self.message_id = message_id
        self._field = response_field
        self.done = False
        self.cancelled = False
        self.final: Response | None = None

    def __iter__(self) -> Responses:
        return self

    def __next__(self) -> Response:
        if self.done:
            raise StopIteration
        try:
            response = self._assoc._await_response(self.message_id, self._field)
        except BaseException:
            self.done = True
            raise
        if not response.is_pending:
            self.done = True
            self.final = response
        return response

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for this request (once); keep iterating for the rest."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        self._assoc._send_command(
            self._assoc._last_context, M.encode_request(M.C_CANCEL_RQ, self.message_id), None
        )

    def close(self) -> None:
        """Cancel if unfinished and read up to the final response."""
        if not self.done:
            self.cancel()
            for _ in self:
                pass

    def __enter__(self) -> Responses:
        return self

    def __exit__(self, *_: object) -> None:
        if self._assoc.is_open:
            self.close()

"""Storage Commitment on the wire: the N-EVENT-REPORT data set, and both SCU sides.

- :func:`report_dataset` turns a :class:`CommitmentResult` into the Event
  Information of PS3.4 J.3.3.1 (Referenced SOP Sequence for what is committed,
  Failed SOP Sequence with a Failure Reason for the rest).
- :func:`send_report` delivers a result on a new association, dicomhub
  proposing the Storage Commitment Push Model with the SCP role (SCP/SCU role
  selection, PS3.7 D.3.3.4), as the report of a transaction whose requesting
  association is gone.
- :func:`request_commitment` is the SCU of N-ACTION: it asks a peer archive
  to commit to instances (for migration and forwarding) and waits for the
  report on the same association.

These run rarely and off the store path, so they use pynetdicom.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dicomhub.model.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    CommitmentItem,
    CommitmentResult,
)

__all__ = ["CommitmentRefused", "report_dataset", "request_commitment", "result_from_report", "send_report"]

LOGGER = logging.getLogger("dicomhub.dimse.commitment")

_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"


class CommitmentRefused(Exception):
    """The peer could not be reached, rejected the association, or refused the message."""


def report_dataset(result: CommitmentResult) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) of the N-EVENT-REPORT for ``result``."""
    ds = Dataset()
    ds.TransactionUID = result.transaction_uid
    if result.successes:
        ds.ReferencedSOPSequence = DicomSequence([_item(i) for i in result.successes])
    if result.failures:
        failed = []
        for item, reason in result.failures:
            entry = _item(item)
            entry.FailureReason = reason
            failed.append(entry)
        ds.FailedSOPSequence = DicomSequence(failed)
    return result.event_type_id, ds


def result_from_report(ds: Dataset) -> CommitmentResult:
    """The inverse of :func:`report_dataset` (for the SCU side)."""
    successes = tuple(_ref(i) for i in ds.get("ReferencedSOPSequence", []))
    failures = tuple((_ref(i), int(i.get("FailureReason", 0x0110))) for i in ds.get("FailedSOPSequence", []))
    return CommitmentResult(str(ds.get("TransactionUID", "")), successes, failures)


def _item(item: CommitmentItem) -> Dataset:
    entry = Dataset()
    entry.ReferencedSOPClassUID = item.sop_class_uid
    entry.ReferencedSOPInstanceUID = item.sop_instance_uid
    return entry


def _ref(entry: Dataset) -> CommitmentItem:
    return CommitmentItem(str(entry.ReferencedSOPClassUID), str(entry.ReferencedSOPInstanceUID))


def send_report(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    result: CommitmentResult,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Send the N-EVENT-REPORT for ``result`` on a new association.

    ``tls``: DICOM TLS (PS3.15 B.1) with this client context, the peer's
    certificate checked against ``host``; ``None``: plain TCP.

    Raises
    ------
    CommitmentRefused
        When the peer cannot be associated, does not accept us as SCP, or
        answers with a failure status.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StorageCommitmentPushModel, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE])
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = StorageCommitmentPushModel
    role.scu_role = False
    role.scp_role = True
    # pynetdicom wraps the socket itself; a failed handshake only leaves the
    # association unestablished (and logs the ssl error), so say TLS here.
    tls_args = None if tls is None else (tls, host)
    assoc = ae.associate(host, port, ae_title=called_ae_title, ext_neg=[role], tls_args=tls_args)
    if not assoc.is_established:
        raise CommitmentRefused(
            f"cannot associate with {called_ae_title} at {host}:{port}" + (" over TLS" if tls else "")
        )
    try:
        event_type, information = report_dataset(result)
        status, _reply = assoc.send_n_event_report(
            information, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE
        )
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != 0x0000:
            raise CommitmentRefused(
                f"{called_ae_title} answered the report with "
                + (f"status 0x{code:04X}" if code >= 0 else "no response")
            )
    finally:
        assoc.release()


def request_commitment(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    transaction_uid: str,
    items: Sequence[CommitmentItem],
    timeout: float = 60.0,
) -> CommitmentResult | None:
    """Ask a peer to commit to ``items``; the result if it reports on this association in time.

    ``None`` means the request was accepted but the report did not come on
    this association within ``timeout`` (a peer may send it later on an
    association of its own, to dicomhub's Storage Commitment SCP).

    Raises
    ------
    CommitmentRefused
        When the association or the N-ACTION fails.
    """
    received: list[Dataset] = []
    done = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        received.append(event.event_information)
        done.set()
        return 0x0000, None  # pynetdicom wants (status, Event Reply)

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StorageCommitmentPushModel, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE])
    assoc = ae.associate(
        host, port, ae_title=called_ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    if not assoc.is_established:
        raise CommitmentRefused(f"cannot associate with {called_ae_title} at {host}:{port}")
    try:
        info = Dataset()
        info.TransactionUID = transaction_uid
        info.ReferencedSOPSequence = DicomSequence([_item(i) for i in items])
        status, _reply = assoc.send_n_action(info, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != 0x0000:
            raise CommitmentRefused(
                f"{called_ae_title} refused the commitment request: "
                + (f"status 0x{code:04X}" if code >= 0 else "no response")
            )
        done.wait(timeout)
    finally:
        assoc.release()
    return result_from_report(received[0]) if received else None

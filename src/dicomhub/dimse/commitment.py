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

Both run on :mod:`dicomhub.dimse.requestor`, the one requestor engine.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomhub.dimse.requestor import Association, AssociationError
from dicomhub.model.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
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


def _associate(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    timeout: float,
    tls: ssl.SSLContext | None,
    roles: dict[str, tuple[bool, bool]] | None = None,
) -> Association:
    try:
        return Association.open(
            host,
            port,
            called_ae_title,
            calling_ae_title,
            [(STORAGE_COMMITMENT_PUSH_MODEL, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE])],
            roles=roles,
            connect_timeout=min(timeout, 10.0),
            acse_timeout=timeout,
            dimse_timeout=timeout,
            tls=tls,
        )
    except AssociationError as exc:
        over = " over TLS" if tls else ""
        raise CommitmentRefused(
            f"cannot associate with {called_ae_title} at {host}:{port}{over}: {exc}"
        ) from exc


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
    roles = {STORAGE_COMMITMENT_PUSH_MODEL: (False, True)}
    assoc = _associate(host, port, called_ae_title, calling_ae_title, timeout, tls, roles)
    try:
        if not assoc.role(STORAGE_COMMITMENT_PUSH_MODEL)[1]:
            raise CommitmentRefused(
                f"{called_ae_title} does not accept us in the Storage Commitment SCP role"
            )
        event_type, information = report_dataset(result)
        try:
            response = assoc.send_n_event_report(
                STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, event_type, information
            )
        except AssociationError as exc:
            raise CommitmentRefused(f"{called_ae_title} answered the report with no response: {exc}") from exc
        if response.status != 0x0000:
            raise CommitmentRefused(
                f"{called_ae_title} answered the report with status 0x{response.status:04X}"
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
    tls: ssl.SSLContext | None = None,
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
    assoc = _associate(host, port, called_ae_title, calling_ae_title, timeout, tls)
    try:
        info = Dataset()
        info.TransactionUID = transaction_uid
        info.ReferencedSOPSequence = DicomSequence([_item(i) for i in items])
        try:
            response = assoc.send_n_action(
                STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, 1, info
            )
        except AssociationError as exc:
            raise CommitmentRefused(f"{called_ae_title} refused the commitment request: {exc}") from exc
        if response.status != 0x0000:
            raise CommitmentRefused(
                f"{called_ae_title} refused the commitment request: status 0x{response.status:04X}"
            )
        try:
            report = assoc.wait_for_event_report(timeout)
        except AssociationError:
            report = None  # the peer ended the association: the report may come on one of its own
    finally:
        assoc.release()
    information = None if report is None else report.dataset
    return None if information is None else result_from_report(information)

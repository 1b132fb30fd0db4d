"""What the DIMSE association loop and its callers exchange: requests, outcomes, plans.

These value types are the contract between the providers of
:mod:`dicomhub.dimse.providers` (run by :mod:`dicomhub.dimse.association`,
they know the protocol) and the handlers in :mod:`dicomhub.dimse.handlers`
(which know the archive), plus the association's configuration. The C-STORE pair
lives in :mod:`dicomhub.model.ingest`, shared with the ingest service; it is
re-exported here under the loop's names (``StoreOutcome`` is the C-STORE-RSP,
:class:`~dicomhub.model.ingest.StoreResponse`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

from dicomhub.dimse.transport import EncodedDataSet, FileRegion
from dicomhub.model.ingest import StoreRequest, StoreResponse

__all__ = [
    "QUERY_RETRIEVE_SOP_CLASSES",
    "VERIFICATION_SOP_CLASS",
    "AssociationInfo",
    "EncodedDataSet",
    "AssociationConfig",
    "FileRegion",
    "FindCallback",
    "Identifier",
    "QueryRequest",
    "Rejection",
    "RetrieveCallback",
    "RetrievePlan",
    "NActionOutcome",
    "NActionRequest",
    "Sendable",
    "StoreOutcome",
    "StoreRequest",
]

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
FIND_MODELS: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})
MOVE_MODELS: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"})
GET_MODELS: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})
#: The Patient Root and Study Root FIND/MOVE/GET information models.
QUERY_RETRIEVE_SOP_CLASSES: Final = FIND_MODELS | MOVE_MODELS | GET_MODELS

# The association loop's name for the C-STORE-RSP it sends.
StoreOutcome = StoreResponse


@dataclass(frozen=True, slots=True)
class NActionRequest:
    """An N-ACTION-RQ (Storage Commitment: Request Storage Commitment) with its data set.

    Attributes
    ----------
    calling_ae_title, peer_host : str
    message_id : int
    transfer_syntax_uid : str
        Of the presentation context it came on (the report goes out in it too).
    action_type_id : int
        1 for Request Storage Commitment.
    dataset : Dataset
        The Action Information (Transaction UID, Referenced SOP Sequence).
    """

    calling_ae_title: str
    peer_host: str
    message_id: int
    transfer_syntax_uid: str
    action_type_id: int
    dataset: Dataset


@dataclass(frozen=True, slots=True)
class NActionOutcome:
    """What to answer an N-ACTION-RQ with, and what to send after it.

    Attributes
    ----------
    status : int
        Of the N-ACTION-RSP.
    report : callable or None
        Called once the N-ACTION-RSP is sent; returns the N-EVENT-REPORT
        (Event Type ID, Event Information) to send on the same association.
    delivered : callable or None
        Called when the requestor answers that N-EVENT-REPORT-RQ with success.
    """

    status: int
    report: Callable[[], tuple[int, Dataset]] | None = None
    delivered: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ other than "calling AE title not recognised" (PS3.8 Table 9-21).

    ``accept_association`` returns a plain reason string for the permanent
    calling-AE refusal, or one of these, e.g. ``Rejection.local_limit_exceeded()``.
    """

    reason: str
    result: int = 1  # 1 permanent, 2 transient
    source: int = 1  # 1 service user, 2 ACSE provider, 3 presentation provider
    diagnostic: int = 1

    @classmethod
    def local_limit_exceeded(cls, reason: str) -> Rejection:
        """Transient: too many associations; the peer may try again later."""
        return cls(reason, result=2, source=3, diagnostic=2)


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """Who is asking for an association (passed to the policy and logged)."""

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One C-FIND, C-GET or C-MOVE request, for the Q/R callbacks.

    Attributes
    ----------
    calling_ae_title, called_ae_title : str
        AE titles from the A-ASSOCIATE-RQ (stripped).
    peer_host : str
        IP address of the requestor.
    message_id : int
        *Message ID* of the request.
    sop_class_uid : str
        The information model (*Affected SOP Class UID*), e.g. Study Root
        Q/R - FIND ``1.2.840.10008.5.1.4.1.2.2.1``.
    identifier : pydicom.dataset.Dataset
        The request's identifier, decoded in the context's transfer syntax.
    move_destination : str or None
        *Move Destination* (stripped); C-MOVE only.
    is_cancelled : callable
        Returns ``True`` once a C-CANCEL-RQ for this message arrived (checks
        the socket without blocking; cheap enough to call per match).
    """

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    message_id: int
    sop_class_uid: str
    identifier: Dataset
    move_destination: str | None
    is_cancelled: Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Sendable:
    """One instance to send as a C-STORE sub-operation.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid : str
    transfer_syntax_uid : str
        The transfer syntax `read` returns the data set in; a sub-operation
        needs an accepted context for exactly this (SOP class, syntax) pair.
    read : callable
        Returns the data set *without* File Meta, as bytes, a memoryview or
        a :class:`FileRegion` (large objects: sent from the file); may
        raise (the sub-operation then fails).  Called once, just before
        sending.
    alternatives : tuple of str
        Other transfer syntaxes the instance can be sent in (proposed after
        the stored one for C-MOVE, looked up after it for C-GET).
    convert : callable or None
        Returns the data set in one of `alternatives` (same types as
        `read`); may raise.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    read: Callable[[], EncodedDataSet]
    alternatives: tuple[str, ...] = ()
    convert: Callable[[str], EncodedDataSet] | None = None

    def syntaxes(self) -> tuple[str, ...]:
        """The stored syntax first, then the alternatives."""
        return (self.transfer_syntax_uid, *self.alternatives)

    def data_in(self, transfer_syntax_uid: str) -> EncodedDataSet:
        """The data set in `transfer_syntax_uid` (the stored one or an alternative)."""
        if transfer_syntax_uid == self.transfer_syntax_uid or self.convert is None:
            return self.read()
        return self.convert(transfer_syntax_uid)


@dataclass(frozen=True, slots=True)
class RetrievePlan:
    """What a C-GET or C-MOVE sends.

    Attributes
    ----------
    instances : sequence of Sendable
    destination : tuple of (str, int, str) or None
        C-MOVE only: host, port and AE title of the move destination.
    destination_tls : ssl.SSLContext or None
        C-MOVE only: the DICOM TLS client context to associate with the
        destination through (its peer has ``tls`` set); ``None``: plain TCP.
    """

    instances: Sequence[Sendable]
    destination: tuple[str, int, str] | None = None
    destination_tls: ssl.SSLContext | None = None


# A C-FIND response identifier: a Dataset, or a function that encodes it in
# the given transfer syntax (lets the caller skip building Datasets).
Identifier = Dataset | Callable[[str], bytes]
FindCallback = Callable[[QueryRequest], Iterator[tuple[int, "Identifier | None"]]]
RetrieveCallback = Callable[[QueryRequest], "RetrievePlan | tuple[int, str | None]"]


@dataclass(frozen=True)
class AssociationConfig:
    """Static configuration of the acceptor: what it negotiates, its limits and timeouts.

    Attributes
    ----------
    ae_title : str
        Our AE title (checked only with `require_called_ae_title`).
    storage_contexts : Mapping[str, Sequence[str]]
        Storage abstract syntax UID -> accepted transfer syntax UIDs, in our
        order of preference.
    verification : bool
        Accept Verification with implicit/explicit VR little endian.
    maximum_pdu_size : int
        Our *Maximum Length Received*, sent in the A-ASSOCIATE-AC
        (0 = unlimited).
    implementation_class_uid, implementation_version_name : str
        Sent in the A-ASSOCIATE-AC.
    acse_timeout : float
        Seconds to wait for the A-ASSOCIATE-RQ.
    dimse_timeout : float
        Seconds to wait between PDUs of one message once it started.
    network_timeout : float
        Seconds of idleness (no message in progress) before we abort.
    require_called_ae_title : bool
        Reject an A-ASSOCIATE-RQ whose called AE title is not `ae_title`.
    query_retrieve : bool
        Accept the Patient/Study Root FIND, GET and MOVE models with the
        uncompressed transfer syntaxes, and offer the SCU role (for C-GET
        sub-operations) on every storage context.  Needs the `on_find` and
        `on_retrieve` callbacks of
        :func:`~dicomhub.dimse.association.serve_association`; requests
        arriving without them are answered 0x0122.
    storage_commitment : bool
        Accept the Storage Commitment Push Model (N-ACTION in, N-EVENT-REPORT
        out on the same association); needs the `on_n_action` callback.
    modality_performed_procedure_step : bool
        Accept the Modality Performed Procedure Step SOP Class (N-CREATE,
        N-SET, N-GET); needs the `mpps` service.
    modality_worklist : bool
        Accept the Modality Worklist Information Model - FIND with the
        uncompressed transfer syntaxes; needs the `on_worklist_find` callback.
    print_management : bool
        Accept the Basic Grayscale and Color Print Management Meta SOP
        Classes (PS3.4 H); needs the `printing` service.
    spool_threshold : int
        A C-STORE data set that grows past this many bytes is written to a
        spool file as it arrives instead of being kept in memory, and handed
        to ``on_store`` as ``StoreRequest.dataset_path``.
    spool_dir : str or None
        Folder for those spool files (``None``: :func:`tempfile.gettempdir`).
        Best on the blob store's file system, so that the ingest side can
        move or link instead of copying.
    accept_unknown_storage : bool
        Also accept, as a storage SOP class, any proposed abstract syntax that
        is a valid UID the standard does not register (a private storage
        class), with the transfer syntaxes of the storage contexts.
    """

    ae_title: str
    storage_contexts: Mapping[str, Sequence[str]]
    verification: bool = True
    maximum_pdu_size: int = 262144
    implementation_class_uid: str = "1.2.826.0.1.3680043.10.1419.1"
    implementation_version_name: str = "DICOMHUB_010"
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    require_called_ae_title: bool = False
    query_retrieve: bool = False
    storage_commitment: bool = False
    modality_performed_procedure_step: bool = False
    modality_worklist: bool = False
    print_management: bool = False
    spool_threshold: int = 16 << 20
    spool_dir: str | None = None
    accept_unknown_storage: bool = False

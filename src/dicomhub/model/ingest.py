"""What storing an object takes and gives: its origin, what was received, the outcome.

Every source of objects (a C-STORE on an association, a STOW-RS request,
``dicomhub import``, a migration job, de-identification, later routing)
hands :meth:`~dicomhub.services.ingest.IngestService.store` the same three
things, like Orthanc's ``ServerContext::Store`` with its
``DicomInstanceOrigin``:

- what was received (:class:`ReceivedDataSet`: a data set without File Meta,
  as DIMSE delivers it; or :class:`Part10Object`: a Part 10 file), in memory
  or spooled to a file;
- where it came from (:class:`InstanceOrigin`), for the logs, the conflict
  record and the validation policy;
- who asks (:class:`~dicomhub.model.caller.Caller`), for access control.

The answer is a :class:`StoreResult` (or one of the errors of
:mod:`dicomhub.errors`); each adapter translates it in its own table
(``dimse/status.py``, ``web/dicomweb/stow.py``, the CLI's messages).

:class:`StoreRequest` and :class:`StoreResponse` are the C-STORE-RQ as the
association loop received it and the C-STORE-RSP it sends: they live here,
not in the loop, so that no module imports its types from the transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "InstanceOrigin",
    "OriginKind",
    "Part10Object",
    "Received",
    "ReceivedDataSet",
    "StoreOutcome",
    "StoreRequest",
    "StoreResponse",
    "StoreResult",
    "UNSPECIFIED_ORIGIN",
]


class OriginKind(enum.Enum):
    """How an object reached the archive (Orthanc's ``RequestOrigin``)."""

    C_STORE = "c-store"
    STOW_RS = "stow-rs"
    IMPORT = "import"
    MIGRATION = "migration"
    DEIDENTIFICATION = "deidentification"
    ROUTING = "routing"
    PRINT = "print"  # a print job archived as an Encapsulated PDF (the Print SCP)
    REJECTION = "rejection"  # a rejection note the archive made (dicomhub reject, REST reject)
    CORRECTION = "correction"  # an object written again by a correction (modify, split, merge)
    # Tests and library callers that name no source (the caller says who asked).
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True, slots=True)
class InstanceOrigin:
    """Where one stored object came from.

    Attributes
    ----------
    kind : OriginKind
    calling_ae_title, called_ae_title : str or None
        C-STORE: the AE titles of the association (the calling one selects
        the per-source validation policy and is recorded with the instance).
    peer_host : str or None
        C-STORE and STOW-RS: the requestor's address.
    principal : str or None
        STOW-RS: the authenticated principal (None with access control off).
    path : str or None
        Import: the file imported.
    job : str or None
        Migration: the job's name; routing: the rule's.
    """

    kind: OriginKind
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    peer_host: str | None = None
    principal: str | None = None
    path: str | None = None
    job: str | None = None

    @classmethod
    def c_store(cls, request: StoreRequest) -> InstanceOrigin:
        """The origin of an object received in ``request``."""
        return cls(
            OriginKind.C_STORE,
            calling_ae_title=request.calling_ae_title,
            called_ae_title=request.called_ae_title,
            peer_host=request.peer_host,
        )

    @classmethod
    def stow_rs(cls, principal: str | None, peer_host: str | None = None) -> InstanceOrigin:
        return cls(OriginKind.STOW_RS, principal=principal, peer_host=peer_host)

    @classmethod
    def imported(cls, path: str) -> InstanceOrigin:
        return cls(OriginKind.IMPORT, path=path)

    @classmethod
    def migration(cls, job: str) -> InstanceOrigin:
        return cls(OriginKind.MIGRATION, job=job)

    def describe(self) -> str:
        """A short text for the logs: the kind and what names the source."""
        source = self.calling_ae_title or self.principal or self.path or self.job or self.peer_host
        return f"{self.kind.value} {source}" if source else self.kind.value


UNSPECIFIED_ORIGIN = InstanceOrigin(OriginKind.UNSPECIFIED)


@dataclass(frozen=True, slots=True)
class ReceivedDataSet:
    """A data set as DIMSE delivers it: no File Meta, the identifying UIDs in the command.

    Attributes
    ----------
    transfer_syntax_uid : str
        Of the presentation context it came on.
    sop_class_uid, sop_instance_uid : str
        *Affected SOP Class/Instance UID* of the request; they go into the
        File Meta, so they are validated like the data set's own.
    dataset : bytes
        The data set exactly as received; ``b""`` when ``path`` is set.
    path : str or None
        A spool file holding the data set (a large one); it stays the
        caller's to remove.
    """

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset: bytes = b""
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Part10Object:
    """A DICOM Part 10 file: its bytes, or (``data`` None) the file at ``path``, which
    is left in place."""

    data: bytes | None = None
    path: str | None = None


#: What :meth:`IngestService.store` takes.
Received = ReceivedDataSet | Part10Object


class StoreOutcome(enum.Enum):
    """What storing did (PS3.4 B.2.3 says only Success; the archive says more)."""

    STORED = "stored"
    ALREADY_PRESENT = "already-present"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """A stored (or already present) object.

    Attributes
    ----------
    warning : str or None
        IOD validation (policy ``warn``) found errors: the first one. The
        object is stored; DIMSE answers 0xB007, STOW-RS its Warning Reason.
    """

    outcome: StoreOutcome
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    size: int
    series_instance_uid: str = ""
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One received C-STORE-RQ with its data set.

    Attributes
    ----------
    calling_ae_title, called_ae_title : str
        AE titles from the A-ASSOCIATE-RQ (stripped).
    peer_host : str
        IP address of the requestor.
    message_id : int
        *Message ID* (0000,0110) of the request.
    sop_class_uid, sop_instance_uid : str
        *Affected SOP Class/Instance UID* from the command set.
    transfer_syntax_uid : str
        Transfer syntax of the accepted presentation context the data set
        was sent on.
    dataset : bytes
        The data set exactly as received (no File Meta), all fragments
        joined; ``b""`` when `dataset_path` is set.
    move_originator_ae_title, move_originator_message_id : str or None, int or None
        Set when the store is a C-MOVE sub-operation.
    dataset_path : str or None
        Set for a data set larger than ``AssociationConfig.spool_threshold``:
        a temporary file whose whole content is the data set exactly as
        received (no File Meta).  It belongs to the association loop, which
        deletes it as soon as ``on_store`` returns or raises; the callback
        must have copied (or hard-linked) what it keeps by then.
    """

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes
    move_originator_ae_title: str | None
    move_originator_message_id: int | None
    dataset_path: str | None = None

    def received(self) -> ReceivedDataSet:
        """The data set of this request, for the store."""
        return ReceivedDataSet(
            self.transfer_syntax_uid,
            self.sop_class_uid,
            self.sop_instance_uid,
            self.dataset,
            self.dataset_path,
        )


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """What to answer a C-STORE-RQ with.

    Attributes
    ----------
    status : int
        DIMSE status of the C-STORE-RSP.
    error_comment : str or None
        *Error Comment* (0000,0902); sent only for a non-success status and
        truncated to the 64 characters LO allows.
    """

    status: int
    error_comment: str | None = None

"""Errors -> DIMSE status codes, in one table per service.

References
----------
PS3.4 Table B.2-1 (Storage), C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE),
C.4.3.1.4 (C-GET); PS3.7 Annex C (general statuses).
"""

from __future__ import annotations

from typing import Final

from dicomhub.errors import (
    Conflict,
    DoesNotMatchIOD,
    DuplicateInstance,
    IndexUnavailable,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    RefusedByPlugin,
    RejectedObject,
    RejectionFailed,
    SOPClassNotSupported,
    StorageError,
    UnknownDestination,
)
from dicomhub.services.access import Forbidden
from dicomhub.telemetry.metrics import count_backend_error

__all__ = [
    "CANCEL",
    "PENDING",
    "SUCCESS",
    "find_status",
    "retrieve_status",
    "store_status",
]

SUCCESS: Final = 0x0000
PENDING: Final = 0xFF00
CANCEL: Final = 0xFE00

# Storage (PS3.4 B.2.3). The Cxxx "Cannot understand" range is the one the
# standard leaves to the SCP for its own refusals; dicomhub's are below.
STORE_OUT_OF_RESOURCES: Final = 0xA700
STORE_INDEX_UNAVAILABLE: Final = 0xA701
STORE_DATASET_DOES_NOT_MATCH: Final = 0xA900
STORE_CANNOT_UNDERSTAND: Final = 0xC000
STORE_DUPLICATE_REFUSED: Final = 0xC401
STORE_PATIENT_MISMATCH: Final = 0xC402
STORE_CONFLICT: Final = 0xC403
STORE_PROCESSING_FAILURE: Final = 0xC210
# IHE IOCM refusals, with dcm4chee-arc's codes (its StoreService): an object of a
# rejected instance sent again; a rejection note referencing an instance not held.
STORE_SUBSEQUENT_OCCURRENCE_OF_REJECTED: Final = 0xA771
STORE_REJECTION_FAILED_NO_SUCH_INSTANCE: Final = 0xA772
# PS3.7 C.5.x "Refused: SOP Class not supported" (general status): the data set's
# SOP class is not storable here (see dicomhub.model.sopclasses).
STORE_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
# PS3.7 C.4.1 "Refused: Not Authorized" (general status): the caller may not store into the study.
NOT_AUTHORIZED: Final = 0x0124
# Warning: stored, but the data set does not match its SOP Class (PS3.4 B.2.3).
STORE_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007

# Query/Retrieve (PS3.4 C.4).
QR_OUT_OF_RESOURCES: Final = 0xA700
QR_SUBOPS_OUT_OF_RESOURCES: Final = 0xA702
QR_UNKNOWN_DESTINATION: Final = 0xA801
QR_IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
QR_UNABLE_TO_PROCESS: Final = 0xC000
QR_SUBOPS_FAILED_OR_WARNING: Final = 0xB000

# DIMSE-N (PS3.7 Annex C): N-ACTION of Storage Commitment.
N_MISSING_ATTRIBUTE: Final = 0x0120
N_INVALID_ARGUMENT_VALUE: Final = 0x0115

# General statuses of DIMSE-N (and C-ECHO) (PS3.7 C.4, Table C-1), answered by
# the association for what no provider can answer, and by providers.
NO_SUCH_ATTRIBUTE: Final = 0x0105
INVALID_ATTRIBUTE_VALUE: Final = 0x0106
PROCESSING_FAILURE: Final = 0x0110
NO_SUCH_SOP_INSTANCE: Final = 0x0112
NO_SUCH_EVENT_TYPE: Final = 0x0113
NO_SUCH_SOP_CLASS: Final = 0x0118
INVALID_OBJECT_INSTANCE: Final = 0x0117
CLASS_INSTANCE_CONFLICT: Final = 0x0119
MISSING_ATTRIBUTE: Final = 0x0120
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
NO_SUCH_ACTION: Final = 0x0123
DUPLICATE_SOP_INSTANCE: Final = 0x0111
UNRECOGNIZED_OPERATION: Final = 0x0211

# Error -> status tables (most specific first); the conformance statement lists them too.
STORE_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (Forbidden, NOT_AUTHORIZED),
    (RejectedObject, STORE_SUBSEQUENT_OCCURRENCE_OF_REJECTED),
    (RejectionFailed, STORE_REJECTION_FAILED_NO_SUCH_INSTANCE),
    (DuplicateInstance, STORE_DUPLICATE_REFUSED),
    (PatientMismatch, STORE_PATIENT_MISMATCH),
    (Conflict, STORE_CONFLICT),
    (InvalidIdentifier, STORE_DATASET_DOES_NOT_MATCH),
    (DoesNotMatchIOD, STORE_DATASET_DOES_NOT_MATCH),
    (SOPClassNotSupported, STORE_SOP_CLASS_NOT_SUPPORTED),
    (InvalidRequest, STORE_CANNOT_UNDERSTAND),
    (StorageError, STORE_OUT_OF_RESOURCES),
    (IndexUnavailable, STORE_INDEX_UNAVAILABLE),
)

FIND_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequest, QR_IDENTIFIER_DOES_NOT_MATCH),
    (IndexUnavailable, QR_OUT_OF_RESOURCES),
)

RETRIEVE_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (UnknownDestination, QR_UNKNOWN_DESTINATION),
    (InvalidRequest, QR_IDENTIFIER_DOES_NOT_MATCH),
    (IndexUnavailable, QR_OUT_OF_RESOURCES),
    (StorageError, QR_SUBOPS_OUT_OF_RESOURCES),
)


def _lookup(table: tuple[tuple[type[Exception], int], ...], exc: Exception, default: int) -> int:
    count_backend_error(exc, "dimse")
    for cls, status in table:
        if isinstance(exc, cls):
            return status
    return default


def store_status(exc: Exception) -> int:
    """The C-STORE status for an error raised by the ingest service."""
    if isinstance(exc, RefusedByPlugin):
        return exc.status  # the plugin's own failure status, checked when it was made
    return _lookup(STORE_STATUSES, exc, STORE_PROCESSING_FAILURE)


def find_status(exc: Exception) -> int:
    """The C-FIND status for an error raised by the search service."""
    return _lookup(FIND_STATUSES, exc, QR_UNABLE_TO_PROCESS)


def retrieve_status(exc: Exception) -> int:
    """The C-GET/C-MOVE status for an error raised while retrieving."""
    return _lookup(RETRIEVE_STATUSES, exc, QR_UNABLE_TO_PROCESS)

"""The dicomhub exception tree.

Services raise these; each adapter (DIMSE, HTTP, CLI) maps them to its own
transport codes in one table, so no transport status appears here::

    DicomhubError
    ├── InvalidRequest            bad identifier / query parameter / body
    │   ├── InvalidIdentifier     a data set that lacks or breaks a required UID
    │   ├── DoesNotMatchIOD       refused by IOD validation (policy reject)
    │   └── SOPClassNotSupported  an object of a SOP class that is not storable here
    ├── NotFound                  unknown resource or move destination
    │   ├── UnknownDestination
    │   └── RejectionFailed       a rejection note references an instance not held
    ├── Conflict                  policy refusal on store
    │   ├── DuplicateInstance     same SOP Instance UID already held
    │   └── PatientMismatch       study already held under another PatientID
    ├── RejectedObject            an instance a rejection note rejected, sent again
    ├── RefusedByPlugin           a plugin's receive hook refused it, with its status
    ├── PluginFailure             a plugin's hook raised (processing failure)
    ├── StorageError              blob write/read failure
    │   ├── BlobMissing
    │   ├── ChecksumMismatch
    │   └── InsufficientStorage   no space left (disk full, quota)
    ├── IndexUnavailable
    ├── TranscodeError            pixel data cannot be decoded / encoded as asked
    ├── DeidentificationError     a de-identification cannot be done as asked
    └── ConfigurationError
"""

from __future__ import annotations

__all__ = [
    "BlobMissing",
    "ChecksumMismatch",
    "ConfigurationError",
    "Conflict",
    "DeidentificationError",
    "DicomhubError",
    "DuplicateInstance",
    "IndexUnavailable",
    "InsufficientStorage",
    "DoesNotMatchIOD",
    "InvalidIdentifier",
    "InvalidRequest",
    "NotFound",
    "PatientMismatch",
    "PluginFailure",
    "RefusedByPlugin",
    "RejectedObject",
    "RejectionFailed",
    "SOPClassNotSupported",
    "StorageError",
    "TranscodeError",
    "UnknownDestination",
]


class DicomhubError(Exception):
    """Base of every error dicomhub raises on purpose."""


class InvalidRequest(DicomhubError):
    """The request (identifier, query parameter, body) is malformed."""


class DoesNotMatchIOD(InvalidRequest):
    """Refused under the ``reject`` validation policy: the data set breaks its IOD."""


class SOPClassNotSupported(InvalidRequest):
    """An object whose SOP class is not a storage SOP class this archive accepts."""


class InvalidIdentifier(InvalidRequest):
    """A data set lacks a required UID or carries an invalid one."""


class NotFound(DicomhubError):
    """An unknown resource."""


class UnknownDestination(NotFound):
    """A C-MOVE destination that is not a configured remote AE."""


class RejectionFailed(NotFound):
    """A rejection note references an instance the archive does not hold.

    The note is refused as a whole (dcm4chee-arc's 0xA772): nothing is rejected."""


class RejectedObject(DicomhubError):
    """An object whose SOP Instance UID a rejection note rejected, sent again.

    It is refused before anything is written (dcm4chee-arc's 0xA771): no copy is kept."""


class RefusedByPlugin(DicomhubError):
    """A plugin's receive hook refused the object before anything was written.

    ``status`` is the plugin's DICOM failure status (0xA7xx, 0xA9xx or 0xCxxx):
    C-STORE answers with it and STOW-RS reports it as the Failure Reason."""

    def __init__(self, plugin: str, status: int, reason: str) -> None:
        super().__init__(f"refused by plugin {plugin}: {reason}")
        self.plugin = plugin
        self.status = status
        self.reason = reason


class PluginFailure(DicomhubError):
    """A plugin's hook raised instead of answering: a processing failure, logged."""


class Conflict(DicomhubError):
    """A store refused by policy; the refused copy is kept in quarantine."""


class DuplicateInstance(Conflict):
    """The SOP Instance UID is already held and the policy refuses the copy."""


class PatientMismatch(Conflict):
    """The study is already held under another PatientID."""


class StorageError(DicomhubError):
    """The blob store could not write or read."""


class BlobMissing(StorageError):
    """An indexed blob is not in the blob store."""


class ChecksumMismatch(StorageError):
    """A blob's bytes no longer match the recorded SHA-256."""


class InsufficientStorage(StorageError):
    """The blob store has no space left (a full disk or an exhausted quota); nothing was
    stored, and a store may succeed again once space is freed."""


class IndexUnavailable(DicomhubError):
    """The index database cannot be reached or written."""


class TranscodeError(DicomhubError):
    """Pixel data cannot be decoded, or cannot be encoded in the requested transfer syntax."""


class DeidentificationError(DicomhubError):
    """A de-identification cannot be done as asked (no secret, bad option or recipe)."""


class ConfigurationError(DicomhubError):
    """The configuration is invalid."""

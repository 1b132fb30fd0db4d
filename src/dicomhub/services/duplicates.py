"""The one duplicate decision: is an object whose SOP Instance UID is held already the same object?

Every store path (C-STORE, STOW-RS, import, migration, ``reindex``) asks
:meth:`DuplicateJudge.difference` when a SOP Instance UID comes again. The
answer is None for the same object, or the first difference in content,
which the duplicate policy then acts on (keep, overwrite, reject):
:meth:`DuplicateJudge.decide` is that decision, for the ingest path.

The cheap path stays cheap: equal data set digests decide at once, so an
identical resend costs one comparison of two strings. Only when the digests
differ are the two objects read and compared by what their data sets say
(:mod:`dicomhub.codec.equivalence`): the same object in another transfer
syntax is the same object.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass

from dicomhub import codec
from dicomhub.errors import DicomhubError, DuplicateInstance
from dicomhub.index.repository import IndexRepository
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.records import InstanceHeader, InstanceRow
from dicomhub.services.blobfiles import blob_as_file
from dicomhub.services.contentdigest import PENDING, content_digest_of_blob, digests_of_blob
from dicomhub.storage.base import BlobStore

__all__ = ["BlobRef", "Decision", "DuplicateJudge", "Incoming", "Verdict", "other_content"]

LOGGER = logging.getLogger("dicomhub.ingest")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A new object already written to the store, by its key."""

    key: str


# The new object of a duplicate decision: its bytes in hand, or its blob.
Incoming = bytes | BlobRef


class Verdict(enum.Enum):
    NEW = "new"  # not held (or held with other content, under overwrite): index it
    PRESENT = "present"  # held with the same content: answer already present
    REFUSED = "refused"  # see Decision.refusal


@dataclass(frozen=True, slots=True)
class Decision:
    """The duplicate decision for one object."""

    verdict: Verdict
    refusal: DuplicateInstance | None = None
    # Refused for other content: the copy is kept in quarantine (dicomhub conflicts).
    quarantine: bool = False


NEW = Decision(Verdict.NEW)


def other_content(header: InstanceHeader, difference: str) -> DuplicateInstance:
    """The refusal of a copy whose content differs from the held one (with the first difference)."""
    return DuplicateInstance(
        f"SOP Instance {header.sop_instance_uid} is already stored with other content: {difference}"
    )


class DuplicateJudge:
    """Judges a second copy of a held SOP Instance UID against the held one."""

    def __init__(self, index: IndexRepository, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def decide(
        self,
        header: InstanceHeader,
        existing: InstanceRow | None,
        content: str,
        incoming: Incoming,
        policy: DuplicatePolicy,
        *,
        may_replace: bool = True,
    ) -> Decision:
        """The one duplicate decision, under the duplicate ``policy``.

        Not held: new. Held with the same content (whatever its encoding,
        :meth:`difference`): already present, or refused under
        ``reject``. Held with other content: replaced under ``overwrite``
        (unless ``may_replace`` is false: the index has already declined to),
        else refused with the copy kept in quarantine.
        """
        if existing is None:
            return NEW
        difference = self.difference(existing, content, header.transfer_syntax_uid, incoming)
        if difference is None:
            if policy is DuplicatePolicy.REJECT:
                return Decision(
                    Verdict.REFUSED,
                    DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    ),
                )
            return Decision(Verdict.PRESENT)
        if policy is DuplicatePolicy.OVERWRITE and may_replace:
            return NEW
        return Decision(Verdict.REFUSED, other_content(header, difference), quarantine=True)

    def held_digest(self, existing: InstanceRow) -> str:
        """The data set digest of an indexed instance: when STOW-RS left it for later,
        computed from the instance's blob (stored as received) and recorded, with the
        blob's own digest when that was left for later too."""
        if existing.content_sha256 != PENDING:
            return existing.content_sha256
        whole, content = digests_of_blob(self.blobs, existing.blob_key, existing.sha256)
        self.index.set_content_digests([(existing.pk, content, whole)])
        return content

    def difference(
        self, existing: InstanceRow, content: str, transfer_syntax_uid: str, incoming: Incoming
    ) -> str | None:
        """How an object with data set digest ``content`` differs from the one already held:
        None when it is the same object.

        The one decision of every source. Equal digests decide at
        once (the identical resend costs nothing more). The held copy may be
        compressed at rest: its content digest is then the received object's,
        and the compressed copy itself can come back (a peer that took the
        stored syntax sends it again), so in the same syntax it is compared
        with the stored data set too. Only when the digests differ are the two
        objects compared by content (:mod:`dicomhub.codec.equivalence`): the
        same object in another transfer syntax is the same object. That costs
        reading both, only for a resend in another encoding or a real conflict.
        ``incoming`` is the new object, in memory or as a written blob.
        """
        if content != PENDING and existing.content_sha256 == content:
            return None
        if existing.content_sha256 == PENDING:
            with contextlib.suppress(DicomhubError, OSError, ValueError):
                if self.held_digest(existing) == content:
                    return None
        elif existing.transfer_syntax_uid == transfer_syntax_uid and content != PENDING:
            with contextlib.suppress(DicomhubError, OSError, ValueError):
                if content_digest_of_blob(self.blobs, existing.blob_key) == content:
                    return None
        difference = self._content_difference(existing, incoming)
        if difference is None:
            LOGGER.info(
                "%s is already held (%s): the copy received in %s has the same content",
                existing.sop_instance_uid,
                existing.transfer_syntax_uid,
                transfer_syntax_uid,
            )
        return difference

    def _content_difference(self, existing: InstanceRow, incoming: Incoming) -> str | None:
        """How the held object and ``incoming`` differ in content (None: they do not)."""
        try:
            with contextlib.ExitStack() as stack:
                held = stack.enter_context(blob_as_file(self.blobs, existing.blob_key))
                # Not isinstance(incoming, bytes): an imported file's bytes are an mmap.
                new: str | bytes = (
                    stack.enter_context(blob_as_file(self.blobs, incoming.key))
                    if isinstance(incoming, BlobRef)
                    else incoming
                )
                return codec.content_difference(held, new)
        except Exception as exc:  # what cannot be compared is not known to be the same
            LOGGER.warning("cannot compare %s with the held copy: %s", existing.sop_instance_uid, exc)
            return f"cannot be compared with the held copy: {exc}"

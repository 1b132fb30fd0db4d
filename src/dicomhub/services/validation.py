"""IOD validation of stored objects: tell each sender what its objects lack.

Under the ``record`` policy (the default) objects are stored as received and a
background worker checks each one shortly after ingest (header only), like
the decode check. Under ``warn`` and ``reject`` the ingest path's one
validation step (:meth:`ValidationService.check_incoming`) checks the
object before it is answered, and ingest writes the findings it returns in
the instance row's transaction; the worker then skips those copies.
Findings are kept per object with its source AE and read back by
``dicomhub validate`` and the admin endpoints.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dicomhub.errors import DicomhubError, DoesNotMatchIOD
from dicomhub.index.engine import lease
from dicomhub.index.validation import FindingRow, PendingValidation, ValidationRecord, ValidationRepository
from dicomhub.iod.validate import Finding, Severity, validate_encoded, validate_part10
from dicomhub.model.ingest import InstanceOrigin
from dicomhub.model.policy import ValidationPolicy
from dicomhub.model.records import InstanceHeader
from dicomhub.services.background import run_until_stopped
from dicomhub.services.blobfiles import blob_as_file
from dicomhub.services.duplicates import BlobRef, Incoming
from dicomhub.storage.base import BlobStore

__all__ = ["NOT_VALIDATED", "Validated", "ValidationService", "has_errors"]

LOGGER = logging.getLogger("dicomhub.validation")
# A refusal at ingest is logged with the other refusals of the store path.
_INGEST_LOGGER = logging.getLogger("dicomhub.ingest")

_CURSOR = "validation"


@dataclass(frozen=True, slots=True)
class Validated:
    """What the validation step found: the record to write with the row (None when the
    policy leaves validation to the background worker) and the warning to report."""

    record: ValidationRecord | None = None
    warning: str | None = None


NOT_VALIDATED = Validated()


def has_errors(findings: Sequence[Finding]) -> bool:
    """True when any finding is an error (what the reject policy refuses)."""
    return any(f.severity is Severity.ERROR for f in findings)


class ValidationService:
    """Checks objects against their IOD, records findings, and reports them.

    Parameters
    ----------
    repo
        Where results go.
    blobs
        The blob store the background worker reads stored objects from.
    policy
        The default policy; the store path applies per-source overrides
        itself (:meth:`policy_for` with its table).
    """

    def __init__(
        self,
        repo: ValidationRepository,
        blobs: BlobStore,
        policy: ValidationPolicy = ValidationPolicy.RECORD,
        overrides: dict[str, ValidationPolicy] | None = None,
        last_change: Callable[[], int] | None = None,
    ) -> None:
        """``last_change`` (the change log's head) lets the worker wait for quiet moments."""
        self.repo = repo
        self.blobs = blobs
        self.policy = policy
        self.overrides = dict(overrides or {})
        self.last_change = last_change

    def policy_for(self, source_ae_title: str | None) -> ValidationPolicy:
        """The policy for objects from ``source_ae_title`` (its override, else the default)."""
        if source_ae_title is not None and source_ae_title.strip() in self.overrides:
            return self.overrides[source_ae_title.strip()]
        return self.policy

    # -------------------------------------------------------------- inline (warn / reject)

    def validate_bytes(
        self, data: bytes | bytearray | memoryview, transfer_syntax_uid: str | None = None
    ) -> list[Finding]:
        """Check an object held in memory: a Part 10 file, or (with ``transfer_syntax_uid``)
        a data set without File Meta as C-STORE delivers it. Header only; never raises."""
        if transfer_syntax_uid is not None and bytes(data[128:132]) != b"DICM":
            return validate_encoded(data, transfer_syntax_uid)
        return validate_part10(data)

    def validate_file(self, path: str | os.PathLike[str]) -> list[Finding]:
        """Check a Part 10 file on disk (a spooled large object), header only."""
        return validate_part10(path)

    def check_incoming(
        self,
        header: InstanceHeader,
        source_ae_title: str | None,
        origin: InstanceOrigin,
        source: Incoming,
        blobs: BlobStore,
    ) -> Validated:
        """The one validation step of ingest: IOD validation under the ``warn`` and
        ``reject`` policies of the source's AE title (header only), for every source alike.

        ``source`` is the object in hand (a Part 10 file's bytes) or its
        written blob in ``blobs``. Under ``record`` nothing is checked here: the
        background worker checks the stored copy. The findings are returned for
        ingest to write with the instance row; a refused object's are written
        here on their own, as there is no row.

        Raises
        ------
        DoesNotMatchIOD
            Under ``reject``, for an object with errors.
        """
        policy = self.policy_for(source_ae_title)
        if policy is ValidationPolicy.RECORD:
            return NOT_VALIDATED
        if isinstance(source, BlobRef):
            with blob_as_file(blobs, source.key) as path:
                findings = self.validate_file(path)
        else:
            findings = self.validate_bytes(source)
        errors = [f for f in findings if f.is_error]
        if policy is ValidationPolicy.REJECT and errors:
            self.record(
                header.sop_instance_uid, header.sop_class_uid, source_ae_title, findings, rejected=True
            )
            _INGEST_LOGGER.warning(
                "%s from %s refused by IOD validation: %s",
                header.sop_instance_uid[:80],
                origin.describe(),
                errors[0].message,
            )
            raise DoesNotMatchIOD(f"IOD: {errors[0].message}")
        record = self.as_record(header.sop_instance_uid, header.sop_class_uid, source_ae_title, findings)
        return Validated(record, errors[0].message if errors else None)

    def as_record(
        self,
        sop_instance_uid: str,
        sop_class_uid: str,
        source_ae_title: str | None,
        findings: Sequence[Finding],
    ) -> ValidationRecord:
        """The findings of one object as the index writes them (with its row, at ingest)."""
        return _record(sop_instance_uid, sop_class_uid, source_ae_title, findings, False)

    def record(
        self,
        sop_instance_uid: str,
        sop_class_uid: str,
        source_ae_title: str | None,
        findings: Sequence[Finding],
        *,
        rejected: bool = False,
    ) -> None:
        """Save the findings of one object (after it was stored, or refused with ``rejected``)."""
        self.repo.record([_record(sop_instance_uid, sop_class_uid, source_ae_title, findings, rejected)])

    # -------------------------------------------------------------- background

    def run_pending(self, batch: int = 100) -> int:
        """Check up to ``batch`` instances stored since the last run; return how many were looked at."""
        position = self.repo.cursor(_CURSOR)
        pending = self.repo.instances_after(position, batch)
        if not pending:
            return 0
        records = [self.check(item) for item in pending if not item.checked]
        for rec in records:
            if any(f.severity == "error" for f in rec.findings):
                LOGGER.info(
                    "stored object %s from %s fails its IOD check (%d findings)",
                    rec.sop_instance_uid,
                    rec.source_ae_title or "-",
                    len(rec.findings),
                )
        self.repo.record(records, cursor=(_CURSOR, pending[-1].pk))
        return len(pending)

    def check(self, item: PendingValidation) -> ValidationRecord:
        """Validate one stored instance's header."""
        try:
            with blob_as_file(self.blobs, item.blob_key) as path:
                findings = validate_part10(path)
        except DicomhubError as exc:
            findings = [
                Finding(Severity.ERROR, "unreadable", "", "", f"cannot read the stored object: {exc}")
            ]
        except Exception as exc:  # noqa: BLE001 - a validator failure is a finding, not a crash
            LOGGER.exception("validation of %s failed", item.sop_instance_uid)
            findings = [
                Finding(
                    Severity.WARNING, "internal", "", "", f"validation failed: {type(exc).__name__}: {exc}"
                )
            ]
        return _record(item.sop_instance_uid, item.sop_class_uid, item.source_ae_title, findings, False)

    def run_worker(self, stop: threading.Event, idle: float = 0.5) -> None:
        """Loop until ``stop``, checking new instances as they arrive (lowest priority)."""
        run_until_stopped(
            stop,
            self.run_pending,
            "validation",
            LOGGER,
            idle,
            last_change=self.last_change,
            claim=functools.partial(lease, self.repo.engine, "validation-worker"),
        )

    # -------------------------------------------------------------- reports

    def findings(
        self,
        source_ae: str | None = None,
        limit: int = 1000,
        *,
        sop_instance_uid: str | None = None,
        severity: str | None = None,
        study_instance_uid: str | None = None,
    ) -> list[dict[str, Any]]:
        """Findings as JSON-ready dicts, newest first: sop_instance_uid, sop_class_uid,
        source_ae_title, severity, code, module, attribute, message, checked_at, rejected."""
        return self.repo.findings(
            source_ae_title=source_ae,
            sop_instance_uid=sop_instance_uid,
            severity=severity,
            study_instance_uid=study_instance_uid,
            limit=limit,
        )

    def summary(self) -> list[dict[str, Any]]:
        """Per source AE: instances checked / with errors / with warnings / rejected, top findings."""
        return self.repo.summary()


def _record(
    sop_instance_uid: str,
    sop_class_uid: str,
    source_ae_title: str | None,
    findings: Sequence[Finding],
    rejected: bool,
) -> ValidationRecord:
    rows = [FindingRow(f.severity.value, f.code, f.module, f.attribute, f.message) for f in findings]
    return ValidationRecord(sop_instance_uid, sop_class_uid, source_ae_title, rows, rejected)

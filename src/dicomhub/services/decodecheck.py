"""The decode check: learn that a stored object's pixel data cannot be read
before a viewer or a retrieve does.

Objects are stored whatever their pixel data holds (an archive never loses
data it acknowledged); shortly after ingest a background worker decodes
them once and records the result. ``sample`` mode decodes the first objects
of each (transfer syntax, SOP class) pair until one decodes: enough to learn
that this install cannot read a syntax a modality started to send.
``always`` decodes every object (and every frame).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from dicomhub import codec
from dicomhub.errors import DicomhubError
from dicomhub.index.checks import DecodeCheckRepository, DecodeResult, PendingInstance
from dicomhub.index.engine import lease
from dicomhub.model.policy import DecodeCheckMode
from dicomhub.services.background import run_until_stopped
from dicomhub.services.blobfiles import blob_as_file
from dicomhub.storage.base import BlobStore

__all__ = ["DecodeCheckService"]

LOGGER = logging.getLogger("dicomhub.decodecheck")

_CURSOR = "decode-check"


class DecodeCheckService:
    """Runs the decode check over newly stored instances and reports failures."""

    def __init__(
        self,
        checks: DecodeCheckRepository,
        blobs: BlobStore,
        mode: DecodeCheckMode,
        last_change: Callable[[], int] | None = None,
    ) -> None:
        """``last_change`` (the change log's head) lets the worker wait for quiet moments."""
        self.checks = checks
        self.blobs = blobs
        self.mode = mode
        self.last_change = last_change

    def failure_count(self) -> int:
        return self.checks.failure_count()

    def failures(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """Stored instances (of one study, when given) whose pixel data did not decode."""
        return self.checks.failures(study_instance_uid)

    def decoders(self) -> list[dict[str, Any]]:
        """Objects decoded by each decoder, per transfer syntax (``transfer_syntax_uid``,
        ``decoder``, ``objects``)."""
        return self.checks.decoders()

    def run_pending(self, batch: int = 100) -> int:
        """Look at up to ``batch`` instances stored since the last run; return how many."""
        if self.mode is DecodeCheckMode.OFF:
            return 0
        position = self.checks.cursor(_CURSOR)
        pending = self.checks.instances_after(position, batch)
        if not pending:
            return 0
        sample = self.mode is DecodeCheckMode.SAMPLE
        verified = self.checks.verified_pairs() if sample else set()
        results: list[DecodeResult] = []
        for item in pending:
            pair = (item.transfer_syntax_uid, item.sop_class_uid)
            if sample and pair in verified:
                continue
            result = self.check(item)
            results.append(result)
            if result.ok:
                verified.add(pair)
            else:
                LOGGER.warning(
                    "stored object %s (%s) does not decode: %s",
                    item.sop_instance_uid,
                    item.transfer_syntax_uid,
                    result.reason,
                )
        self.checks.record(results, _CURSOR, pending[-1].pk)
        return len(pending)

    def check(self, item: PendingInstance) -> DecodeResult:
        """Decode one instance's pixel data (every frame in ``always`` mode)."""
        decoder: str | None = None
        try:
            with blob_as_file(self.blobs, item.blob_key) as path:
                report = codec.decode_report(path, all_frames=self.mode is DecodeCheckMode.ALWAYS)
            reason = report.reason
            # Which decoder read it: the GDCM fallback shows the objects the fast path cannot read.
            decoder = report.decoder if reason is None else None
        except DicomhubError as exc:
            reason = f"cannot read the stored object: {exc}"
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
            reason = f"{type(exc).__name__}: {exc}"
        return DecodeResult(
            item.sop_instance_uid,
            item.sop_class_uid,
            item.transfer_syntax_uid,
            reason is None,
            reason,
            decoder,
        )

    def run_worker(self, stop: threading.Event, idle: float = 0.5) -> None:
        """Loop until ``stop``, checking new instances as they arrive (lowest priority)."""
        if self.mode is not DecodeCheckMode.OFF:
            run_until_stopped(
                stop,
                self.run_pending,
                "decode check",
                LOGGER,
                idle,
                last_change=self.last_change,
                claim=functools.partial(lease, self.checks.engine, "decode-check-worker"),
            )

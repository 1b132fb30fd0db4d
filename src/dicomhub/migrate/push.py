"""The push side of a migration job: this archive's series sent to a remote target.

:class:`Pusher` sends by C-STORE or STOW-RS (:mod:`dicomhub.migrate.targets`)
only the objects the target lacks, de-identified on the way when the job has
that step, and checks study by study what arrived
(:meth:`Pusher.push_study`); :class:`~dicomhub.migrate.runner.Migrator` runs
the job around it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread

from dicomhub import codec
from dicomhub.config import Settings
from dicomhub.config.checks import tls_client_context
from dicomhub.errors import DicomhubError
from dicomhub.migrate.sources import RemoteError
from dicomhub.migrate.targets import DicomwebTarget, DimseTarget, Outgoing, open_target
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import Level
from dicomhub.model.migration import ITEM_DONE, InventorySeries, InventoryStudy, RemoteArchive, RemoteKind
from dicomhub.model.query import Condition, Query, Single
from dicomhub.model.records import InstanceRow
from dicomhub.services.archive import Archive
from dicomhub.services.deidentify import MigrationDeid

__all__ = ["Outcome", "Pusher", "series_of_item", "tls_context"]

LOGGER = logging.getLogger("dicomhub.migrate")


def series_of_item(series_of: dict[str, InventorySeries], item: dict[str, Any]) -> InventorySeries:
    """The source's inventory of a job item's series (empty when the inventory lacks it)."""
    return series_of.get(item["series_instance_uid"]) or InventorySeries(item["series_instance_uid"])


def tls_context(settings: Settings, remote: RemoteArchive) -> ssl.SSLContext | None:
    """The DICOM TLS client context for a DIMSE peer with ``tls`` set, else None.
    Never a fallback to plain TCP: a context that cannot be loaded is a
    ConfigurationError, and the migration step fails with it."""
    if remote.kind is not RemoteKind.DIMSE or not remote.tls:
        return None
    return tls_client_context(settings)


# (item, state, attempts, instances done, bytes, error) of one series of a job.
Outcome = tuple[dict[str, Any], str, int, int, int, str | None]


class Pusher:
    """Sends this archive's series to a push target: one association (or HTTP client)
    per worker thread, only the objects the target lacks, de-identified on the way
    when the job has that step."""

    def __init__(
        self, archive: Archive, settings: Settings, remote: RemoteArchive, step: MigrationDeid | None
    ) -> None:
        self.archive, self.settings, self.remote, self.step = archive, settings, remote, step
        self.caller = Caller(Channel.INTERNAL, f"migrate:{remote.name}")
        self.transcoded: list[tuple[str, str, str]] = []  # (SOP Instance UID, stored TS, sent TS)
        self._local = threading.local()
        self._targets: list[DimseTarget | DicomwebTarget] = []
        self._lock = threading.Lock()

    def _target(self) -> DimseTarget | DicomwebTarget:
        target: DimseTarget | DicomwebTarget | None = getattr(self._local, "target", None)
        if target is None:
            target = self._local.target = open_target(
                self.remote,
                self.settings.aet,
                self.settings.dimse_timeout,
                tls_context(self.settings, self.remote),
            )
            with self._lock:
                self._targets.append(target)
        return target

    def held(self, study_uid: str, series_uid: str) -> set[str]:
        return self._target().held(study_uid, series_uid)

    def held_study(self, study_uid: str) -> dict[str, set[str]] | None:
        """Series -> SOP Instance UIDs the target holds of a study, in one query (None:
        the target refuses a query over a whole study)."""
        return self._target().held_study(study_uid)

    def push_series(
        self,
        study_uid: str,
        series: InventorySeries,
        uid: Callable[[str], str],
        there: set[str] | None = None,
    ) -> int:
        """Send what the target lacks of a stored series (``there``: what it holds,
        asked of it when None); return the bytes sent."""
        query = Query(
            Level.SERIES, (Condition("SeriesInstanceUID", "UI", Single(series.series_instance_uid)),)
        )
        rows = self.archive.search.instances(query, self.caller)
        if there is None:
            there = self.held(uid(study_uid), uid(series.series_instance_uid))
        outgoing = [self._outgoing(row, uid) for row in rows if uid(row.sop_instance_uid) not in there]
        sent = self._target().send(outgoing)
        with self._lock:
            self.transcoded.extend(sent.transcoded)
        if sent.failures:
            raise RemoteError(f"{len(sent.failures)} objects not sent: {sent.failures[0]}")
        return sent.bytes

    def _outgoing(self, row: InstanceRow, uid: Callable[[str], str]) -> Outgoing:
        read = self.archive.retrieve.read
        step = self.step
        if step is None:

            def in_syntax(syntax: str) -> bytes:
                transcoded = self.archive.transcode.transcode(row, syntax)
                try:
                    return Path(transcoded.path).read_bytes()
                finally:
                    transcoded.close()

            return Outgoing(
                row.sop_class_uid, row.sop_instance_uid, row.transfer_syntax_uid, lambda: read(row), in_syntax
            )
        kept: list[bytes] = []

        def deidentified() -> bytes:
            # De-identified when it is sent, once: a syntax fallback or a STOW-RS retry
            # reuses the result (kept until the series is sent).
            if not kept:
                ds = step(dcmread(BytesIO(read(row))))
                if str(ds.file_meta.TransferSyntaxUID) != row.transfer_syntax_uid:
                    raise DicomhubError(
                        f"{row.sop_instance_uid}: masking burned-in text changed its transfer syntax"
                    )
                out = BytesIO()
                ds.save_as(out, enforce_file_format=True)
                kept.append(out.getvalue())
            return kept[0]

        return Outgoing(
            row.sop_class_uid,
            uid(row.sop_instance_uid),
            row.transfer_syntax_uid,
            deidentified,
            lambda syntax: codec.transcode_bytes(deidentified(), syntax),
        )

    def notes(self) -> str:
        sop, stored, sent = self.transcoded[0]
        return (
            f"{len(self.transcoded)} objects sent in another transfer syntax than stored, because "
            f"{self.remote.name} accepts none of theirs (first: {sop}, {stored} sent as {sent})"
        )

    def push_study(
        self,
        items: list[dict[str, Any]],
        have: InventoryStudy | None,
        series_of: dict[str, InventorySeries],
        uid: Callable[[str], str],
        retry: Callable[[dict[str, Any]], Outcome],
    ) -> list[Outcome]:
        """Push the items (series) of one study, then ask the target once what arrived.

        ``have`` is what the target's inventory of the job held of the study (only
        the rest is sent); a series that did not arrive, or failed, is handed to
        ``retry`` (with its attempt counted) to be tried again on its own.
        """
        study_uid = items[0]["study_instance_uid"]
        sent: dict[int, int] = {}
        errors: dict[int, str] = {}
        for item in items:
            series = series_of_item(series_of, item)
            there = have.series.get(uid(series.series_instance_uid)) if have else None
            try:
                sent[item["pk"]] = self.push_series(
                    study_uid, series, uid, set(there.instances) if there else set()
                )
            except (DicomhubError, OSError) as exc:
                errors[item["pk"]] = str(exc) or type(exc).__name__
        try:
            after = self.held_study(uid(study_uid))
        except (DicomhubError, OSError) as exc:
            LOGGER.warning("study %s: what the target holds is unknown: %s", study_uid, exc)
            after = None
        out: list[Outcome] = []
        for item in items:
            series = series_of_item(series_of, item)
            expected = {uid(sop) for sop in series.instances}
            nbytes = sent.get(item["pk"], 0)
            arrived = after is not None and expected <= after.get(uid(series.series_instance_uid), set())
            if item["pk"] not in errors and arrived:
                out.append((item, ITEM_DONE, item["attempts"] + 1, len(series.instances), nbytes, None))
                continue
            if item["pk"] in errors:
                LOGGER.warning("series %s: %s", series.series_instance_uid, errors[item["pk"]])
            again = retry({**item, "attempts": item["attempts"] + 1})
            out.append((item, *again[1:4], again[4] + nbytes, again[5]))
        return out

    def close(self) -> None:
        for target in self._targets:
            target.close()

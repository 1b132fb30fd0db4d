"""Composition root: Settings -> engine, blob store, services, and the processes of ``serve``.

No logic of its own: the CLI parses and calls in here (:func:`open_archive`
and the other ``open_*`` functions, each closed by the caller, and
:func:`serve`, the process orchestration of ``dicomhub serve``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import faulthandler
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.etree import ElementTree

from dicomhub.codec import transfer_syntax
from dicomhub.config import Settings, tls_client_context, tls_server_context
from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.index.analytics import MetadataRows
from dicomhub.index.associations import AssociationLogRepository
from dicomhub.index.backup import IndexBackup
from dicomhub.index.blobs import BlobRecords
from dicomhub.index.checks import DecodeCheckRepository
from dicomhub.index.coercion import PatientCoercionRepository
from dicomhub.index.commitment import CommitmentRepository
from dicomhub.index.deid import DeidRepository
from dicomhub.index.engine import connect_engine, lease, migrate
from dicomhub.index.links import StudyLinkRepository
from dicomhub.index.migration_jobs import MigrationRepository
from dicomhub.index.mpps import MppsRepository
from dicomhub.index.orders import OrderRepository
from dicomhub.index.peers import PeerRepository
from dicomhub.index.printing import PrintJobRepository
from dicomhub.index.rejection import RejectionRepository
from dicomhub.index.repair import RepairRepository
from dicomhub.index.repository import IndexRepository
from dicomhub.index.retention import RetentionRepository
from dicomhub.index.routing import RouteRepository
from dicomhub.index.security import AuditRepository, SecurityRepository
from dicomhub.index.stability import StabilityRepository
from dicomhub.index.trash import TrashRepository
from dicomhub.index.validation import ValidationRepository
from dicomhub.index.webhooks import WebhookRepository
from dicomhub.index.worklist import WorklistRepository
from dicomhub.migrate.repairsource import PeerInstanceFetcher
from dicomhub.model.audit import AuditOutcome, AuditRecord
from dicomhub.model.commitment import CommitmentResult
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.peerconfig import configured_peers
from dicomhub.services.access import AccessService, parse_claim_grants, parse_label_rules
from dicomhub.services.aes import ApplicationEntityService
from dicomhub.services.analytics import MetadataExport
from dicomhub.services.archive import Archive
from dicomhub.services.audit import AuditService
from dicomhub.services.backup import BackupService, read_manifest
from dicomhub.services.changes import ChangeFeedService
from dicomhub.services.coercion import ArchivePatients
from dicomhub.services.commitment import CommitmentService
from dicomhub.services.contentdigest import ContentDigestService
from dicomhub.services.decodecheck import DecodeCheckService
from dicomhub.services.deidentify import DeidService
from dicomhub.services.delete import DeleteService
from dicomhub.services.governance import GovernanceService
from dicomhub.services.headers import HeaderService
from dicomhub.services.imagingstudy import ImagingStudyService
from dicomhub.services.ingest import IngestService
from dicomhub.services.links import StudyLinkService
from dicomhub.services.migration import MigrationService
from dicomhub.services.mpps import MppsService
from dicomhub.services.oidc import OidcVerifier
from dicomhub.services.orders import OrderService
from dicomhub.services.osprinter import OsPrinter
from dicomhub.services.peers import PeerService
from dicomhub.services.printarchive import PrintArchive
from dicomhub.services.printclient import PrintClientService
from dicomhub.services.printing import PrintService
from dicomhub.services.reindex import ReindexService
from dicomhub.services.rejection import RejectionService
from dicomhub.services.rejection_notes import RejectionNotes
from dicomhub.services.repair import RepairService
from dicomhub.services.retention import RetentionService
from dicomhub.services.retrieve import RetrieveService
from dicomhub.services.routing import RoutingService
from dicomhub.services.search import SearchService
from dicomhub.services.stability import StabilityService
from dicomhub.services.statistics import StatisticsService
from dicomhub.services.storagecheck import StorageCheckService
from dicomhub.services.storagemigration import StorageMigration
from dicomhub.services.transcode import TranscodeService
from dicomhub.services.trash import TrashService
from dicomhub.services.validation import ValidationService
from dicomhub.services.wado import WadoService
from dicomhub.services.webhooks import Poster, WebhookService
from dicomhub.services.worklist import WorklistService
from dicomhub.storage.base import BlobStore
from dicomhub.storage.urls import open_blob_store as open_store_at
from dicomhub.storage.urls import open_blob_stores
from dicomhub.telemetry import logs

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dicomhub.hl7.mllp import MllpListener

__all__ = [
    "closed_after",
    "configure_logging",
    "configure_pydicom",
    "open_audit_feed",
    "open_archive",
    "open_backup",
    "open_blob_store",
    "open_reindex",
    "restore_source",
    "open_storage_migration",
    "mpps_sender",
    "run_background_worker",
    "run_dimse_worker",
    "run_migration_jobs",
    "serve",
    "start_hl7_listener",
]

_T = TypeVar("_T")

# The logger `serve` has always written to (the banner of a JSON log, the signal that stopped it).
_LOGGER = logging.getLogger("dicomhub")


def configure_pydicom() -> None:
    """Set pydicom's globals for an archive.

    Received values are kept as they are and validated by dicomhub where it
    matters (identifying UIDs); pydicom must not warn about every odd value of
    every received object, nor change them.
    """
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def open_archive(settings: Settings, *, upgrade: bool = True) -> Archive:
    """Open (and by default migrate) the archive described by ``settings``.

    The archive is a context manager: ``with open_archive(settings) as archive:``
    closes its engine and audit feed however the block ends. When opening fails
    half-way, what was opened is closed before the error propagates.
    """
    configure_pydicom()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = connect_engine(settings.index_url, busy_timeout=settings.database_busy_timeout)
    try:
        return _wire_archive(settings, engine, upgrade)
    except BaseException:
        engine.dispose()
        raise


def _wire_archive(settings: Settings, engine: Engine, upgrade: bool) -> Archive:
    if upgrade:
        migrate(engine, lock_dir=settings.data_dir)
    index = IndexRepository(engine)
    blobs = open_blob_store(settings)
    headers = HeaderService(index, blobs)
    content_digests = ContentDigestService(index, blobs)
    access = AccessService(
        SecurityRepository(engine),
        oidc=open_oidc(settings),
        claim_grants=parse_claim_grants(settings.oidc_roles),
        label_rules=parse_label_rules(settings.label_rules),
    )
    search = SearchService(index, headers)
    transcode = TranscodeService(blobs, settings.spool_dir)
    compression = [(rule, transfer_syntax(rule.transfer_syntax).uid) for rule in settings.compress]
    validation = ValidationService(
        ValidationRepository(engine),
        blobs,
        settings.validation_policy,
        dict(settings.validation_ae),
        last_change=index.last_change,
    )
    # The order services are needed by ingest (linking studies to orders); their
    # audit and the archive's patients are set once those exist, below.
    order_repo = OrderRepository(engine)
    orders = OrderService(order_repo)
    links = StudyLinkService(StudyLinkRepository(engine), orders, blobs=blobs)
    orders.placed.append(links.link_for_order)
    rejection_notes = RejectionNotes(RejectionRepository(engine))
    ingest = IngestService(
        index,
        blobs,
        settings.duplicate_policy,
        compression,
        validation,
        store_guard=access.check_store,
        labeller=access.labels_for_object if access.label_rules else None,
        storable=StorableSOPClasses.from_settings(
            settings.accept_sop_classes, settings.accept_unknown_sop_classes
        ),
        linker=links.link_stored,
        rejections=rejection_notes,
    )
    configured = configured_peers(settings.peers, settings.remote_aes)
    # Opened last: its sender thread is closed only by the archive's close.
    feed = open_audit_feed(settings)
    audit = AuditService(AuditRepository(engine), forward=feed[0] if feed else None)
    links.audit = audit
    delete = DeleteService(index, blobs, access.study_facts)
    rejection_notes.audit, rejection_notes.delete = audit, delete
    peers = PeerService(
        PeerRepository(engine),
        configured,
        audit,
        environ=os.environ,  # for env:VARIABLE credentials
    )
    governance = GovernanceService(access, audit)
    patients = ArchivePatients(
        PatientCoercionRepository(engine), order_repo, audit, issuer=settings.patient_id_issuer
    )
    orders.audit, orders.archive = audit, patients
    deid = DeidService(
        DeidRepository(engine),
        governance,
        index,
        search,
        blobs,
        ingest,
        key_file=Path(settings.deid_key_file) if settings.deid_key_file else None,
        environ=os.environ,
        burned_in=settings.deid_burned_in,
        mask=[(r.x, r.y, r.width, r.height) for r in settings.deid_mask],
    )
    from dicomhub.dimse.printscu import DimseFilmPrinter  # the Print SCU's requestor

    wado = WadoService(index, search, blobs, transcode, patients)
    trash = TrashRepository(engine)
    delete = DeleteService(index, blobs, access.study_facts, trash, settings.trash_keep)
    return Archive(
        index=index,
        blobs=blobs,
        headers=headers,
        content_digests=content_digests,
        ingest=ingest,
        search=search,
        retrieve=RetrieveService(search, blobs, settings.spool_dir, patients),
        delete=delete,
        wado=wado,
        transcode=transcode,
        decode_check=DecodeCheckService(
            DecodeCheckRepository(engine), blobs, settings.decode_check, last_change=index.last_change
        ),
        commitment=CommitmentService(index, blobs, CommitmentRepository(engine)),
        statistics=StatisticsService(AssociationLogRepository(engine), index),
        validation=validation,
        deid=deid,
        governance=governance,
        access=access,
        audit=audit,
        migration=MigrationService(MigrationRepository(engine), content_digests, peers),
        storage_check=StorageCheckService(
            BlobRecords(engine), blobs, ingest, claim=lambda name: lease(engine, name)
        ),
        peers=peers,
        aes=ApplicationEntityService(peers),
        orders=orders,
        mpps=MppsService(MppsRepository(engine), orders, settings.mpps_hl7_destination, settings.aet),
        printing=PrintService(
            PrintJobRepository(engine),
            blobs,
            settings.print_dpi,
            OsPrinter(settings.print_os_command) if settings.print_os_command else None,
            _print_archive(settings, ingest),
        ),
        patients=patients,
        worklist=WorklistService(WorklistRepository(engine)),
        links=links,
        imaging_studies=ImagingStudyService(search, links, orders),
        changes=ChangeFeedService(index),
        analytics=MetadataExport(index, MetadataRows(engine), headers.header_json),
        stability=StabilityService(
            StabilityRepository(engine), settings.stable_age, claim=lambda name: lease(engine, name)
        ),
        webhooks=WebhookService(
            settings.webhooks,
            index,
            WebhookRepository(engine),
            webhook_poster(),
            os.environ,
            claim=lambda name: lease(engine, name),
        ),
        routing=RoutingService(
            settings.routes, index, RouteRepository(engine), peers, claim=lambda name: lease(engine, name)
        ),
        trash=TrashService(trash, index, blobs, settings.trash_keep, audit, lambda name: lease(engine, name)),
        retention=RetentionService(
            RetentionRepository(engine),
            delete,
            settings.retention,
            settings.retention_interval,
            audit,
            claim=lambda name: lease(engine, name),
        ),
        close=_closer(engine.dispose, feed[1] if feed else None),
        print_client=PrintClientService(
            wado, settings.printers, DimseFilmPrinter(settings.aet, settings.dimse_timeout), audit
        ),
        repair=RepairService(
            RepairRepository(engine),
            blobs,
            peers,
            PeerInstanceFetcher(settings),
            audit,
            claim=lambda name: lease(engine, name),
        ),
        rejection=RejectionService(ingest, wado, headers, access.study_facts),
    )


def _closer(dispose: Callable[[], None], close_feed: Callable[[], None] | None) -> Callable[[], None]:
    def close() -> None:
        if close_feed is not None:
            close_feed()  # send what is queued while the collector is there
        dispose()

    return close


def open_audit_feed(
    settings: Settings,
) -> tuple[Callable[[Sequence[AuditRecord]], None], Callable[[], None]] | None:
    """The syslog audit feed of ``settings.audit_syslog`` (IHE ATNA), or None.

    Returns
    -------
    tuple or None
        ``(forward, close)``: ``forward(records)`` queues each record as a
        DICOM audit message (PS3.15 A.5, the XML of ``GET /audit/export``) in an
        RFC 5424 message; ``close()`` sends what is queued and disconnects. One
        sender (thread and connection) per process that records audit events.
    """
    if not settings.audit_syslog:
        return None
    from dicomhub.services.auditexport import dicom_audit_message
    from dicomhub.telemetry.syslog import SyslogSender, client_context, parse_target

    target = parse_target(settings.audit_syslog)
    context = None
    if target.transport == "tls":
        try:
            context = client_context(
                settings.audit_syslog_ca, settings.audit_syslog_cert, settings.audit_syslog_key
            )
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"audit_syslog TLS: {exc}") from exc
    sender = SyslogSender(target, app_name=settings.aet, context=context)

    def forward(records: Sequence[AuditRecord]) -> None:
        for record in records:
            xml = ElementTree.tostring(dicom_audit_message(record, settings.aet), encoding="unicode")
            # RFC 5424 severity: 5 notice for a success, 4 warning for a failure.
            sender.submit(xml, severity=5 if record.outcome is AuditOutcome.SUCCESS else 4)

    return forward, sender.close


def open_oidc(settings: Settings) -> OidcVerifier | None:
    """The verifier of OpenID Connect bearer tokens, when an issuer is configured.

    Nothing is fetched here: the discovery document and the keys are read at the
    first token, so that the archive starts (and the CLI works) while the
    identity provider is unreachable.

    Raises
    ------
    ConfigurationError
        For OpenID Connect settings that cannot work: an issuer that is not https
        when discovery needs it, a JWKS URL that is not https, an unreadable CA
        bundle, role settings without an issuer, a role claim without a mapping or
        the other way round, or a mapping entry that does not parse.
    """
    if not settings.oidc_issuer:
        if settings.oidc_role_claim or settings.oidc_roles:
            raise ConfigurationError("oidc_role_claim and oidc_roles need oidc_issuer")
        return None
    if bool(settings.oidc_role_claim) != bool(settings.oidc_roles):
        raise ConfigurationError(
            "oidc_role_claim (the claim to read) and oidc_roles (what its values grant) go together"
        )
    parse_claim_grants(settings.oidc_roles)  # an entry that does not parse stops serve here
    return OidcVerifier(
        settings.oidc_issuer,
        settings.oidc_jwks,
        settings.oidc_audience,
        settings.oidc_principal_claim,
        accept_azp=settings.oidc_accept_azp,
        role_claim=settings.oidc_role_claim,
        ca_file=settings.oidc_ca_file,
    )


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store of ``settings`` (with its fallback during a storage migration)."""
    return open_blob_stores(
        settings.blob_store_url,
        settings.storage_fallback_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_read_timeout=settings.s3_read_timeout,
        s3_max_attempts=settings.s3_max_attempts,
    )


def open_storage_migration(
    settings: Settings, target_url: str, source_url: str | None = None
) -> tuple[StorageMigration, Callable[[], None]]:
    """A migration of the blobs of ``settings``' archive to ``target_url``, and its close.

    The source is ``source_url``, else the configured fallback store (the
    nodes already read from both), else the configured store.
    """
    source_url = source_url or settings.storage_fallback_url or settings.blob_store_url
    if source_url == target_url:
        raise ConfigurationError(f"the blobs are in {target_url} already")
    stores: dict[str, Any] = {"s3_endpoint_url": settings.s3_endpoint_url, "s3_region": settings.s3_region}
    source, target = open_store_at(source_url, **stores), open_store_at(target_url, **stores)
    engine = connect_engine(settings.index_url)  # last: nothing after it can fail and leak it
    return StorageMigration(BlobRecords(engine), source, target), engine.dispose


def open_backup(settings: Settings) -> tuple[BackupService, Callable[[], None]]:
    """Backup and restore of the archive of ``settings`` (not migrated: a restore
    target may not have its schema yet), and its close."""
    configure_pydicom()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = open_blob_store(settings)
    engine = connect_engine(settings.index_url)  # last: nothing after it can fail and leak it
    service = BackupService(
        IndexBackup(engine, settings.index_url, settings.data_dir),
        blobs,
        settings.blob_store_url,
        open_repository=lambda: IndexRepository(engine),
    )
    return service, engine.dispose


def restore_source(settings: Settings, src: Path, blobs_from: str | None = None) -> BlobStore | None:
    """Where the blobs of the backup in ``src`` are read from when restoring into ``settings``' archive.

    The backup's own ``blobs/`` folder when it has one; else ``blobs_from`` or
    the store the backup was taken from. None when that is the archive's own
    store (a manifest-only backup of an S3 archive restored onto its bucket):
    the blobs are then verified where they are.
    """
    manifest, _entries = read_manifest(src)
    stores: dict[str, Any] = {"s3_endpoint_url": settings.s3_endpoint_url, "s3_region": settings.s3_region}
    if blobs_from is None and manifest.blobs_copied:
        folder = src / "blobs"
        if not (folder / "ff" / "f").is_dir():
            # Opening a file store on it would create its folders inside the backup.
            raise DicomhubError(f"{src}: the backup's blob folder {folder} is missing or incomplete")
        return open_store_at(folder.resolve().as_uri(), **stores)
    url = blobs_from or manifest.store_url
    if url == settings.blob_store_url:
        return None
    return open_store_at(url, **stores)


def open_reindex(settings: Settings) -> tuple[ReindexService, Callable[[], None]]:
    """``dicomhub reindex`` on the archive of ``settings`` (migrated first), and its close."""
    archive = open_archive(settings)
    return ReindexService(archive.ingest, archive.storage_check.records, archive.blobs), archive.close


@contextlib.contextmanager
def closed_after(opened: tuple[_T, Callable[[], None]]) -> Iterator[_T]:
    """``with closed_after(open_backup(settings)) as service:``: the service of a
    ``(service, close)`` pair from the ``open_*`` functions, closed however the block ends."""
    service, close = opened
    try:
        yield service
    finally:
        close()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to standard error at ``level`` in ``log_format`` (``text`` or ``json``)."""
    logs.configure_logging(level, log_format)


def run_dimse_worker(
    settings: Settings,
    listener: socket.socket,
    index: int,
    load: Any,
    parent: int,
    tls_listener: socket.socket | None = None,
) -> None:
    """Entry point of a DIMSE worker process (see :class:`dicomhub.dimse.server.DimseWorkers`)."""
    from dicomhub.dimse import server

    server.die_with_parent(parent)
    configure_logging(settings.log_level, settings.log_format)
    archive = open_archive(settings, upgrade=False)
    try:
        server.serve_worker(archive, settings, listener, index, load, tls_listener)
    finally:
        archive.close()


def run_background_worker(settings: Settings, parent: int) -> None:
    """Entry point of the background process: header metadata, data set digests, the
    decode check, IOD validation, the delivery of Storage Commitment reports and
    of MPPS status messages (HL7), and de-identification runs.

    A process of its own, because the work is pure Python: as a thread of the
    HTTP process it held the GIL for milliseconds at a time and QIDO-RS
    answers waited for it.
    """
    from dicomhub.dimse import server

    server.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    configure_logging(settings.log_level, settings.log_format)
    archive = open_archive(settings, upgrade=False)
    from dicomhub.migrate.outbound import sender_factory  # routing's senders: this process only

    archive.routing.use_senders(sender_factory(archive, settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(
            target=archive.decode_check.run_worker, args=(stop,), name="decode-check", daemon=True
        ),
        threading.Thread(
            target=archive.validation.run_worker, args=(stop,), name="validation", daemon=True
        ),
        threading.Thread(
            target=archive.commitment.run_delivery,
            args=(stop, commitment_deliverer(settings, archive.peers)),
            name="commitment-delivery",
            daemon=True,
        ),
        threading.Thread(target=archive.deid.run_worker, args=(stop,), name="deid-runs", daemon=True),
        threading.Thread(target=archive.stability.run_worker, args=(stop,), name="stability", daemon=True),
        threading.Thread(target=archive.trash.run_worker, args=(stop,), name="trash-purge", daemon=True),
        threading.Thread(target=archive.retention.run_worker, args=(stop,), name="retention", daemon=True),
        threading.Thread(target=archive.webhooks.run_worker, args=(stop,), name="webhooks", daemon=True),
        threading.Thread(
            target=archive.routing.run_enqueuer, args=(stop,), name="route-enqueue", daemon=True
        ),
        threading.Thread(
            target=archive.routing.run_forwarder, args=(stop,), name="route-forward", daemon=True
        ),
        threading.Thread(
            target=archive.mpps.run_delivery, args=(stop, mpps_sender(settings)), name="mpps-hl7", daemon=True
        ),
        threading.Thread(
            target=archive.content_digests.run_worker, args=(stop,), name="content-digests", daemon=True
        ),
        threading.Thread(
            target=run_migration_jobs, args=(archive, settings, stop), name="migration-jobs", daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        archive.headers.run_worker(stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        archive.close()


def run_migration_jobs(archive: Archive, settings: Settings, stop: threading.Event) -> None:
    """Run the migration jobs the HTTP API queues (and those a crashed server left), one at a time."""
    from dicomhub.migrate.runner import STALE, Migrator, owner_gone, owner_name
    from dicomhub.model.migration import JobState

    owner = owner_name("server")
    migrator = Migrator(archive, settings)
    while not stop.wait(1.0):
        try:
            job_id = archive.migration.claim_next_job(owner, dt.datetime.now(dt.UTC) - STALE, "server:%")
            if job_id is None:
                # A job whose server process on this host is gone (killed, crashed) is
                # taken over at once, not after its heartbeat has gone stale: a
                # restarted server resumes it seconds after it starts, not STALE later.
                orphaned = [
                    j["id"]
                    for j in archive.migration.jobs()
                    if j["state"] in (JobState.RUNNING.value, JobState.STOPPING.value)
                    and str(j["owner"] or "").startswith("server:")
                    and owner_gone(j["owner"])
                ]
                if orphaned:
                    job_id = archive.migration.claim_orphaned_job(min(orphaned), owner)
            if job_id is not None:
                migrator.run(job_id, owner, stop=stop)
        except DicomhubError as exc:
            logging.getLogger("dicomhub.migrate").warning("migration worker: %s", exc)


def start_hl7_listener(settings: Settings, archive: Archive) -> MllpListener | None:
    """The HL7 v2 (MLLP) listener of ``settings.hl7_port``, started; None when it is 0.

    Runs in the calling (HTTP) process, a thread per connection. MLLP carries no
    credentials: a message acts as an unrestricted caller named by its sending
    application (MSH-3), so the port is for the order system's network only
    (docs/orders.md). Raises OSError when the port cannot be bound.
    """
    if not settings.hl7_port:
        return None
    from dicomhub.hl7.messages import handle
    from dicomhub.hl7.mllp import MllpListener
    from dicomhub.model.caller import Caller, Channel

    def respond(frame: bytes, address: str) -> bytes:
        return handle(frame, archive.orders, lambda application: Caller(Channel.HL7, application, address))

    listener = MllpListener(
        settings.host,
        settings.hl7_port,
        respond,
        idle_timeout=settings.network_timeout,
        max_connections=settings.max_associations,
    )
    return listener.start()


def _print_archive(settings: Settings, ingest: IngestService) -> PrintArchive | None:
    """Where print jobs are archived as Encapsulated PDF, if ``print_archive`` is on."""
    study = settings.print_archive_study_uid.strip()
    if study and not is_valid_uid(study):
        raise ConfigurationError(f"print_archive_study_uid {study[:70]!r} is not a UID")
    return PrintArchive(ingest, study or None) if settings.print_archive else None


def commitment_deliverer(
    settings: Settings, peers: PeerService
) -> Callable[[str, CommitmentResult], None]:
    """Sends Storage Commitment reports on new associations to the requesting peers."""
    from dicomhub.dimse.commitment import send_report

    def deliver(ae_title: str, result: CommitmentResult) -> None:
        peer = peers.report_peer(ae_title)
        if peer is None:
            raise ConfigurationError(
                f"{ae_title} is not a peer with a host and a port (dicomhub peer add, [[peer]] or "
                "--remote-ae), so the report cannot be sent"
            )
        # A peer with tls gets its report over DICOM TLS only, never plain TCP.
        tls = tls_client_context(settings) if peer.tls else None
        send_report(
            peer.host,
            peer.port or 0,
            peer.ae_title,
            settings.aet,
            result,
            timeout=settings.acse_timeout,
            tls=tls,
        )

    return deliver


def webhook_poster() -> Poster:
    """Posts webhook deliveries with httpx (see :class:`dicomhub.services.webhooks.WebhookService`).

    httpx is imported and its client made on the first delivery: every process opens
    the archive, only the background process delivers, and only when webhooks exist.
    """
    clients: list[Any] = []

    def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        import httpx

        if not clients:
            clients.append(httpx.Client(follow_redirects=False))
        try:
            return int(clients[0].post(url, content=body, headers=dict(headers), timeout=timeout).status_code)
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc

    return post


def mpps_sender(settings: Settings) -> Callable[[str, str], None]:
    """Sends the MPPS status messages over MLLP (see :class:`dicomhub.services.mpps.MppsService`)."""
    from dicomhub.hl7.client import send_message

    def send(destination: str, message: str) -> None:
        send_message(destination, message, timeout=settings.network_timeout)

    return send


def serve(settings: Settings) -> None:
    """Run ``dicomhub serve``: DIMSE worker processes, the background process and
    the HTTP server in this process, until a signal stops them; then shut all down.

    The index is migrated before any worker starts. SIGINT and SIGTERM end the
    HTTP server, after which the workers, the background process, the listeners,
    the audit backlog and the archive are closed, in that order.

    Raises
    ------
    ConfigurationError
        For a TLS certificate or key that cannot be loaded.
    DicomhubError
        When the DIMSE or the HTTP port cannot be listened on.
    """
    from dicomhub.telemetry.metrics import prepare_directory, remove_directory

    if settings.dimse_tls_port or settings.https:
        tls_server_context(settings)  # a certificate that cannot be loaded stops serve here
    # Before any metric is counted and any worker spawned (they inherit the directory):
    # every process counts into it, /metrics adds them up; a fresh one per start.
    metrics_dir = prepare_directory(Path(tempfile.mkdtemp(prefix="dicomhub-metrics-")))
    try:
        _serve_with_metrics(settings)
    finally:
        remove_directory(metrics_dir)


def _serve_with_metrics(settings: Settings) -> None:
    import uvicorn

    from dicomhub import __version__
    from dicomhub.conformance import conformance_renderer, http_routes_of
    from dicomhub.dimse.server import DimseWorkers, bind_listener
    from dicomhub.web.app import create_app
    from dicomhub.web.protocol import http_protocol

    archive = open_archive(settings)  # migrates the index before any worker starts
    archive.webhooks.begin()  # before anything can be stored
    archive.routing.begin()  # an unknown peer stops serve here; the enqueuer starts at now
    # dimse_port 0 with a TLS port: DICOM TLS only (its listener serves as both).
    tls_only = settings.dimse_port == 0 and settings.dimse_tls_port > 0
    try:
        tls_listener = (
            bind_listener(settings.host, settings.dimse_tls_port) if settings.dimse_tls_port else None
        )
        listener = (
            tls_listener if tls_only and tls_listener else bind_listener(settings.host, settings.dimse_port)
        )
    except OSError as exc:
        archive.close()
        raise DicomhubError(f"cannot listen on {settings.host} for DIMSE: {exc.strerror}") from exc
    workers = DimseWorkers(settings, listener, run_dimse_worker, tls_listener)
    workers.start()
    background = multiprocessing.get_context("spawn").Process(
        target=run_background_worker,
        args=(settings, os.getpid()),
        name="dicomhub-background",
        daemon=True,
    )
    background.start()
    # The statement lists the app's own routes: built on the first request, when `app` exists.
    conformance = conformance_renderer(settings, lambda: http_routes_of(app.routes))

    def processes() -> dict[str, int]:
        found = {"http": os.getpid(), "background": background.pid or 0}
        found.update({f"dimse-{i}": p.pid for i, p in enumerate(workers.processes) if p is not None})
        return found

    app = create_app(
        archive, settings, dimse_alive=workers.alive, conformance=conformance, processes=processes
    )
    try:
        hl7 = start_hl7_listener(settings, archive)
    except OSError as exc:
        background.terminate()
        workers.stop()
        archive.close()
        where = f"{settings.host}:{settings.hl7_port}"
        raise DicomhubError(f"cannot listen on {where} for HL7: {exc.strerror}") from exc
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        # Our access log (dicomhub.web.observe) has the request id and the principal;
        # log_config None: uvicorn's loggers go through our handler and format.
        access_log=False,
        log_config=None,
        lifespan="off",
        # Deadlines for a slow request head or body (uvicorn has none of its own).
        http=http_protocol(
            settings.http_header_timeout, settings.http_body_timeout, settings.http_body_min_rate
        ),
        # HTTPS: the same context as DICOM TLS (TLS 1.2+, BCP 195 ciphers, client certificates).
        ssl_context_factory=(lambda _cfg, _default: tls_server_context(settings)) if settings.https else None,
    )

    class _Server(uvicorn.Server):
        # uvicorn stops quietly on a signal; an operator (and a benchmark that
        # sees the process gone) must be able to tell who ended it.
        def handle_exit(self, sig: int, frame: object) -> None:
            _LOGGER.warning("signal %s received: shutting down", signal.Signals(sig).name)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # uvicorn raises the signal again once it has stopped, which killed this
            # process before the clean-up below (audit backlog, workers, syslog feed,
            # metrics directory) could run: let run() return instead.
            self._captured_signals.clear()

    # A crash in native code (a codec, the SQLite driver) leaves Python stacks in the log.
    faulthandler.enable()
    server = _Server(config)
    dimse_port = "-" if tls_only else listener.getsockname()[1]
    tls_port = f", DICOM TLS on port {settings.dimse_tls_port}" if settings.dimse_tls_port else ""
    scheme = "https" if settings.https else "http"
    banner = (
        f"dicomhub {__version__}: AE title {settings.aet}, DIMSE on {settings.host}:{dimse_port}{tls_port}"
        f" ({settings.worker_count} workers), HTTP on {scheme}://{settings.host}:{settings.http_port}"
        f" (/healthz), data in {settings.data_dir.resolve()}"
    )
    if settings.log_format == "json":
        _LOGGER.info("%s", banner)  # a JSON log stays all JSON
    else:
        print(banner, flush=True)
    if hl7 is not None:
        print(f"dicomhub: HL7 v2 (MLLP) on {settings.host}:{hl7.port}", flush=True)
    try:
        server.run()
    finally:
        if hl7 is not None:
            hl7.close()
        app.state.audit_backlog.close()
        background.terminate()
        workers.stop()
        background.join(5)
        listener.close()
        if tls_listener is not None:
            tls_listener.close()
        archive.close()
    if not server.started:
        raise DicomhubError(f"cannot serve HTTP on port {settings.http_port}")

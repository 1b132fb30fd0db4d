"""Composition root: Settings -> engine, blob store, services.

No logic of its own: the CLI parses and calls in here (:func:`open_archive`
and the other ``open_*`` functions, each closed by the caller). The processes
of ``dicomhub serve`` that run the archive are in :mod:`dicomhub.bootstrap.processes`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.etree import ElementTree

from dicomhub.bootstrap.plugins import hook_ingest, ingest_class, plugin_events, plugin_host
from dicomhub.codec import transfer_syntax
from dicomhub.config import Settings
from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.index.analytics import MetadataRows
from dicomhub.index.associations import AssociationLogRepository
from dicomhub.index.backup import IndexBackup
from dicomhub.index.blobs import BlobRecords
from dicomhub.index.checks import DecodeCheckRepository
from dicomhub.index.coercion import PatientCoercionRepository
from dicomhub.index.commitment import CommitmentRepository
from dicomhub.index.corrections import CorrectionRepository
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
from dicomhub.migrate.probe import NetworkPeerProbe
from dicomhub.migrate.repairsource import PeerInstanceFetcher
from dicomhub.model.audit import AuditOutcome, AuditRecord
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
from dicomhub.services.corrections import CorrectionService
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
from dicomhub.services.routing_deid import check_project
from dicomhub.services.search import SearchService
from dicomhub.services.stability import StabilityService
from dicomhub.services.statistics import StatisticsService
from dicomhub.services.storagecheck import StorageCheckService
from dicomhub.services.storagemigration import StorageMigration
from dicomhub.services.transcode import TranscodeService
from dicomhub.services.trash import TrashService
from dicomhub.services.validation import ValidationService
from dicomhub.services.verification import PeerVerificationService
from dicomhub.services.wado import WadoService
from dicomhub.services.webhooks import Poster, WebhookService
from dicomhub.services.worklist import WorklistService
from dicomhub.storage.base import BlobStore
from dicomhub.storage.urls import open_blob_store as open_store_at
from dicomhub.storage.urls import open_blob_stores
from dicomhub.telemetry import logs

if TYPE_CHECKING:
    from sqlalchemy import Engine

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
    # Half the stable age: a store skips clearing stable_at it cleared that recently
    # (see IndexRepository), with room for clock skew between nodes.
    index = IndexRepository(engine, unstable_for=settings.stable_age / 2)
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
    host = plugin_host(settings)  # a broken plugin or plugin destination stops here
    ingest = ingest_class(host)(
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
    hook_ingest(ingest, host)
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
    rejection = RejectionService(ingest, wado, headers, access.study_facts)
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
            settings.routes,
            index,
            RouteRepository(engine),
            peers,
            claim=lambda name: lease(engine, name),
            lease=settings.route_lease,
            check_deidentify=functools.partial(check_project, deid),
        ),
        trash=TrashService(trash, index, blobs, settings.trash_keep, audit, lambda name: lease(engine, name)),
        retention=RetentionService(
            RetentionRepository(engine),
            delete,
            settings.retention,
            settings.retention_interval,
            audit,
            claim=lambda name: lease(engine, name),
            rejection=rejection,
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
        rejection=rejection,
        corrections=CorrectionService(
            CorrectionRepository(engine), wado, ingest, rejection, patients, orders, audit
        ),
        plugin_events=plugin_events(host, engine, index),
        verification=PeerVerificationService(peers, NetworkPeerProbe(settings)),
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
        if not folder.is_dir():
            # Opening a file store on it would create it inside the backup.
            raise DicomhubError(f"{src}: the backup's blob folder {folder} is missing")
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


def _print_archive(settings: Settings, ingest: IngestService) -> PrintArchive | None:
    """Where print jobs are archived as Encapsulated PDF, if ``print_archive`` is on."""
    study = settings.print_archive_study_uid.strip()
    if study and not is_valid_uid(study):
        raise ConfigurationError(f"print_archive_study_uid {study[:70]!r} is not a UID")
    return PrintArchive(ingest, study or None) if settings.print_archive else None


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

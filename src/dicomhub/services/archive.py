"""The services of one archive, as one value the adapters receive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from dicomhub.index.repository import IndexRepository
from dicomhub.services.access import AccessService
from dicomhub.services.aes import ApplicationEntityService
from dicomhub.services.analytics import MetadataExport
from dicomhub.services.audit import AuditService
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
from dicomhub.services.orders import OrderService
from dicomhub.services.peers import PeerService
from dicomhub.services.plugin_events import PluginEventService
from dicomhub.services.printclient import PrintClientService
from dicomhub.services.printing import PrintService
from dicomhub.services.rejection import RejectionService
from dicomhub.services.repair import RepairService
from dicomhub.services.retention import RetentionService
from dicomhub.services.retrieve import RetrieveService
from dicomhub.services.routing import RoutingService
from dicomhub.services.search import SearchService
from dicomhub.services.stability import StabilityService
from dicomhub.services.statistics import StatisticsService
from dicomhub.services.storagecheck import StorageCheckService
from dicomhub.services.transcode import TranscodeService
from dicomhub.services.trash import TrashService
from dicomhub.services.validation import ValidationService
from dicomhub.services.verification import PeerVerificationService
from dicomhub.services.wado import WadoService
from dicomhub.services.webhooks import WebhookService
from dicomhub.services.worklist import WorklistService
from dicomhub.storage.base import BlobStore

__all__ = ["Archive"]


@dataclass
class Archive:
    """The use cases of one archive, wired to one index and one blob store."""

    index: IndexRepository
    blobs: BlobStore
    headers: HeaderService
    content_digests: ContentDigestService
    ingest: IngestService
    search: SearchService
    retrieve: RetrieveService
    delete: DeleteService
    wado: WadoService
    transcode: TranscodeService
    decode_check: DecodeCheckService
    commitment: CommitmentService
    statistics: StatisticsService
    validation: ValidationService
    deid: DeidService
    governance: GovernanceService
    access: AccessService
    audit: AuditService
    migration: MigrationService
    storage_check: StorageCheckService
    peers: PeerService
    aes: ApplicationEntityService  # the ``dicomhub ae`` view of ``peers``, kept for its callers
    orders: OrderService
    mpps: MppsService
    printing: PrintService
    patients: ArchivePatients  # patient updates in the archive, coercion on the way out
    worklist: WorklistService
    links: StudyLinkService
    imaging_studies: ImagingStudyService
    changes: ChangeFeedService  # the change log as a feed (GET /changes)
    stability: StabilityService  # announces stable studies and series in the change log
    webhooks: WebhookService  # delivers the change log's events to the configured webhooks
    routing: RoutingService  # forwards what is stored by the [[route]] rules, through a durable queue
    analytics: MetadataExport  # the index and headers as Parquet (dicomhub export-metadata)
    trash: TrashService  # deleted objects kept for trash_keep: list, restore, purge
    retention: RetentionService  # the [[retention]] rules, by command and in the background
    close: Callable[[], None]
    # The Print SCU (printing to the configured DICOM printers); None where nothing wired it.
    print_client: PrintClientService | None = None
    # Repair from peers (dicomhub repair, POST /admin/repair); None where nothing wired it.
    repair: RepairService | None = None
    # Rejects instances on request with a rejection note (IHE IOCM); None where nothing wired it.
    rejection: RejectionService | None = None
    # Modify, split and merge stored studies, merge patients (recorded); None where nothing wired it.
    corrections: CorrectionService | None = None
    # Hands stored / stable-study events to the plugins' hooks; None where nothing wired it.
    plugin_events: PluginEventService | None = None
    # C-ECHO / QIDO-RS of a registered peer (POST /admin/peers/NAME/echo); None where nothing wired it.
    verification: PeerVerificationService | None = None

    def usable(self) -> bool:
        """True when the index and the blob store can be used now."""
        return self.index.usable() and self.blobs.usable()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # However the block ends, the engine's connections and the audit feed's thread go.
        self.close()

    def health(self) -> tuple[bool, bool]:
        """Whether the index and the blob store (in this order) can be used now.

        The adapters ask this rather than ``index`` and ``blobs``, which are here
        for the composition root and tests: an adapter calls services only.
        """
        return self.index.usable(), self.blobs.usable()

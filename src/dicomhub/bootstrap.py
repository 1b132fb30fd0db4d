"""Composition root: Settings -> engine, blob store, services. No logic of its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from dicomhub.config import Settings
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.services.headers import HeaderService
from dicomhub.services.ingest import IngestService
from dicomhub.services.retrieve import RetrieveService
from dicomhub.services.search import SearchService
from dicomhub.storage.base import BlobStore
from dicomhub.storage.filesystem import FileSystemBlobStore

__all__ = ["Archive", "configure_logging", "configure_pydicom", "open_archive"]


@dataclass
class Archive:
    """The services of one archive, wired to one index and one blob store."""

    settings: Settings
    engine: Engine
    index: IndexRepository
    blobs: BlobStore
    headers: HeaderService
    ingest: IngestService
    search: SearchService
    retrieve: RetrieveService

    def usable(self) -> bool:
        return self.index.usable() and self.blobs.usable()

    def close(self) -> None:
        self.engine.dispose()


def configure_pydicom() -> None:
    """Set pydicom's globals for an archive.

    Received values are kept as they are and validated by dicomhub where it
    matters (identifying UIDs); pydicom must not warn about every odd value of
    every received object, nor change them.
    """
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def open_archive(settings: Settings, *, upgrade: bool = True) -> Archive:
    """Open (and by default migrate) the archive described by ``settings``."""
    configure_pydicom()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = connect_engine(settings.index_url)
    if upgrade:
        migrate(engine, lock_dir=settings.data_dir)
    index = IndexRepository(engine)
    blobs = FileSystemBlobStore(settings.blob_dir)
    headers = HeaderService(index, blobs)
    search = SearchService(index, headers)
    return Archive(
        settings=settings,
        engine=engine,
        index=index,
        blobs=blobs,
        headers=headers,
        ingest=IngestService(index, blobs, settings.duplicate_policy),
        search=search,
        retrieve=RetrieveService(search, blobs),
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; keep it at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

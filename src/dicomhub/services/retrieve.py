"""Retrieve: from a retrieve identifier to the instances and their bytes."""

from __future__ import annotations

from dicomhub.model.caller import Caller
from dicomhub.model.query import Query
from dicomhub.model.records import InstanceRow
from dicomhub.services.search import SearchService
from dicomhub.storage.base import BlobStore

__all__ = ["RetrieveService"]


class RetrieveService:
    """Finds the instances a C-GET/C-MOVE (later WADO) asks for, and reads them."""

    def __init__(self, search: SearchService, blobs: BlobStore) -> None:
        self.search = search
        self.blobs = blobs

    def instances(self, query: Query, caller: Caller) -> list[InstanceRow]:
        """Instances matched by ``query`` for ``caller``, in index order."""
        return self.search.instances(query, caller)

    def local_path(self, row: InstanceRow) -> str | None:
        """A file path to send from without reading into memory, when there is one."""
        return self.blobs.local_path(row.blob_key)

    def read(self, row: InstanceRow) -> bytes:
        """The stored Part 10 bytes of ``row``."""
        return self.blobs.read(row.blob_key)

"""Retrieve: from a retrieve identifier to the instances and their bytes.

The bytes of a study with a patient coercion (:mod:`dicomhub.services.coercion`)
leave with the Patient module on record: the caller looks the coercions up once
per request (:meth:`RetrieveService.coercions`) and passes each row's along.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from dicomhub.errors import StorageError
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PatientCoercion
from dicomhub.model.query import Query
from dicomhub.model.records import InstanceRow
from dicomhub.services.coercion import ArchivePatients, coerce_part10
from dicomhub.services.search import SearchService
from dicomhub.storage.base import BlobStore

__all__ = ["RetrieveService"]


class RetrieveService:
    """Finds the instances a C-GET or C-MOVE asks for, and reads them."""

    def __init__(
        self,
        search: SearchService,
        blobs: BlobStore,
        spool_dir: str | os.PathLike[str] | None = None,
        patients: ArchivePatients | None = None,
    ) -> None:
        """``spool_dir``: where large objects of a store without files are copied to be sent."""
        self.search = search
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.patients = patients

    def coercions(self, rows: list[InstanceRow]) -> dict[str, PatientCoercion]:
        """The patient coercions of the studies of ``rows``, by Study Instance UID."""
        return {} if self.patients is None or not rows else self.patients.coercions(rows)

    def instances(self, query: Query, caller: Caller) -> list[InstanceRow]:
        """Instances matched by ``query`` for ``caller``, in index order."""
        return self.search.instances(query, caller)

    def local_path(self, row: InstanceRow, coercion: PatientCoercion | None = None) -> str | None:
        """A file path to send from without reading into memory, when there is one
        (never for a coerced object: the stored file is not what is sent)."""
        return None if coercion is not None else self.blobs.local_path(row.blob_key)

    def spooled_copy(self, row: InstanceRow, coercion: PatientCoercion | None = None) -> str:
        """A temporary file holding the blob of ``row``, for the caller to send and remove.

        For large objects of a store without files (S3): the copy streams
        through in blocks, so the object is never held in memory.
        """
        if self.spool_dir is not None:
            os.makedirs(self.spool_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="dicomhub-send-", dir=self.spool_dir)
        try:
            if coercion is not None:
                with os.fdopen(fd, "wb") as out:
                    out.write(self.read(row, coercion))
                return path
            with os.fdopen(fd, "wb") as out, self.blobs.open(row.blob_key) as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException as exc:
            os.unlink(path)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot copy blob {row.blob_key} to send it: {exc}") from exc
            raise
        return path

    def read(self, row: InstanceRow, coercion: PatientCoercion | None = None) -> bytes:
        """The stored Part 10 bytes of ``row`` (with ``coercion``: a corrected copy)."""
        data = self.blobs.read(row.blob_key)
        return data if coercion is None else coerce_part10(data, coercion)

    @staticmethod
    def coerce_file(path: str, coercion: PatientCoercion) -> bytes:
        """The Part 10 file at ``path`` (a transcoded copy) corrected, and the file removed."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        finally:
            os.unlink(path)
        return coerce_part10(data, coercion)

"""Transcoding on the way out: any stored object in a syntax the receiver accepts.

The codec layer (:mod:`dicomhub.codec`) does the pixel work, frame by frame
from a file; this service decides what can be produced from a stored
instance and hands out the result as a temporary file, so that a
several-hundred-MB object is never held in memory whole.

Lossless targets are offered freely. A lossy target is produced only when a
caller asks for it explicitly (a WADO-RS ``transfer-syntax`` naming it);
DIMSE retrieval never degrades an image on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dicomhub import codec
from dicomhub.errors import DicomhubError, TranscodeError
from dicomhub.model.encoding import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from dicomhub.model.records import InstanceRow
from dicomhub.model.structure import dataset_offset
from dicomhub.services.blobfiles import blob_as_file
from dicomhub.storage.base import BlobStore

__all__ = ["TranscodeService", "Transcoded"]

LOGGER = logging.getLogger("dicomhub.transcode")

#: What a C-MOVE proposes besides the stored syntax: every SCP takes these.
UNCOMPRESSED_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
_CHUNK = 1 << 20


class Transcoded:
    """A transcoded Part 10 object in a temporary file; :meth:`close` removes it."""

    def __init__(self, path: str, transfer_syntax_uid: str) -> None:
        self.path = path
        self.transfer_syntax_uid = transfer_syntax_uid
        self.size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
        self.dataset_offset = dataset_offset(head)

    def chunks(self) -> Iterator[bytes]:
        """The whole Part 10 object in 1 MiB chunks, then the file is removed."""
        try:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class TranscodeService:
    """Produces stored instances in other transfer syntaxes."""

    def __init__(self, blobs: BlobStore, spool_dir: Path | None = None) -> None:
        self.blobs = blobs
        self.spool_dir = spool_dir
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def alternatives(stored_transfer_syntax_uid: str) -> tuple[str, ...]:
        """Syntaxes an instance stored in ``stored_transfer_syntax_uid`` can be sent in
        without loss, best first (uncompressed first: every peer reads them)."""
        return tuple(
            ts
            for ts in codec.lossless_targets(stored_transfer_syntax_uid)
            if ts != stored_transfer_syntax_uid
        )

    @staticmethod
    def can_produce(row: InstanceRow, target: str, *, allow_lossy: bool = False) -> bool:
        """True when ``row`` can be given in ``target`` in this install."""
        if target == row.transfer_syntax_uid:
            return True
        if target in TranscodeService.alternatives(row.transfer_syntax_uid):
            return True
        try:
            syntax = codec.transfer_syntax(target)
        except DicomhubError:  # an unknown UID simply cannot be produced
            return False
        return (
            allow_lossy and syntax.lossy and syntax.can_encode and codec.can_decode(row.transfer_syntax_uid)
        )

    def transcode(self, row: InstanceRow, target: str, *, allow_lossy: bool = False) -> Transcoded:
        """``row`` as a Part 10 file in ``target``.

        Raises
        ------
        TranscodeError
            When the stored pixel data cannot be decoded or the target encoded.
        """
        fd, tmp = tempfile.mkstemp(
            prefix="dicomhub-tx-", suffix=".dcm", dir=str(self.spool_dir) if self.spool_dir else None
        )
        try:
            with os.fdopen(fd, "wb") as out, blob_as_file(self.blobs, row.blob_key) as src:
                codec.transcode_file(src, target, out, allow_lossy=allow_lossy)
            return Transcoded(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, TranscodeError):
                LOGGER.warning(
                    "cannot transcode %s from %s to %s: %s",
                    row.sop_instance_uid,
                    row.transfer_syntax_uid,
                    target,
                    exc,
                )
            raise

    def frames(self, row: InstanceRow, numbers: list[int], target: str | None) -> list[bytes]:
        """Frames ``numbers`` (1-based) of ``row`` in ``target`` (None: as stored)."""
        with blob_as_file(self.blobs, row.blob_key) as src:
            return codec.read_frames(src, numbers, target)

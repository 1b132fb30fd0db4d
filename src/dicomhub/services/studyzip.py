"""A study as a ZIP of its Part 10 files, streamed, optionally as a PS3.10 file-set.

The ZIP is written by the stdlib :mod:`zipfile` into a sink that hands every
written block on to the response at once: ``zipfile`` writes to a non-seekable
stream (each entry then carries a data descriptor), so neither the study nor its
ZIP is ever held in memory or spooled to a temporary file, and no third-party
ZIP library is needed. Entries are stored (``ZIP_STORED``), byte for byte the
objects as kept: most pixel data is compressed already, deflating would cost
the server's CPU for little, and the files are the archive's own bytes (a study
filed under corrected patient demographics leaves with them, as over WADO-RS).

With ``dicomdir``, the files are named as PS3.10 8.2 wants (``PT000000/ST000000/
SE000000/IM000000``: at most eight upper-case letters, digits or ``_`` per
component) and a ``DICOMDIR`` is added, built by pydicom's
:class:`~pydicom.fileset.FileSet` from the headers only (read without their
pixel data, one object at a time): the file-set is written to a temporary
folder holding nothing but these headers and the DICOMDIR, which is small, and
the real files are streamed under the File IDs it chose. The DICOMDIR is made
before the response starts, so a study that cannot be a file-set (a SOP class
pydicom has no directory record for) is a 409 with the reason.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from dicomhub.errors import Conflict
from dicomhub.model.records import InstanceRow
from dicomhub.services.wado import WadoService

__all__ = ["StudyZip", "study_zip", "zip_name"]

_BLOCK = 1 << 20


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream whose written bytes are taken out as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def size(self) -> int:
        return sum(len(p) for p in self._parts)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def zip_name(row: InstanceRow) -> str:
    """The entry name of an instance without a file-set: series folder, SOP Instance UID."""
    return f"{row.series_instance_uid}/{row.sop_instance_uid}.dcm"


class StudyZip:
    """The ZIP of some instances, given how to read each one's bytes.

    ``chunks(row)`` yields the Part 10 bytes of ``row`` in blocks; ``header(row)``
    gives its data set without pixel data (only asked for with ``dicomdir``).
    """

    def __init__(
        self,
        rows: Iterable[InstanceRow],
        chunks: Callable[[InstanceRow], Iterator[bytes]],
        header: Callable[[InstanceRow], Dataset],
    ) -> None:
        self.rows = list(rows)
        self.chunks = chunks
        self.header = header

    def file_ids(self) -> tuple[dict[str, str], bytes]:
        """The PS3.10 File ID (``/``-separated) per SOP Instance UID, and the DICOMDIR bytes."""
        fs = FileSet()
        try:
            with tempfile.TemporaryDirectory(prefix="dicomhub-dicomdir-") as folder:
                for number, row in enumerate(self.rows, 1):
                    fs.add(_recordable(self.header(row), number))
                root = Path(folder) / "fileset"
                fs.write(root)
                ids = {str(i.SOPInstanceUID): str(i.FileID).replace(os.sep, "/") for i in fs}
                dicomdir = (root / "DICOMDIR").read_bytes()
        except (KeyError, ValueError, NotImplementedError) as exc:
            # A SOP class without a directory record, or a header pydicom cannot file.
            raise Conflict(f"the study cannot be written as a PS3.10 file-set: {exc}") from exc
        return ids, dicomdir

    def prepare(self, dicomdir: bool) -> Iterator[bytes]:
        """:meth:`stream`, with the DICOMDIR made now: its failure is an error answer,
        not a ZIP broken off after its first bytes went out."""
        names, index = self.file_ids() if dicomdir else (None, b"")
        return (block for block in self._stream(names, index) if block)

    def stream(self, dicomdir: bool = False) -> Iterator[bytes]:
        """The ZIP, block by block (with ``dicomdir``: a file-set with its DICOMDIR)."""
        return self.prepare(dicomdir)

    def _stream(self, file_ids: dict[str, str] | None, index: bytes) -> Iterator[bytes]:
        dicomdir = file_ids is not None
        names = file_ids if file_ids is not None else {r.sop_instance_uid: zip_name(r) for r in self.rows}
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            if dicomdir:
                archive.writestr(_entry("DICOMDIR"), index)
                yield sink.take()
            for row in self.rows:
                # force_zip64: the size is not known to zipfile before the entry ends.
                with archive.open(_entry(names[row.sop_instance_uid]), "w", force_zip64=True) as entry:
                    for chunk in self.chunks(row):
                        entry.write(chunk)
                        if sink.size() >= _BLOCK:
                            yield sink.take()
                yield sink.take()
        yield sink.take()


# Type 1 in the directory records (PS3.3 F.5) but only Type 2 in most objects: what a
# header leaves empty is filled in the record (never in the file), as dcmmkdir's
# --invent does.
_INVENTED = {"PatientID": "UNKNOWN", "StudyDate": "19000101", "StudyTime": "000000", "StudyID": "1",
             "Modality": "OT", "SeriesNumber": "0"}  # fmt: skip


def _recordable(header: Dataset, number: int) -> Dataset:
    for keyword, value in (*_INVENTED.items(), ("InstanceNumber", str(number))):
        if keyword not in header or header[keyword].VM == 0:
            setattr(header, keyword, value)
    return header


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def study_zip(wado: WadoService, rows: Iterable[InstanceRow]) -> StudyZip:
    """The ZIP of ``rows`` as WADO-RS gives them: as stored, or with their patient coercion."""
    rows = list(rows)
    coerced = wado.coercions(rows)

    def chunks(row: InstanceRow) -> Iterator[bytes]:
        return wado.encoded(row, row.transfer_syntax_uid, coerced.get(row.study_instance_uid))

    def header(row: InstanceRow) -> Dataset:
        coercion = coerced.get(row.study_instance_uid)
        if coercion is not None:
            # Corrected in memory, one object at a time, as WADO-RS sends it.
            return dcmread(io.BytesIO(b"".join(chunks(row))), stop_before_pixels=True)
        with wado.blobs.open(row.blob_key) as fp:
            return dcmread(fp, stop_before_pixels=True)

    return StudyZip(rows, chunks, header)

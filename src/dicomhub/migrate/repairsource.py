"""One instance from a peer, for ``dicomhub repair``: C-GET or WADO-RS of a SOP Instance UID,
or the file of a folder (a backup, an export) whose header carries it.

The copy is handed back as received, for :mod:`dicomhub.services.repair` to
verify before anything is replaced: WADO-RS asks for the peer's stored
syntax (``transfer-syntax=*``) and C-GET proposes every syntax this install
knows, so that a peer that keeps objects as received sends them unchanged.
A C-GET sub-operation's data set gets a File Meta group around it (the data
set digest the copy is verified by leaves the File Meta out).

A folder is looked at by content only: every file under it (recursively, links to
folders not followed) is read up to its pixel data, and a file counts for the SOP
Instance UID its header names, whatever the file is called. The map is kept for the
next instance and read again when an instance is not in it or its file changed.

Every process that opens an archive makes a fetcher, and few ever repair:
the network modules are imported on the first fetch.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dicomhub.config import Settings
from dicomhub.model.migration import RemoteArchive, RemoteKind
from dicomhub.model.part10 import file_meta_header
from dicomhub.model.repair import RepairTarget

if TYPE_CHECKING:
    from dicomhub.dimse.requestor import IncomingStore

__all__ = ["PeerInstanceFetcher"]

_GET = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
_QUERY_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700


class PeerInstanceFetcher:
    """:class:`dicomhub.services.repair.PeerCopies` over DIMSE (C-GET) and DICOMweb (WADO-RS)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._folders: dict[str, dict[str, list[Path]]] = {}  # folder -> SOP Instance UID -> files
        self._lock = threading.Lock()

    def fetch(self, remote: RemoteArchive, target: RepairTarget) -> bytes:
        """The peer's copy of ``target`` as a Part 10 object; RemoteError when it has none."""
        if remote.kind is RemoteKind.FOLDER:
            return self._from_folder(remote.path, target.sop_instance_uid)
        if remote.kind is RemoteKind.DICOMWEB:
            return self._wado(remote, target)
        return self._c_get(remote, target)

    def _from_folder(self, folder: str, sop_instance_uid: str) -> bytes:
        from dicomhub.migrate.sources import RemoteError

        with self._lock:
            for fresh in (False, True):
                if fresh or folder not in self._folders:
                    self._folders[folder] = _scan(folder)
                for path in self._folders[folder].get(sop_instance_uid, []):
                    try:
                        data = path.read_bytes()
                    except OSError:
                        continue
                    if _sop_instance_uid(path) == sop_instance_uid:  # not changed since the scan
                        return data
        raise RemoteError(f"no file under {folder} holds the SOP Instance UID")

    def _wado(self, remote: RemoteArchive, target: RepairTarget) -> bytes:
        from dicomhub.migrate.sources import DicomwebSource, RemoteError, _multipart_parts

        source = DicomwebSource(remote, max(self.settings.dimse_timeout, 120.0))
        # UIDs come from the index, where ingest checked them: safe in a URL path.
        path = (
            f"/studies/{target.study_instance_uid}/series/{target.series_instance_uid}"
            f"/instances/{target.sop_instance_uid}"
        )
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            r = source.client.get(path, headers={"Accept": accept})
        except Exception as exc:  # noqa: BLE001 - httpx's errors: the peer is not reachable
            raise RemoteError(f"WADO-RS {remote.url}{path}: {exc}") from exc
        finally:
            source.close()
        if r.status_code == 404:
            raise RemoteError("the peer does not hold it (WADO-RS: HTTP 404)")
        if r.status_code != 200:
            raise RemoteError(f"WADO-RS: HTTP {r.status_code} {r.text[:200]}")
        parts = list(_multipart_parts(r.content, r.headers.get("content-type", "")))
        if len(parts) != 1:
            raise RemoteError(f"WADO-RS answered {len(parts)} objects for one instance")
        return parts[0]

    def _c_get(self, remote: RemoteArchive, target: RepairTarget) -> bytes:
        from pydicom.dataset import Dataset
        from pynetdicom.status import code_to_category

        from dicomhub.codec import transfer_syntaxes
        from dicomhub.dimse.requestor import Association, AssociationError
        from dicomhub.migrate.push import tls_context
        from dicomhub.migrate.sources import RemoteError

        received: list[IncomingStore] = []

        def on_store(request: IncomingStore) -> int:
            if request.sop_instance_uid != target.sop_instance_uid or received:
                return _OUT_OF_RESOURCES  # not what was asked for: taken as nothing
            received.append(request)
            return _SUCCESS

        syntaxes = [ts.uid for ts in transfer_syntaxes()]
        try:
            assoc = Association.open(
                remote.host,
                remote.port,
                remote.ae_title,
                self.settings.aet,
                [(_GET, _QUERY_SYNTAXES), (target.sop_class_uid, syntaxes)],
                roles={target.sop_class_uid: (False, True)},
                connect_timeout=min(self.settings.dimse_timeout, 10.0),
                acse_timeout=self.settings.dimse_timeout,
                dimse_timeout=self.settings.dimse_timeout,
                tls=tls_context(self.settings, remote),
                on_c_store=on_store,
            )
        except AssociationError as exc:
            raise RemoteError(f"{remote.ae_title}@{remote.host}:{remote.port}: {exc}") from exc
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = target.study_instance_uid
        identifier.SeriesInstanceUID = target.series_instance_uid
        identifier.SOPInstanceUID = target.sop_instance_uid
        try:
            responses = assoc.send_c_get(_GET, identifier)
            for _response in responses:
                pass
        except AssociationError as exc:
            raise RemoteError(f"C-GET: {exc}") from exc
        finally:
            assoc.release()
        final = responses.final
        code = -1 if final is None else final.status
        if not received:
            if final is not None and code_to_category(code) in ("Success", "Warning"):
                raise RemoteError("the peer does not hold it (C-GET: no sub-operation)")
            raise RemoteError(f"C-GET failed with status 0x{code & 0xFFFF:04X}")
        got = received[0]
        return (
            file_meta_header(got.sop_class_uid, got.sop_instance_uid, got.transfer_syntax_uid, None)
            + got.data
        )


def _sop_instance_uid(path: Path) -> str | None:
    """The SOP Instance UID in the header of the Part 10 file ``path``; None when it is none."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None
    except Exception:  # noqa: BLE001 - a file pydicom cannot read is no DICOM file: passed over
        return None


def _scan(folder: str) -> dict[str, list[Path]]:
    """SOP Instance UID -> the files under ``folder`` whose header carries it, in path order.

    Raises RemoteError when ``folder`` is not a folder."""
    from dicomhub.migrate.sources import RemoteError

    if not os.path.isdir(folder):
        raise RemoteError(f"{folder} is not a folder")
    found: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            uid = _sop_instance_uid(path)
            if uid:
                found.setdefault(uid, []).append(path)
    return found

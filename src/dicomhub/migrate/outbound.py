"""The senders of routing (:class:`dicomhub.services.routing.Sender`): C-STORE to a
DIMSE peer and STOW-RS to a DICOMweb peer through the push targets of
:mod:`dicomhub.migrate.targets` (one association or HTTP client per batch), or a
Part 10 file per instance in a folder.

A rule's ``transfer_syntax`` is applied here: each instance is transcoded before it
is sent, unless it is stored in that syntax already.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from dicomhub import codec
from dicomhub.config import Settings
from dicomhub.errors import DicomhubError
from dicomhub.migrate.push import tls_context
from dicomhub.migrate.targets import DicomwebTarget, DimseTarget, Outgoing, open_target
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.migration import RemoteKind
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import FOLDER_PREFIX, PLUGIN_PREFIX, Route
from dicomhub.plugins.host import PluginHost
from dicomhub.services.archive import Archive
from dicomhub.services.routing import Sender, SenderFactory

__all__ = ["FolderSender", "sender_factory"]


class _TargetSender:
    """A push target as a routing sender."""

    def __init__(
        self, target: DimseTarget | DicomwebTarget, outgoing: Callable[[InstanceRow], Outgoing]
    ) -> None:
        self._target = target
        self._outgoing = outgoing
        # C-STORE: one instance a call (each confirmed on its own, and marked sent before
        # the next; the association stays open between calls). STOW-RS: one request.
        self.batch = 1 if isinstance(target, DimseTarget) else 16

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        sent = self._target.send([self._outgoing(r) for r in rows])
        errors: dict[str, str] = {}
        for failure in sent.failures:  # "SOP Instance UID: what went wrong"
            sop, _sep, message = failure.partition(": ")
            errors[sop] = message or failure
        return errors

    def close(self) -> None:
        self._target.close()


class FolderSender:
    """Each instance as ``FOLDER/SOP_INSTANCE_UID.dcm``, written whole or not at all."""

    batch = 1

    def __init__(self, folder: str, part10: Callable[[InstanceRow], bytes]) -> None:
        self._folder = Path(folder)
        self._part10 = part10

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DicomhubError(f"cannot create {self._folder}: {exc}") from exc
        errors: dict[str, str] = {}
        for row in rows:
            # The UID names the file: only a valid UID (digits and dots) may.
            if not is_valid_uid(row.sop_instance_uid):
                errors[row.sop_instance_uid] = "not a valid UID, cannot name a file"
                continue
            try:
                data = self._part10(row)
                fd, tmp = tempfile.mkstemp(prefix=".routing-", suffix=".tmp", dir=self._folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self._folder / f"{row.sop_instance_uid}.dcm")
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except (OSError, DicomhubError) as exc:
                errors[row.sop_instance_uid] = f"{type(exc).__name__}: {exc}"
        return errors

    def close(self) -> None:
        pass


def sender_factory(archive: Archive, settings: Settings, plugins: PluginHost | None = None) -> SenderFactory:
    """The ``open_sender`` of :class:`~dicomhub.services.routing.RoutingService`
    (``plugins``: the enabled plugins, for ``plugin:NAME:ARGUMENT`` destinations)."""

    def stored(row: InstanceRow) -> bytes:
        return archive.retrieve.read(row)

    def in_syntax(row: InstanceRow, syntax: str) -> bytes:
        if syntax == row.transfer_syntax_uid:
            return stored(row)
        transcoded = archive.transcode.transcode(row, syntax, allow_lossy=codec.transfer_syntax(syntax).lossy)
        try:
            return Path(transcoded.path).read_bytes()
        finally:
            transcoded.close()

    def open_sender(destination: str, route: Route) -> Sender:
        syntax = codec.transfer_syntax(route.transfer_syntax).uid if route.transfer_syntax else ""

        def part10(row: InstanceRow) -> bytes:
            return in_syntax(row, syntax) if syntax else stored(row)

        def outgoing(row: InstanceRow) -> Outgoing:
            return Outgoing(
                row.sop_class_uid,
                row.sop_instance_uid,
                syntax or row.transfer_syntax_uid,
                lambda: part10(row),
                lambda other: in_syntax(row, other),
            )

        if destination.startswith(FOLDER_PREFIX):
            return FolderSender(destination.removeprefix(FOLDER_PREFIX), part10)
        if destination.startswith(PLUGIN_PREFIX):
            if plugins is None:
                raise DicomhubError(f"{destination}: no plugins are loaded in this process")
            return plugins.sender(destination, part10)
        peer = archive.peers.require(destination)
        remote = peer.remote(archive.peers.credentials(peer))
        if remote.kind is RemoteKind.FOLDER:
            return FolderSender(remote.path, part10)
        target = open_target(remote, settings.aet, settings.dimse_timeout, tls_context(settings, remote))
        return _TargetSender(target, outgoing)

    return open_sender

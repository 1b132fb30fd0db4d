"""The senders of routing (:class:`dicomhub.services.routing.Sender`): C-STORE to a
DIMSE peer and STOW-RS to a DICOMweb peer through the push targets of
:mod:`dicomhub.migrate.targets` (one association or HTTP client per batch), or a
Part 10 file per instance in a folder.

A rule's ``transfer_syntax`` is applied here: each instance is transcoded before it
is sent, unless it is stored in that syntax already. So is its ``deidentify``: each
send's instances become the objects of an ``export`` run of the project
(:meth:`~dicomhub.services.deidentify.DeidService.export_items`, as a de-identifying
C-MOVE destination), de-identified as they are sent and recorded in the project's
mapping; they go under their replacement UIDs, up to 16 a send. A ``project:NAME``
destination is a server-side de-identification run of the project over each send's
instances of a study (:meth:`~dicomhub.services.deidentify.DeidService.start_run`),
which the background process then stores here as a new study.
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
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.migration import RemoteKind
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import FOLDER_PREFIX, PLUGIN_PREFIX, PROJECT_PREFIX, Route
from dicomhub.plugins.host import PluginHost
from dicomhub.services.archive import Archive
from dicomhub.services.deidentify import DeidService, ExportItem
from dicomhub.services.routing import Sender, SenderFactory

__all__ = ["FolderSender", "ProjectSender", "sender_factory"]

ROUTING_CALLER = Caller(Channel.INTERNAL, "routing")
_DEID_BATCH = 16  # instances of one export run (one send)


class _TargetSender:
    """A push target as a routing sender."""

    def __init__(
        self,
        target: DimseTarget | DicomwebTarget,
        outgoing: Callable[[InstanceRow], Outgoing],
        original: Callable[[str], str] = str,
    ) -> None:
        self._target = target
        self._outgoing = outgoing
        self._original = original  # the stored SOP Instance UID of one sent under another
        # C-STORE: one instance a call (each confirmed on its own, and marked sent before
        # the next; the association stays open between calls). STOW-RS: one request.
        self.batch = 1 if isinstance(target, DimseTarget) else 16

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        sent = self._target.send([self._outgoing(r) for r in rows])
        errors: dict[str, str] = {}
        for failure in sent.failures:  # "SOP Instance UID: what went wrong"
            sop, _sep, message = failure.partition(": ")
            errors[self._original(sop)] = message or failure
        return errors

    def close(self) -> None:
        self._target.close()


class FolderSender:
    """Each instance as ``FOLDER/SOP_INSTANCE_UID.dcm``, written whole or not at all."""

    batch = 1

    def __init__(
        self,
        folder: str,
        part10: Callable[[InstanceRow], bytes],
        name: Callable[[InstanceRow], str] = lambda row: row.sop_instance_uid,
    ) -> None:
        self._folder = Path(folder)
        self._part10 = part10
        self._name = name  # the SOP Instance UID it is sent under

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
                name = self._name(row)
                data = self._part10(row)
                fd, tmp = tempfile.mkstemp(prefix=".routing-", suffix=".tmp", dir=self._folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self._folder / f"{name}.dcm")
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except (OSError, DicomhubError) as exc:
                errors[row.sop_instance_uid] = f"{type(exc).__name__}: {exc}"
        return errors

    def close(self) -> None:
        pass


class _Deidentifying:
    """A sender whose instances are de-identified first: each send's rows become the
    objects of one export run (``prepare``) before the inner sender sends them."""

    batch = _DEID_BATCH

    def __init__(self, inner: Sender, prepare: Callable[[Sequence[InstanceRow]], None]) -> None:
        self._inner = inner
        self._prepare = prepare

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        self._prepare(rows)
        return self._inner.send(rows)

    def close(self) -> None:
        self._inner.close()


class ProjectSender:
    """De-identification into this archive: a pending run of the project per study of a
    send. Its items are sent once the run is recorded (durable); the background
    process de-identifies and stores them, with its own recovery and outcomes (see
    ``dicomhub deid-job show``)."""

    batch = 50

    def __init__(self, deid: DeidService, project: str, route: Route) -> None:
        self._deid = deid
        self._project = project
        self._route = route

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        by_study: dict[str, list[str]] = {}
        for row in rows:
            by_study.setdefault(row.study_instance_uid, []).append(row.sop_instance_uid)
        errors: dict[str, str] = {}
        for study, uids in by_study.items():
            try:
                self._deid.start_run(
                    self._project, f"route {self._route.name}", ROUTING_CALLER,
                    study_uid=study, options=self._route.deidentify_options, only=set(uids),
                )  # fmt: skip
            except DicomhubError as exc:
                errors.update(dict.fromkeys(uids, str(exc)))
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
        # De-identified objects of the current send by stored SOP Instance UID, and back.
        exported: dict[str, ExportItem] = {}
        originals: dict[str, str] = {}

        def prepare(rows: Sequence[InstanceRow]) -> None:
            exported.clear()
            originals.clear()
            # The run's destination column holds an AE title (16 characters): the reason names it whole.
            items = archive.deid.export_items(
                route.deidentify, route.deidentify_options, destination[:16], rows, ROUTING_CALLER,
                reason=f"route {route.name} to {destination}",
            )  # fmt: skip
            for row, item in zip(rows, items, strict=True):
                exported[row.sop_instance_uid] = item
                originals[item.sop_instance_uid] = row.sop_instance_uid

        def deidentified(row: InstanceRow, other: str) -> bytes:
            data = exported[row.sop_instance_uid].part10()  # in the stored syntax
            if not other or other == row.transfer_syntax_uid:
                return data
            return codec.transcode_bytes(data, other, allow_lossy=codec.transfer_syntax(other).lossy)

        def part10(row: InstanceRow) -> bytes:
            if route.deidentify:
                return deidentified(row, syntax)
            return in_syntax(row, syntax) if syntax else stored(row)

        def outgoing(row: InstanceRow) -> Outgoing:
            if route.deidentify:
                return Outgoing(
                    row.sop_class_uid,
                    exported[row.sop_instance_uid].sop_instance_uid,
                    syntax or row.transfer_syntax_uid,
                    lambda: part10(row),
                    lambda other: deidentified(row, other),
                )
            return Outgoing(
                row.sop_class_uid,
                row.sop_instance_uid,
                syntax or row.transfer_syntax_uid,
                lambda: part10(row),
                lambda other: in_syntax(row, other),
            )

        def name(row: InstanceRow) -> str:
            return (
                exported[row.sop_instance_uid].sop_instance_uid if route.deidentify else row.sop_instance_uid
            )

        sender: Sender
        if destination.startswith(PROJECT_PREFIX):
            return ProjectSender(archive.deid, destination.removeprefix(PROJECT_PREFIX), route)
        if destination.startswith(PLUGIN_PREFIX):
            if plugins is None:
                raise DicomhubError(f"{destination}: no plugins are loaded in this process")
            sender = plugins.sender(destination, part10)
        elif destination.startswith(FOLDER_PREFIX):
            sender = FolderSender(destination.removeprefix(FOLDER_PREFIX), part10, name)
        else:
            peer = archive.peers.require(destination)
            remote = peer.remote(archive.peers.credentials(peer))
            if remote.kind is RemoteKind.FOLDER:
                sender = FolderSender(remote.path, part10, name)
            else:
                tls = tls_context(settings, remote)
                target = open_target(remote, settings.aet, settings.dimse_timeout, tls)
                sender = _TargetSender(target, outgoing, lambda uid: originals.get(uid, uid))
        return _Deidentifying(sender, prepare) if route.deidentify else sender

    return open_sender

"""Repair from a peer: damaged or missing blobs mended with a verified copy of the same object.

The storage check finds blobs that are missing, whose size or SHA-256 no
longer match the index, or (when STOW-RS left the digest for later) that no
longer parse. Only a copy from elsewhere can mend them; this service asks
the peers for the same SOP Instance (C-GET or WADO-RS, through the
:class:`PeerCopies` the composition root wires), and replaces the blob only
with a copy it has proven to be the same object:

* the copy's SOP Instance UID and SOP Class UID are the indexed ones;
* its bytes are the stored blob's (the blob digest), or the object as it was
  received (the original SHA-256 kept by compression at rest), or its data
  set is the received data set (the content digest: SHA-256 of the bytes
  after the File Meta group, which differ between senders for one object).

What the index does not allow to prove is refused, never guessed: a copy
whose data set is a re-encoding of the object (another transfer syntax, or
explicit instead of implicit VR) has another content digest, and the
encoding-blind comparison (:mod:`dicomhub.codec.equivalence`) needs the
original object, which is the damaged one. A row whose digests STOW-RS left
for later has no digest to prove anything with. The peer is then asked for
nothing more, the damaged blob stays as it is, and the reason is reported.

Compression at rest keeps the received object's transfer syntax and SHA-256,
not its bytes, so there is no local original to restore from: a compressed
object is restored from a peer's copy of what was received (verified by the
received data set's digest) and compressed again, as ingest did.

A verified copy is written under a new key (durable before the index sees
it), the instance row is switched to it in one transaction that checks the
row still refers to the damaged blob, and only then the damaged blob goes.
The row keeps its pk and UIDs: nothing is indexed twice. Each run is
audited (a STORE event with the repaired and refused instances).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from dicomhub import codec
from dicomhub.errors import (
    BlobMissing,
    Conflict,
    DicomhubError,
    InvalidIdentifier,
    InvalidRequest,
    TranscodeError,
)
from dicomhub.index.repair import RepairRepository
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.migration import RemoteArchive, RemoteKind
from dicomhub.model.part10 import file_meta_header
from dicomhub.model.peer import Peer, Role
from dicomhub.model.repair import RepairTarget
from dicomhub.model.structure import dataset_offset
from dicomhub.services.contentdigest import PENDING, UNREADABLE, content_digest
from dicomhub.services.peers import PeerService
from dicomhub.services.storagecheck import blob_digest
from dicomhub.storage.base import BlobStore

__all__ = ["PeerCopies", "RepairItem", "RepairReport", "RepairService"]

LOGGER = logging.getLogger("dicomhub.repair")

REPAIRED, PLANNED, FAILED = "repaired", "planned", "failed"
_AUDITED_UIDS = 100  # instances named in one audit event (the counts are always whole)


class PeerCopies(Protocol):
    """Fetches one instance from a peer (implemented by :mod:`dicomhub.migrate.repairsource`)."""

    def fetch(self, remote: RemoteArchive, target: RepairTarget) -> bytes:
        """The peer's copy of ``target`` as a Part 10 object.

        Raises
        ------
        DicomhubError
            When the peer cannot be reached, refuses, or does not hold it.
        """
        ...


@dataclass
class RepairItem:
    """One damaged instance and what became of it."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    blob_key: str
    problem: str  # missing | size-mismatch | digest-mismatch | unreadable
    detail: str
    outcome: str = FAILED  # repaired | planned (dry run) | failed
    source: str = ""  # the peer the copy came (or would be asked) from
    reason: str = ""  # why it was not repaired (each peer's answer)
    new_blob_key: str = ""


@dataclass
class RepairReport:
    """What ``dicomhub repair`` found and did."""

    checked: int = 0  # instances whose blobs were checked
    dry_run: bool = False
    peers: list[str] = field(default_factory=list)  # asked, in this order
    items: list[RepairItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is left damaged (or, for a dry run, every damaged instance has a peer to ask)."""
        return all(i.outcome != FAILED for i in self.items)


class _Refused(Exception):
    """A peer's copy that is not proven to be the damaged object."""


class RepairService:
    """Finds damaged instances and restores them from peers."""

    def __init__(
        self,
        repo: RepairRepository,
        blobs: BlobStore,
        peers: PeerService,
        copies: PeerCopies | None,
        audit: AuditRecorder | None = None,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
    ) -> None:
        self.repo = repo
        self.blobs = blobs
        self.peers = peers
        self.copies = copies
        self.audit = audit
        self.claim = claim

    # -- the use case -----------------------------------------------------

    def repair(
        self,
        study_uids: Sequence[str] = (),
        peer_names: Sequence[str] = (),
        *,
        dry_run: bool = False,
        caller: Caller | None = None,
        folders: Sequence[str] = (),
    ) -> RepairReport:
        """Check the blobs of ``study_uids`` (empty: every instance) and restore the
        damaged ones from ``peer_names``, then ``folders`` of Part 10 files (a backup, an
        export; given by the operator of the command line, never over HTTP). With
        neither: every migration-source peer.

        Raises
        ------
        InvalidIdentifier
            For a Study Instance UID that is not a UID.
        NotFound
            For an unknown peer name.
        InvalidRequest
            For a peer that has neither a DIMSE address nor a DICOMweb URL.
        DicomhubError
            When another process is repairing now.
        """
        for uid in study_uids:
            if not is_valid_uid(uid):
                raise InvalidIdentifier(f"not a Study Instance UID: {uid[:80]!r}")
        sources = self._sources(peer_names) if peer_names or not folders else []
        # An ad-hoc folder is asked as a peer with only that folder, named as given.
        sources += [Peer(f"folder:{path}", folder=path, migrate_via=RemoteKind.FOLDER) for path in folders]
        if self.claim is None or dry_run:
            return self._run(study_uids, sources, dry_run, caller)
        with self.claim("peer-repair") as mine:
            if not mine:
                raise Conflict("another process is repairing from peers now; try again later")
            return self._run(study_uids, sources, dry_run, caller)

    def _sources(self, names: Sequence[str]) -> list[Peer]:
        if names:
            found = [self.peers.require(name) for name in names]
            for peer in found:
                if not (peer.dimse or peer.dicomweb_url or peer.folder):
                    raise InvalidRequest(
                        f"peer {peer.name} has neither a DIMSE address, a DICOMweb URL "
                        "nor a folder to fetch from"
                    )
            return found
        return [
            p
            for p in self.peers.list()
            if p.may(Role.MIGRATION_SOURCE) and (p.dimse or p.dicomweb_url or p.folder)
        ]

    def _run(
        self, study_uids: Sequence[str], sources: list[Peer], dry_run: bool, caller: Caller | None
    ) -> RepairReport:
        report = RepairReport(dry_run=dry_run, peers=[p.name for p in sources])
        damaged: list[tuple[RepairTarget, RepairItem]] = []
        for target in self.repo.targets(list(study_uids) if study_uids else None):
            report.checked += 1
            found = self.damage(target)
            if found is not None:
                item = RepairItem(
                    target.sop_instance_uid,
                    target.study_instance_uid,
                    target.series_instance_uid,
                    target.blob_key,
                    *found,
                )
                damaged.append((target, item))
                report.items.append(item)
        for target, item in damaged:
            if not sources:
                item.reason = "no peer to repair from (give --from PEER, or a peer the migration-source role)"
            elif dry_run:
                item.outcome, item.source = PLANNED, ", ".join(_describe(p) for p in sources)
            else:
                self._restore(target, item, sources)
        if not dry_run and report.items:
            self._audit(report, caller)
        return report

    # -- finding the damage -----------------------------------------------

    def damage(self, target: RepairTarget) -> tuple[str, str] | None:
        """(problem, detail) of the instance's blob, as the storage check names them; None if sound."""
        key = target.blob_key
        try:
            size = self.blobs.stat(key).size
            if size != target.size:
                return "size-mismatch", f"{size} bytes stored, {target.size} indexed"
            _size, sha256 = blob_digest(self.blobs, key)
            if target.sha256 and target.sha256 != PENDING:
                if sha256 != target.sha256:
                    return "digest-mismatch", "SHA-256 differs from the index"
                return None
            # No digest to compare with (STOW-RS left it for later): does it still parse?
            extract_part10(self.blobs.read(key))
        except BlobMissing:
            return "missing", "the blob is missing"
        except (InvalidRequest, ValueError) as exc:
            return "unreadable", f"the stored object does not parse: {exc}"
        except DicomhubError as exc:
            return "unreadable", str(exc)
        return None

    # -- restoring --------------------------------------------------------

    def _restore(self, target: RepairTarget, item: RepairItem, sources: list[Peer]) -> None:
        reasons: list[str] = []
        for peer in sources:
            try:
                if self.copies is None:
                    raise DicomhubError("this process cannot fetch from peers")
                remote = dataclasses.replace(peer.remote(self.peers.credentials(peer)), kind=_via(peer))
                copy = self.copies.fetch(remote, target)
                data, syntax, original, how = self.verified(target, copy)
            except _Refused as exc:
                reasons.append(f"{peer.name}: refused: {exc}")
                LOGGER.warning(
                    "repair of %s: the copy of %s refused: %s", target.sop_instance_uid, peer.name, exc
                )
                continue
            except DicomhubError as exc:
                reasons.append(f"{peer.name}: {exc}")
                continue
            key = self.blobs.new_key()
            sha256 = hashlib.sha256(data).hexdigest()
            try:
                self.blobs.put(key, data, sha256, durable=True)
                switched = self.repo.switch_blob(target, key, len(data), sha256, syntax, original)
            except DicomhubError as exc:
                self.blobs.delete(key)
                reasons.append(f"{peer.name}: the verified copy could not be stored: {exc}")
                continue
            if not switched:
                self.blobs.delete(key)
                item.reason = "the instance was deleted or repaired by someone else meanwhile"
                return
            try:
                self.blobs.delete(target.blob_key)
            except DicomhubError as exc:  # an orphan now: `dicomhub check --repair` removes it later
                LOGGER.warning(
                    "repair of %s: the damaged blob %s stays: %s",
                    target.sop_instance_uid,
                    target.blob_key,
                    exc,
                )
            LOGGER.warning("repaired %s from %s (%s)", target.sop_instance_uid, peer.name, how)
            item.outcome, item.source, item.new_blob_key, item.reason = REPAIRED, peer.name, key, how
            return
        item.reason = "; ".join(reasons)

    def verified(
        self, target: RepairTarget, copy: bytes
    ) -> tuple[bytes, str, tuple[str | None, str | None], str]:
        """What to store for ``target`` from a peer's ``copy``: (bytes, their transfer syntax,
        (original syntax, original SHA-256) to keep, how it was proven).

        Raises
        ------
        _Refused
            With the reason, when the copy is not proven to be the same object.
        """
        try:
            header = extract_part10(copy)
        except (InvalidRequest, ValueError) as exc:
            raise _Refused(f"the copy does not parse: {exc}") from exc
        if header.sop_instance_uid != target.sop_instance_uid:
            raise _Refused(f"the copy is SOP Instance {header.sop_instance_uid}")
        if header.sop_class_uid != target.sop_class_uid:
            raise _Refused(f"the copy is of SOP Class {header.sop_class_uid}, not {target.sop_class_uid}")
        kept = (target.original_transfer_syntax_uid, target.original_sha256)
        whole = hashlib.sha256(copy).hexdigest()
        if whole == target.sha256:
            return copy, target.transfer_syntax_uid, kept, "the same bytes as stored"
        compressed = bool(target.original_transfer_syntax_uid) and (
            target.original_transfer_syntax_uid != target.transfer_syntax_uid
        )
        if compressed and whole == target.original_sha256:
            return self._compressed(target, copy, "the same bytes as received")
        if target.content_sha256 in (PENDING, UNREADABLE):
            raise _Refused(
                "the index holds no data set digest for this instance (STOW-RS left it for later): "
                "only a copy with the stored blob's SHA-256 is proof"
                + ("" if target.sha256 else ", and that was left for later too")
            )
        if content_digest(copy) != target.content_sha256:
            raise _Refused(
                f"its data set differs from the one received (in {header.transfer_syntax_uid}): "
                "another object, or a re-encoding that cannot be proven to be the same "
                "object without the original"
            )
        if compressed:
            return self._compressed(target, copy, "the same data set as received")
        if header.transfer_syntax_uid != target.transfer_syntax_uid:
            raise _Refused(
                f"the copy says {header.transfer_syntax_uid}, the index {target.transfer_syntax_uid}"
            )
        # The File Meta dicomhub wrote at ingest, around the peer's data set: the
        # very bytes stored, when the object came by C-STORE.
        dataset = memoryview(copy)[dataset_offset(copy) :]
        rebuilt = (
            file_meta_header(
                target.sop_class_uid,
                target.sop_instance_uid,
                target.transfer_syntax_uid,
                target.source_ae_title,
            )
            + dataset
        )
        if hashlib.sha256(rebuilt).hexdigest() == target.sha256:
            return (
                rebuilt,
                target.transfer_syntax_uid,
                kept,
                "the same bytes as stored (data set from the peer)",
            )
        return copy, target.transfer_syntax_uid, kept, "the same data set as received"

    def _compressed(
        self, target: RepairTarget, copy: bytes, how: str
    ) -> tuple[bytes, str, tuple[str | None, str | None], str]:
        """The received object compressed at rest again, as ingest did; as received
        when it cannot be (compression must never cost an object)."""
        try:
            data = codec.transcode_bytes(copy, target.transfer_syntax_uid)
            extract_part10(data)
        except (TranscodeError, InvalidRequest) as exc:
            LOGGER.warning("repair of %s: kept as received, not compressed: %s", target.sop_instance_uid, exc)
            received = target.original_transfer_syntax_uid or target.transfer_syntax_uid
            return copy, received, (None, None), f"{how}; kept as received (not compressed: {exc})"
        kept = (target.original_transfer_syntax_uid, target.original_sha256)
        return data, target.transfer_syntax_uid, kept, f"{how}; compressed at rest again"

    def _audit(self, report: RepairReport, caller: Caller | None) -> None:
        if self.audit is None:
            return
        repaired = [i for i in report.items if i.outcome == REPAIRED]
        failed = [i for i in report.items if i.outcome == FAILED]
        if not failed:
            outcome = AuditOutcome.SUCCESS
        elif repaired:
            outcome = AuditOutcome.MINOR_FAILURE
        else:
            outcome = AuditOutcome.MAJOR_FAILURE
        self.audit.record(
            AuditEvent(
                AuditAction.STORE,
                outcome,
                caller or Caller.cli(),
                studies=tuple(_studies(report.items)),
                detail={
                    "operation": "repair",
                    "peers": report.peers,
                    "repaired": len(repaired),
                    "failed": len(failed),
                    "instances": [
                        {"sop_instance_uid": i.sop_instance_uid, "outcome": i.outcome, "source": i.source}
                        for i in report.items[:_AUDITED_UIDS]
                    ],
                },
            )
        )


def _via(peer: Peer) -> RemoteKind:
    """How a copy is fetched: as the peer's migrations do, else DICOMweb when it has a URL,
    else DIMSE when it has an address, else from its folder."""
    if peer.folder and (peer.migrate_via is RemoteKind.FOLDER or not (peer.dimse or peer.dicomweb_url)):
        return RemoteKind.FOLDER
    if peer.via is RemoteKind.DIMSE and peer.dimse:
        return RemoteKind.DIMSE
    return RemoteKind.DICOMWEB if peer.dicomweb_url else RemoteKind.DIMSE


def _describe(peer: Peer) -> str:
    how = {RemoteKind.DIMSE: "C-GET", RemoteKind.DICOMWEB: "WADO-RS", RemoteKind.FOLDER: "folder"}
    return f"{peer.name} ({how[_via(peer)]})"


def _studies(items: Iterable[RepairItem]) -> list[AuditedStudy]:
    by_study: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for i in items:
        by_study.setdefault(i.study_instance_uid, set()).add(i.series_instance_uid)
        counts[i.study_instance_uid] = counts.get(i.study_instance_uid, 0) + 1
    return [
        AuditedStudy(uid, series_instance_uids=tuple(sorted(s)), number_of_instances=counts[uid])
        for uid, s in sorted(by_study.items())
    ]

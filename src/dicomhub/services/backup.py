"""``dicomhub backup`` and ``dicomhub restore``: a consistent copy of an archive, and back.

A backup is a folder::

    manifest.json    what the backup is (written last: its presence marks a complete backup)
    index.sqlite     the SQLite index as of one commit, or
    index.pgdump     pg_dump (custom format) of the PostgreSQL index
    blobs.jsonl      one line per blob the copied rows refer to: key, size, sha256, ...
    blobs/           copies of those blobs, laid out as a file:// store (unless manifest only)

Why it is consistent while the server stores: the index is copied first, as
of one commit; the manifest lists exactly the blobs the copied rows refer
to, read from that same snapshot; the blobs are copied after. A blob is
written (durably) before its row is committed, and blobs are never changed
after: a new or replaced object gets a new random key. So every blob the
snapshot refers to already exists, complete, when the snapshot is taken,
and stays as it is. Blobs written after the snapshot belong to rows the
snapshot lacks, and are not copied. The one thing that can happen to a
listed blob is its removal (the instance deleted, or replaced under the
``overwrite`` policy, after the snapshot): the manifest marks it ``gone`` and
the restore removes that instance's row, as if the deletion had happened
just before the backup.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dicomhub import __version__
from dicomhub.errors import BlobMissing, ChecksumMismatch, Conflict, DicomhubError, NotFound
from dicomhub.index.backup import IndexBackup
from dicomhub.index.blobs import BlobRecord
from dicomhub.index.repository import IndexRepository
from dicomhub.model.identifiers import Level
from dicomhub.services.storagecheck import blob_digest
from dicomhub.storage.base import BlobInfo, BlobStore
from dicomhub.storage.filesystem import FileSystemBlobStore

__all__ = [
    "BLOB_FOLDER",
    "BLOB_LIST",
    "MANIFEST",
    "BackupManifest",
    "BackupReport",
    "BackupService",
    "ManifestEntry",
    "RestoreReport",
    "read_manifest",
]

LOGGER = logging.getLogger("dicomhub.backup")

MANIFEST = "manifest.json"
BLOB_LIST = "blobs.jsonl"
BLOB_FOLDER = "blobs"
_FORMAT = "dicomhub-backup"
_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One line of ``blobs.jsonl``: a blob the backup's index rows refer to."""

    key: str
    size: int
    sha256: str | None  # None: not known (STOW-RS left it for later and it was not copied)
    kind: str  # "instance" or "conflict" (a refused copy kept in quarantine)
    sop_instance_uid: str
    gone: bool = False  # removed from the store between the snapshot and the copy


@dataclass(frozen=True, slots=True)
class BackupManifest:
    """``manifest.json``."""

    created: str
    dicomhub_version: str
    index_kind: str  # sqlite | postgresql
    index_file: str
    schema_revision: str | None
    store_url: str  # where the blobs were
    blobs_copied: bool
    blobs: int
    bytes: int


@dataclass
class BackupReport:
    """What ``dicomhub backup`` did."""

    dest: str
    manifest: BackupManifest
    gone: list[str] = field(default_factory=list)  # blobs removed after the snapshot
    damaged: list[str] = field(default_factory=list)  # "key: reason": the archive's copy is bad
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged


@dataclass
class RestoreReport:
    """What ``dicomhub restore`` did."""

    index_kind: str
    instances: int = 0
    blobs_copied: int = 0
    blobs_verified: int = 0
    bytes: int = 0
    rows_removed: list[str] = field(default_factory=list)  # instances whose blob was gone
    seconds: float = 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, lines: Iterable[str]) -> None:
    """Write ``path`` under a temporary name, fsync it, rename it and fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _chunks(blobs: BlobStore, key: str) -> Iterator[bytes]:
    with blobs.open(key) as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def read_manifest(src: Path) -> tuple[BackupManifest, list[ManifestEntry]]:
    """The manifest and blob list of the backup in folder ``src``.

    Raises
    ------
    DicomhubError
        When ``src`` is not a complete dicomhub backup (of a format this version reads).
    """
    try:
        raw = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DicomhubError(f"{src} is not a complete dicomhub backup: no {MANIFEST}") from exc
    except (OSError, ValueError) as exc:
        raise DicomhubError(f"{src / MANIFEST} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise DicomhubError(f"{src / MANIFEST} is not a dicomhub backup manifest")
    if raw.get("version") != _VERSION:
        raise DicomhubError(f"{src}: backup format version {raw.get('version')} is not readable here")
    try:
        manifest = BackupManifest(**{k: raw[k] for k in BackupManifest.__dataclass_fields__})
        entries = [
            ManifestEntry(**json.loads(line))
            for line in (src / BLOB_LIST).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DicomhubError(f"{src}: damaged backup manifest or blob list: {exc}") from exc
    if len(entries) != manifest.blobs:
        raise DicomhubError(f"{src}: {BLOB_LIST} lists {len(entries)} blobs, the manifest {manifest.blobs}")
    if not (src / manifest.index_file).is_file():
        raise DicomhubError(f"{src}: the index copy {manifest.index_file} is missing")
    return manifest, entries


class BackupService:
    """Backs up and restores one archive (its index and blob store)."""

    def __init__(
        self,
        index: IndexBackup,
        blobs: BlobStore,
        store_url: str,
        open_repository: Callable[[], IndexRepository],
    ) -> None:
        """
        Parameters
        ----------
        index : IndexBackup
            The archive's index.
        blobs : BlobStore
            The archive's blob store, named by ``store_url``.
        open_repository : callable
            The archive's index repository, opened once the index is restored.
        """
        self.index = index
        self.blobs = blobs
        self.store_url = store_url
        self.open_repository = open_repository

    # ------------------------------------------------------------ backup

    def backup(self, dest: Path, *, copy_blobs: bool, jobs: int = 4) -> BackupReport:
        """Write a backup of the archive into the new (or empty) folder ``dest``.

        Parameters
        ----------
        dest : Path
            The backup folder; created, and must not hold anything yet.
        copy_blobs : bool
            Copy the blobs into ``dest/blobs`` (else the manifest only: the
            blobs stay where they are, e.g. in a versioned S3 bucket).
        jobs : int
            Blobs copied at a time.

        Returns
        -------
        BackupReport
            Not ``ok`` when a blob of the archive no longer matches the size
            or SHA-256 its row records (the backup is complete otherwise).

        Raises
        ------
        DicomhubError
            When ``dest`` is not empty, or the index cannot be copied.
        """
        started = time.monotonic()
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise Conflict(f"{dest} is not an empty folder: a backup goes into a new one")
        dest.mkdir(parents=True, exist_ok=True)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        index_file, revision, records = self.index.snapshot(dest)
        gone: list[str] = []
        damaged: list[str] = []
        if copy_blobs:
            target = FileSystemBlobStore(dest / BLOB_FOLDER)
            entries = self._copy_out(records, target, jobs, gone, damaged)
        else:
            entries = [
                ManifestEntry(r.blob_key, r.size, r.sha256 or None, r.kind, r.sop_instance_uid)
                for r in records
            ]
        _write_durably(dest / BLOB_LIST, (json.dumps(asdict(e)) + "\n" for e in entries))
        manifest = BackupManifest(
            created=created,
            dicomhub_version=__version__,
            index_kind=self.index.kind,
            index_file=index_file,
            schema_revision=revision,
            store_url=self.store_url,
            blobs_copied=copy_blobs,
            blobs=len(entries),
            bytes=sum(e.size for e in entries if not e.gone),
        )
        body = {"format": _FORMAT, "version": _VERSION, **asdict(manifest)}
        _write_durably(dest / MANIFEST, [json.dumps(body, indent=2) + "\n"])
        return BackupReport(str(dest), manifest, gone, damaged, time.monotonic() - started)

    def _copy_out(
        self,
        records: list[BlobRecord],
        target: FileSystemBlobStore,
        jobs: int,
        gone: list[str],
        damaged: list[str],
    ) -> list[ManifestEntry]:
        """Copy the blobs of ``records`` into ``target``; their manifest entries. Blobs
        removed since the snapshot are added to ``gone``, bad ones (as "key: why") to ``damaged``."""

        def one(record: BlobRecord) -> ManifestEntry:
            try:
                info = target.put_stream(record.blob_key, _chunks(self.blobs, record.blob_key), durable=False)
            except BlobMissing:
                # Deleted (or replaced) after the snapshot: see the module docstring.
                gone.append(record.blob_key)
                return ManifestEntry(
                    record.blob_key, record.size, record.sha256 or None, record.kind,
                    record.sop_instance_uid, gone=True,
                )  # fmt: skip
            problem = _mismatch(record.size, record.sha256 or None, info)
            if problem:
                damaged.append(f"{record.blob_key} ({record.sop_instance_uid}): {problem}")
            # The recorded digest when there is one (a damaged copy then fails the
            # restore's verification, as it should); else the copy's own.
            return ManifestEntry(
                record.blob_key, record.size, record.sha256 or info.sha256, record.kind,
                record.sop_instance_uid,
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            entries = list(pool.map(one, records))
        target.sync()  # one flush for every copy
        return entries

    # ------------------------------------------------------------ restore

    def restore(
        self, src: Path, *, source: BlobStore | None, force: bool = False, jobs: int = 4
    ) -> RestoreReport:
        """Rebuild this (empty) archive from the backup in ``src``.

        The blobs are copied (or, when ``source`` is None, verified where they
        are: a manifest-only backup restored onto the same store) and every
        one is checked against the manifest's size and SHA-256 before the
        index is touched; a backup with one bad blob restores nothing. Then
        the index is put in place and upgraded to the newest schema.

        Parameters
        ----------
        source : BlobStore or None
            Where the backup's blobs are (its ``blobs/`` folder, or the store
            a manifest-only backup names); None when that is this archive's
            own store.
        force : bool
            Restore over an archive that holds instances or blobs (its index
            is replaced; its blobs stay, unreferenced).

        Raises
        ------
        Conflict
            The archive is not empty and ``force`` is false, or the backup
            is of another kind of index database.
        ChecksumMismatch
            A blob is missing or differs from the manifest (named in the message).
        """
        started = time.monotonic()
        manifest, entries = read_manifest(src)
        if manifest.index_kind != self.index.kind:
            raise Conflict(
                f"the backup holds a {manifest.index_kind} index; this archive's index is "
                f"{self.index.kind} (restore into the same kind of database)"
            )
        if not force:
            self._require_empty(check_store=source is not None)
        report = RestoreReport(manifest.index_kind)
        self._bring_blobs(entries, source, jobs, report)
        self.index.restore(src / manifest.index_file)
        self.index.upgrade()
        repository = self.open_repository()
        for entry in entries:
            if entry.gone and entry.kind == "instance":
                self._remove_row(repository, entry, report)
        report.instances = self.index.instance_count()
        report.seconds = time.monotonic() - started
        return report

    def _require_empty(self, *, check_store: bool) -> None:
        held = self.index.instance_count()
        if held:
            raise Conflict(
                f"refusing to restore over an archive that holds {held} instances "
                "(use --force to replace its index)"
            )
        if check_store:
            for _key, stat in self.blobs.iter_blobs():
                if stat.size:  # empty files are keys handed out ahead of time
                    raise Conflict(
                        f"refusing to restore over an archive whose blob store {self.store_url} holds "
                        "blobs (use --force)"
                    )

    def _bring_blobs(
        self, entries: list[ManifestEntry], source: BlobStore | None, jobs: int, report: RestoreReport
    ) -> None:
        problems: list[str] = []
        copied: list[str] = []
        lock = threading.Lock()

        def one(entry: ManifestEntry) -> None:
            try:
                if source is None:
                    size, sha256 = blob_digest(self.blobs, entry.key)
                    info = BlobInfo(entry.key, size, sha256)
                else:
                    info = self.blobs.put_stream(entry.key, _chunks(source, entry.key), durable=False)
                    copied.append(entry.key)
            except BlobMissing:
                problems.append(f"blob {entry.key} ({entry.sop_instance_uid}) is missing from the backup")
                return
            except DicomhubError as exc:
                problems.append(f"blob {entry.key} ({entry.sop_instance_uid}) cannot be read: {exc}")
                return
            problem = _mismatch(entry.size, entry.sha256, info)
            if problem:
                problems.append(f"blob {entry.key} ({entry.sop_instance_uid}) is damaged: {problem}")
                return
            with lock:
                report.bytes += info.size
                if source is None:
                    report.blobs_verified += 1
                else:
                    report.blobs_copied += 1

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, [e for e in entries if not e.gone]))
        if problems:
            for key in copied:  # nothing of a failed restore stays behind
                try:
                    self.blobs.delete(key)
                except DicomhubError:
                    LOGGER.warning("could not remove blob %s of the failed restore", key)
            shown = "; ".join(sorted(problems)[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise ChecksumMismatch(
                f"the backup is damaged, nothing was restored: {len(problems)} of {len(entries)} "
                f"blobs do not match the manifest: {shown}{more}"
            )
        self.blobs.sync()

    def _remove_row(self, repository: IndexRepository, entry: ManifestEntry, report: RestoreReport) -> None:
        found = self.index.locate(entry.sop_instance_uid)
        if found is None or found[2] != entry.key:
            return
        study_uid, series_uid, _key = found
        try:
            repository.delete_entity(Level.IMAGE, study_uid, series_uid, entry.sop_instance_uid)
        except NotFound:
            return
        report.rows_removed.append(entry.sop_instance_uid)

def _mismatch(size: int, sha256: str | None, info: BlobInfo) -> str:
    """Why ``info`` is not the blob of ``size`` bytes with ``sha256`` (empty when it is)."""
    if info.size != size:
        return f"{info.size} bytes, {size} expected"
    if sha256 and info.sha256 and info.sha256 != sha256:
        return f"SHA-256 {info.sha256}, {sha256} expected"
    return ""



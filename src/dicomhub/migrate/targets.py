"""Push targets: a remote archive that receives dicomhub's objects (C-STORE or STOW-RS).

Objects go as stored, in their transfer syntax. When the peer accepts none of an
object's stored syntax (no accepted presentation context over DIMSE, or a STOW-RS
failure reason 0xC122), it is sent in a lossless syntax the peer does accept,
and the runner reports which objects went so. What a target holds afterwards is
asked of it the same way as of a source (C-FIND / QIDO-RS), so every push item
is checked against the target itself.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from dicomhub.dimse.requestor import Association, AssociationError
from dicomhub.errors import DicomhubError
from dicomhub.migrate.sources import FIND_CONTEXT, DicomwebSource, DimseSource, RemoteError
from dicomhub.model.encoding import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from dicomhub.model.migration import RemoteArchive, RemoteKind
from dicomhub.model.structure import dataset_offset

__all__ = ["DicomwebTarget", "DimseTarget", "Outgoing", "Sent", "open_target"]

#: What every Storage SCP takes (PS3.5 10.1): the fallback when a stored syntax is refused.
_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Objects and bytes per STOW-RS request: a failed request repeats at most this much.
_STOW_OBJECTS = 64
_STOW_BYTES = 64 << 20
_TS_NOT_SUPPORTED = 0xC122  # PS3.18 Table 10.5.3-2: Referenced Transfer Syntax not supported
_IDLE_REUSE = 2.0  # seconds a storage association may have been idle and still be used


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One object to send: as it is to go (``part10``, stored or de-identified) and,
    on demand, as a Part 10 file in another transfer syntax (``in_syntax``)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    part10: Callable[[], bytes]
    in_syntax: Callable[[str], bytes]


@dataclass(slots=True)
class Sent:
    """What a push of one series did: objects sent, bytes, and those sent in another syntax."""

    count: int = 0
    bytes: int = 0
    transcoded: list[tuple[str, str, str]] = field(default_factory=list)  # (SOP, stored TS, sent TS)
    failures: list[str] = field(default_factory=list)


class DimseTarget:
    """A DIMSE archive as a target: C-STORE, C-FIND to check.

    The storage association is kept for the next series while that needs no other
    presentation context and it has not been idle long (peers close idle ones:
    Orthanc after 5 s): setting one up costs more than sending a small series.
    It proposes the C-FIND context too, and the checks of what arrived are asked
    on it: one association per worker, not two (see :meth:`DimseSource.share`).
    """

    def __init__(
        self, remote: RemoteArchive, calling_ae_title: str, timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.remote = remote
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout
        self.tls = tls  # DICOM TLS client context for every association to it; None: plain TCP
        self.finder = DimseSource(remote, calling_ae_title, calling_ae_title, timeout, tls)
        self._assoc: Association | None = None
        self._proposed: frozenset[tuple[str, tuple[str, ...]]] = frozenset()
        self._used = 0.0

    def _association(self, contexts: Sequence[tuple[str, Sequence[str]]]) -> Association:
        wanted = frozenset((a, tuple(ts)) for a, ts in contexts)
        assoc = self._assoc
        fresh = time.monotonic() - self._used < _IDLE_REUSE
        if assoc is not None and assoc.is_open and fresh and wanted <= self._proposed:
            return assoc
        self._release()
        # Contexts of the associations before are proposed again: series of other
        # classes or syntaxes alternate without a new association each time.
        merged = self._proposed | wanted if len(self._proposed | wanted) <= 128 else wanted
        try:
            assoc = Association.open(
                self.remote.host,
                self.remote.port,
                self.remote.ae_title,
                self.calling_ae_title,
                [(a, list(ts)) for a, ts in sorted(merged)],
                acse_timeout=self.timeout,
                dimse_timeout=self.timeout,
                tls=self.tls,
            )
        except AssociationError as exc:
            raise RemoteError(f"{self.remote.ae_title}@{self.remote.host}:{self.remote.port}: {exc}") from exc
        self._assoc, self._proposed = assoc, merged
        self.finder.share(assoc)  # the checks of what arrived go on it too
        return assoc

    def _release(self) -> None:
        if self._assoc is not None and self._assoc.is_open:
            with contextlib.suppress(AssociationError, OSError):
                self._assoc.release()
        self._assoc = None

    def held(self, study_uid: str, series_uid: str) -> set[str]:
        return self.finder.series_instances(study_uid, series_uid)

    def held_study(self, study_uid: str) -> dict[str, set[str]] | None:
        """What the target holds of a whole study, in one query (None: it refuses such a query)."""
        return self.finder.study_instances(study_uid)

    def send(self, objects: Sequence[Outgoing]) -> Sent:
        sent = Sent()
        if not objects:
            return sent
        contexts: list[tuple[str, Sequence[str]]] = []
        for pair in sorted({(o.sop_class_uid, o.transfer_syntax_uid) for o in objects}):
            contexts.append((pair[0], [pair[1]]))
        for sop_class in sorted({o.sop_class_uid for o in objects}):
            contexts.append((sop_class, list(_FALLBACKS)))
        contexts.append((FIND_CONTEXT[0], list(FIND_CONTEXT[1])))
        if len(contexts) > 128:
            raise RemoteError("more than 128 presentation contexts for one series")
        kept = self._assoc
        assoc = self._association(contexts)
        reused = assoc is kept
        n = 0
        try:
            while n < len(objects):
                obj = objects[n]
                try:
                    self._send_one(assoc, obj, n, sent)
                except AssociationError as exc:
                    self._release()
                    if reused and n == 0:
                        # The peer closed the kept association meanwhile: a new one, once.
                        reused = False
                        assoc = self._association(contexts)
                        continue
                    sent.failures.extend(
                        f"{o.sop_instance_uid}: C-STORE to {self.remote.ae_title}: {exc}" for o in objects[n:]
                    )
                    break
                n += 1
        finally:
            self._used = time.monotonic()
        return sent

    def _send_one(self, assoc: Association, obj: Outgoing, n: int, sent: Sent) -> None:
        """C-STORE one object as stored, or in an uncompressed syntax the peer accepted."""
        context = assoc.accepted(obj.sop_class_uid, obj.transfer_syntax_uid)
        fallback = None
        if context is None:
            fallback = next((ts for ts in _FALLBACKS if assoc.accepted(obj.sop_class_uid, ts)), None)
            if fallback is None:
                sent.failures.append(f"{obj.sop_instance_uid}: no presentation context accepted")
                return
            context = assoc.accepted(obj.sop_class_uid, fallback)
        assert context is not None
        data = obj.part10() if fallback is None else obj.in_syntax(fallback)
        body = memoryview(data)[dataset_offset(data) :]
        status, comment = assoc.send_c_store(
            context, obj.sop_class_uid, obj.sop_instance_uid, body, (n % 65535) + 1
        )
        if status == 0x0000 or status & 0xF000 == 0xB000:  # success or warning
            sent.count += 1
            sent.bytes += len(body)
            if fallback is not None:
                sent.transcoded.append((obj.sop_instance_uid, obj.transfer_syntax_uid, fallback))
        else:
            sent.failures.append(f"{obj.sop_instance_uid}: status 0x{status:04X} {comment or ''}".strip())

    def close(self) -> None:
        self._release()
        self.finder.close()


def _multipart(boundary: bytes, parts: Sequence[bytes]) -> Iterator[bytes]:
    """A multipart/related body, streamed part by part (RFC 2387)."""
    for part in parts:
        yield b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        yield part
        yield b"\r\n"
    yield b"--" + boundary + b"--\r\n"


def _failed(answer: Any) -> dict[str, int]:
    """SOP Instance UID -> FailureReason of a STOW-RS response's Failed SOP Sequence."""
    out: dict[str, int] = {}
    if not isinstance(answer, dict):
        return out
    for item in (answer.get("00081198") or {}).get("Value") or []:
        sop = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [0xC000])[0]
        out[str(sop)] = int(reason)
    return out


class DicomwebTarget:
    """A DICOMweb archive as a target: STOW-RS in batches, QIDO-RS to check."""

    def __init__(self, remote: RemoteArchive, timeout: float) -> None:
        self.remote = remote
        self.finder = DicomwebSource(remote, timeout)

    def held(self, study_uid: str, series_uid: str) -> set[str]:
        return self.finder.series_instances(study_uid, series_uid)

    def held_study(self, study_uid: str) -> dict[str, set[str]] | None:
        """What the target holds of a whole study, in one query (None: it refuses such a query)."""
        return self.finder.study_instances(study_uid)

    def _stow(self, parts: Sequence[bytes]) -> tuple[dict[str, int], str]:
        boundary = uuid.uuid4().hex.encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
            "Accept": "application/dicom+json",
        }
        try:
            r = self.finder.client.post("/studies", content=_multipart(boundary, parts), headers=headers)
        except httpx.HTTPError as exc:
            raise RemoteError(f"STOW-RS: {exc}") from exc
        try:
            answer = r.json() if r.content else {}
        except ValueError:
            answer = {}
        if r.status_code not in (200, 202, 409):
            raise RemoteError(f"STOW-RS: HTTP {r.status_code} {r.text[:200]}")
        return _failed(answer), f"HTTP {r.status_code}"

    def send(self, objects: Sequence[Outgoing]) -> Sent:
        sent = Sent()
        batch: list[tuple[Outgoing, bytes]] = []

        def flush() -> None:
            if not batch:
                return
            failed, how = self._stow([data for _o, data in batch])
            retry: list[tuple[Outgoing, bytes]] = []
            for obj, data in batch:
                reason = failed.get(obj.sop_instance_uid)
                if reason is None:
                    sent.count += 1
                    sent.bytes += len(data)
                elif reason == _TS_NOT_SUPPORTED and obj.transfer_syntax_uid not in _FALLBACKS:
                    retry.append((obj, obj.in_syntax(EXPLICIT_VR_LITTLE_ENDIAN)))
                else:
                    sent.failures.append(f"{obj.sop_instance_uid}: STOW-RS failure 0x{reason:04X} ({how})")
            if retry:
                again, how = self._stow([data for _o, data in retry])
                for obj, data in retry:
                    if obj.sop_instance_uid in again:
                        sent.failures.append(
                            f"{obj.sop_instance_uid}: STOW-RS refused it in any syntax ({how})"
                        )
                    else:
                        sent.count += 1
                        sent.bytes += len(data)
                        sent.transcoded.append(
                            (obj.sop_instance_uid, obj.transfer_syntax_uid, EXPLICIT_VR_LITTLE_ENDIAN)
                        )
            batch.clear()

        size = 0
        for obj in objects:
            data = obj.part10()
            if batch and (len(batch) >= _STOW_OBJECTS or size + len(data) > _STOW_BYTES):
                flush()
                size = 0
            batch.append((obj, data))
            size += len(data)
        flush()
        return sent

    def close(self) -> None:
        self.finder.close()


def open_target(
    remote: RemoteArchive, calling_ae_title: str, timeout: float = 60.0, tls: ssl.SSLContext | None = None
) -> DimseTarget | DicomwebTarget:
    """The push target ``remote`` is; ``tls``: the DICOM TLS client context a DIMSE
    one associates through (None: plain TCP)."""
    if remote.kind is RemoteKind.DIMSE:
        return DimseTarget(remote, calling_ae_title, timeout, tls)
    if remote.kind is RemoteKind.DICOMWEB:
        return DicomwebTarget(remote, max(timeout, 120.0))
    raise DicomhubError(f"{remote.name!r} is a folder: a push target is a DIMSE or DICOMweb archive")

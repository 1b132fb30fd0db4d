"""Blobs as objects in an S3-compatible bucket, under a key prefix.

Writes go up in one ``PutObject`` when they fit in one part, else as a
multipart upload (one part in hand at a time), so objects of any size stream
through. A blob is acknowledged only once the PUT (or CompleteMultipartUpload)
has returned: S3 has no separate flush, so ``durable=False`` changes nothing
and :meth:`S3BlobStore.sync` has nothing to do.

Integrity: every single-part PUT carries its SHA-256 as an S3 checksum (the
server refuses bytes that arrive altered) and as object metadata
(``x-amz-meta-sha256``); each part of a multipart upload carries its own
checksum, and the whole-object digest is in the index. Whole reads are
checked against the metadata digest; ranged reads (frames, bulk data)
cannot be and are not.

Retries: botocore retries transient failures (throttling, 5xx, connection
errors) with exponential backoff ("standard" mode); a multipart part that
still fails is retried here once more with backoff before the upload is
aborted. Anything else becomes a :class:`~dicomhub.errors.StorageError`,
which the adapters answer with a failure status (never a silent success).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import urlsplit

from dicomhub.errors import BlobMissing, ChecksumMismatch, ConfigurationError, StorageError
from dicomhub.storage.base import BlobInfo, BlobStat, new_blob_key, valid_blob_key

__all__ = ["S3BlobStore", "S3Location", "parse_s3_url"]

LOGGER = logging.getLogger("dicomhub.storage.s3")

PART_SIZE = 5 << 20  # S3's minimum: the least memory per upload (up to 50 GB in 10,000 parts)
READ_BLOCK = 1 << 20  # the least a ranged GET fetches
MAX_READ_BLOCK = 8 << 20  # the most: sequential reads double the block up to this (memory per reader)
_METADATA_DIGEST = "sha256"
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Location:
    """Bucket and key prefix of an ``s3://bucket/prefix`` URL."""

    bucket: str
    prefix: str  # "" or ending in "/"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` -> :class:`S3Location`; ConfigurationError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"storage URL {url!r} is not of the form s3://bucket/prefix")
    prefix = parts.path.strip("/")
    return S3Location(parts.netloc, prefix + "/" if prefix else "")


class S3BlobStore:
    """A :class:`~dicomhub.storage.base.BlobStore` on an S3-compatible object store.

    Endpoint, region and credentials come from the arguments when given,
    else from botocore's usual sources (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/config``).
    """

    def __init__(
        self,
        location: S3Location,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
        part_size: int = PART_SIZE,
    ) -> None:
        import boto3
        from botocore.config import Config

        if part_size < 5 << 20:
            raise ConfigurationError("S3 multipart parts must be at least 5 MiB")
        self.location = location
        self.part_size = part_size
        self._max_attempts = max(1, max_attempts)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=32,
            # Only send/verify checksums where asked: S3-compatible servers
            # differ in their support of the newer automatic CRC checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self._client: Any = session.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )
        # The health check asks once and briefly: a load balancer must not wait for retries.
        probe = config.merge(
            Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
        )
        self._probe: Any = session.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=probe
        )

    # ------------------------------------------------------------ helpers

    def _key(self, key: str) -> str:
        if not valid_blob_key(key):
            raise StorageError(f"invalid blob key {key!r}")
        return self.location.prefix + key

    def _call(self, what: str, key: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        """One S3 request; its failures as BlobMissing or StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.location.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _MISSING_CODES:
                raise BlobMissing(f"blob {key} is missing") from exc
            raise StorageError(f"object store refused to {what}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"object store unreachable ({what}): {exc}") from exc

    def _retried(self, what: str, key: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """:meth:`_call`, tried again with backoff after botocore gave up (multipart parts)."""
        for attempt in range(2):
            try:
                return self._call(what, key, fn, **kwargs)
            except BlobMissing:
                raise
            except StorageError:
                if attempt:
                    raise
                LOGGER.warning("S3 %s of %s failed, trying again", what, key)
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ writing

    def new_key(self) -> str:
        return new_blob_key()

    def put(
        self, key: str, data: bytes, sha256: str | None = None, *, durable: bool = True
    ) -> BlobInfo:
        view = memoryview(data)
        if len(view) > self.part_size:
            return self._multipart(key, _slices(view, self.part_size))
        digest = hashlib.sha256(view)
        self._put_object(key, bytes(view) if not isinstance(data, bytes) else data, digest.digest())
        return BlobInfo(key, len(view), digest.hexdigest())

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes | memoryview],
        *,
        durable: bool = True,
        digest: bool = True,  # the upload's checksums need it: always computed
    ) -> BlobInfo:
        return self._multipart(key, iter(chunks))

    def _put_object(self, key: str, body: bytes, digest: bytes) -> None:
        self._call(
            "store an object",
            None,
            self._client.put_object,
            Key=self._key(key),
            Body=body,
            ChecksumSHA256=base64.b64encode(digest).decode(),
            Metadata={_METADATA_DIGEST: digest.hex()},
        )

    def _multipart(self, key: str, chunks: Iterator[bytes | memoryview]) -> BlobInfo:
        """Upload the chunks' concatenation: one PUT when it fits one part, else multipart."""
        whole = hashlib.sha256()
        size = 0
        buffer = bytearray()

        def next_part() -> bytes | None:
            nonlocal size
            while len(buffer) < self.part_size:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                whole.update(chunk)
                size += len(chunk)
                buffer.extend(chunk)
            if not buffer:
                return None
            part = bytes(memoryview(buffer)[: self.part_size])  # one copy, not two
            del buffer[: self.part_size]
            return part

        first = next_part()
        second = next_part() if first is not None and len(first) == self.part_size else None
        if second is None:
            body = first or b""
            self._put_object(key, body, hashlib.sha256(body).digest())
            return BlobInfo(key, size, whole.hexdigest())
        s3key = self._key(key)
        upload = self._call(
            "start a multipart upload",
            None,
            self._client.create_multipart_upload,
            Key=s3key,
            ChecksumAlgorithm="SHA256",
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            part: bytes | None = first
            pending: bytes | None = second
            while part is not None:
                checksum = base64.b64encode(hashlib.sha256(part).digest()).decode()
                answer = self._retried(
                    "upload a part",
                    key,
                    self._client.upload_part,
                    Key=s3key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=part,
                    ChecksumSHA256=checksum,
                    ChecksumAlgorithm="SHA256",
                )
                parts.append(
                    {"PartNumber": len(parts) + 1, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
                )
                # Only the first part waits for the second (to know it is multipart):
                # then one part is in hand at a time.
                part, pending = pending, None
                if part is None:
                    part = next_part()
            self._retried(
                "complete a multipart upload",
                key,
                self._client.complete_multipart_upload,
                Key=s3key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Also when the source failed: no partial object may stay (nor parts billed).
            try:
                self._call(
                    "abort a multipart upload",
                    None,
                    self._client.abort_multipart_upload,
                    Key=s3key,
                    UploadId=upload_id,
                )
            except StorageError:
                LOGGER.warning("could not abort the multipart upload of %s", key)
            raise
        return BlobInfo(key, size, whole.hexdigest())

    def sync(self) -> None:
        return None  # every PUT was durable when it returned

    # ------------------------------------------------------------ reading

    def _get(self, key: str, start: int, end: int | None) -> tuple[bytes, int, dict[str, str]]:
        """Bytes ``start..end`` (inclusive; None: to the end), the object's size, its metadata."""
        wanted = f"bytes={start}-{'' if end is None else end}"
        try:
            answer = self._call(
                "read an object", key, self._client.get_object, Key=self._key(key), Range=wanted
            )
        except StorageError as exc:
            if "InvalidRange" in str(exc):  # at or past the end (also: an empty object)
                return b"", self.stat(key).size, {}
            raise
        body = answer["Body"]
        try:
            data = body.read()
        except Exception as exc:  # urllib3/botocore errors while streaming the body
            raise StorageError(f"object store connection lost reading blob {key}: {exc}") from exc
        finally:
            body.close()
        total = _total_size(answer.get("ContentRange"), len(data) + start)
        return data, total, answer.get("Metadata", {})

    def open(self, key: str) -> BinaryIO:
        head, size, _meta = self._get(key, 0, READ_BLOCK - 1)
        # Not an io.BufferedReader: pydicom takes one for a local file and
        # would open its `name` again to read deferred values.
        return cast(BinaryIO, _RangedReader(self, key, size, head))

    def read(self, key: str) -> bytes:
        data, _size, meta = self._get(key, 0, None)
        expected = meta.get(_METADATA_DIGEST)
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumMismatch(f"blob {key} does not match its recorded SHA-256")
        return data

    def open_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range {offset}+{length}")
        if length == 0:
            self.stat(key)  # BlobMissing when absent, as for any read
            return b""
        return self._get(key, offset, offset + length - 1)[0]

    def local_path(self, key: str) -> str | None:
        return None

    # ------------------------------------------------------------ the rest

    def delete(self, key: str) -> None:
        self._call("delete an object", None, self._client.delete_object, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobMissing:
            return False
        return True

    def stat(self, key: str) -> BlobStat:
        head = self._call("look up an object", key, self._client.head_object, Key=self._key(key))
        return BlobStat(
            size=int(head["ContentLength"]),
            modified=head["LastModified"].timestamp(),
            sha256=head.get("Metadata", {}).get(_METADATA_DIGEST),
        )

    def iter_keys(self) -> Iterator[str]:
        for key, _stat in self.iter_blobs():
            yield key

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        """Every complete blob with its size and time (one LIST page per 1000; no digest)."""
        token: str | None = None
        prefix = self.location.prefix
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                "list objects", None, self._client.list_objects_v2, Prefix=prefix, **extra
            )
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                if valid_blob_key(name):
                    yield name, BlobStat(int(item["Size"]), item["LastModified"].timestamp(), None)
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def usable(self) -> bool:
        try:
            self._call("reach the bucket", None, self._probe.head_bucket)
        except StorageError:
            return False
        return True

    def create_bucket(self) -> None:
        """Create the bucket (tests and first setup); an existing one of ours is fine."""
        from botocore.exceptions import ClientError

        try:
            self._client.create_bucket(Bucket=self.location.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise StorageError(f"cannot create bucket {self.location.bucket}: {exc}") from exc


def _slices(view: memoryview, size: int) -> Iterator[memoryview]:
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _total_size(content_range: str | None, fallback: int) -> int:
    """The object's size from ``Content-Range: bytes a-b/TOTAL``."""
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return fallback


class _RangedReader(io.RawIOBase):
    """A seekable read-only file over ranged GETs, with one block cached; ``read(n)``
    returns ``n`` bytes unless at the end, as a buffered file does.

    The first block comes with the open (it also tells that the object
    exists and its size); sequential reads then need a GET per doubling
    block, and a seek (a frame, a bulk data value) costs one GET of what is
    read (at least a block).
    """

    def __init__(self, store: S3BlobStore, key: str, size: int, head: bytes) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._pos = 0
        self._cache_start = 0
        self._cache = head
        self._window = READ_BLOCK

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes (all that is left for None or < 0), fewer only at the end."""
        left = self._size - self._pos
        wanted = left if size is None or size < 0 else min(size, left)
        out = bytearray(max(0, wanted))
        view = memoryview(out)
        got = 0
        while got < wanted:
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        del out[got:]
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(out):
            return 0
        within = self._pos - self._cache_start
        if not 0 <= within < len(self._cache):
            # Reading on where the last block ended: fetch twice as much each time (a
            # whole object in a few GETs); after a seek start small again (a frame).
            sequential = self._pos == self._cache_start + len(self._cache)
            self._window = min(self._window * 2, MAX_READ_BLOCK) if sequential else READ_BLOCK
            length = min(max(len(out), self._window), self._size - self._pos)
            self._cache = self._store.open_range(self._key, self._pos, length)
            self._cache_start, within = self._pos, 0
            if not self._cache:
                return 0
        n = min(len(out), len(self._cache) - within)
        out[:n] = self._cache[within : within + n]
        self._pos += n
        return n

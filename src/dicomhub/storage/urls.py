"""Blob stores named by URL: ``file://PATH`` (a local folder) or ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dicomhub.errors import ConfigurationError
from dicomhub.storage.base import BlobStore
from dicomhub.storage.fallback import FallbackBlobStore
from dicomhub.storage.filesystem import FileSystemBlobStore

__all__ = ["open_blob_store", "open_blob_stores"]


def open_blob_store(
    url: str,
    *,
    s3_endpoint_url: str = "",
    s3_region: str = "",
    s3_read_timeout: float | None = None,
    s3_max_attempts: int | None = None,
) -> BlobStore:
    """The store at ``url`` (the S3 timeout and attempts: the store's defaults when None).

    Raises
    ------
    ConfigurationError
        For a URL of another scheme or without a path/bucket.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced "[" (urlsplit reads it as an IPv6 host)
        raise ConfigurationError(f"storage URL {url!r} is not a URL ({exc})") from exc
    scheme = parts.scheme
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError(f"storage URL {url!r} is not of the form file:///absolute/path")
        return FileSystemBlobStore(Path(unquote(parts.path)))
    if scheme == "s3":
        from dicomhub.storage.s3 import S3BlobStore, parse_s3_url

        tuning: dict[str, Any] = {}
        if s3_read_timeout is not None:
            tuning["read_timeout"] = s3_read_timeout
        if s3_max_attempts is not None:
            tuning["max_attempts"] = s3_max_attempts
        return S3BlobStore(
            parse_s3_url(url), endpoint_url=s3_endpoint_url or None, region=s3_region or None, **tuning
        )
    raise ConfigurationError(f"storage URL {url!r}: use file:///path or s3://bucket/prefix")


def open_blob_stores(
    url: str,
    fallback_url: str = "",
    *,
    s3_endpoint_url: str = "",
    s3_region: str = "",
    s3_read_timeout: float | None = None,
    s3_max_attempts: int | None = None,
) -> BlobStore:
    """The store at ``url``, reading also from ``fallback_url`` when given (during a migration)."""
    s3: dict[str, Any] = {
        "s3_endpoint_url": s3_endpoint_url,
        "s3_region": s3_region,
        "s3_read_timeout": s3_read_timeout,
        "s3_max_attempts": s3_max_attempts,
    }
    primary = open_blob_store(url, **s3)
    if not fallback_url or fallback_url == url:
        return primary
    fallback = open_blob_store(fallback_url, **s3)
    return FallbackBlobStore(primary, fallback)

"""The per-project key: keyed, deterministic replacement values (UIDs, pseudonyms, date offsets).

The project key is HKDF-SHA256 (RFC 5869) of the secret with the project name
as context, so two projects under one secret give unrelated outputs and a
project key reveals nothing of the secret. Every replacement is an HMAC-SHA256
under that key: the same input and project always give the same output, and
nobody without the secret can compute or link them (an unkeyed hash of a UID
could be recomputed by anyone holding the original).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from dicomhub.errors import DeidentificationError

__all__ = ["MIN_SECRET_BYTES", "SECRET_ENV", "ProjectKey", "load_secret"]

SECRET_ENV = "DICOMHUB_DEID_SECRET"
MIN_SECRET_BYTES = 16
_SALT = b"dicomhub-deid-v1"
# Date offsets are whole days back in time, between 1 day and about 10 years.
_MAX_OFFSET_DAYS = 3650


def _hkdf_sha256(secret: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(_SALT, secret, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


class ProjectKey:
    """The key of one de-identification project; repr/str never show key material."""

    __slots__ = ("_key", "project")

    def __init__(self, key: bytes, project: str) -> None:
        self._key = key
        self.project = project

    @classmethod
    def derive(cls, secret: bytes, project: str) -> ProjectKey:
        if len(secret) < MIN_SECRET_BYTES:
            raise DeidentificationError(
                f"the de-identification secret must be at least {MIN_SECRET_BYTES} bytes"
            )
        if not project or not project.strip():
            raise DeidentificationError("a de-identification project needs a name")
        return cls(_hkdf_sha256(secret, b"project\x00" + project.encode("utf-8")), project)

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, kind.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of a UID: ``2.25.`` and a 128-bit keyed digest (at most 44 characters)."""
        # 2.25 is the root of UUID-derived UIDs (PS3.5 B.2); 128 bits of HMAC
        # output are as collision-resistant as a random UUID.
        return "2.25." + str(int.from_bytes(self._mac("uid", original.strip("\x00 "))[:16], "big"))

    def pseudonym(self, kind: str, value: str) -> str:
        """A 16-character keyed token for an identifier (patient ID, name, ...) of the given kind."""
        return base64.b32encode(self._mac(kind, value)[:10]).decode("ascii")

    def date_offset_days(self, patient_id: str) -> int:
        """The whole-day shift (negative: back in time) of every date of one patient."""
        n = int.from_bytes(self._mac("date-offset", patient_id)[:8], "big")
        return -(1 + n % _MAX_OFFSET_DAYS)

    @property
    def fingerprint(self) -> str:
        """A short keyed digest, safe to store, that changes when the secret or project does."""
        return self._mac("fingerprint", self.project).hex()[:16]

    def __repr__(self) -> str:
        return f"ProjectKey(project={self.project!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Process pools pickle the key to their workers; the bytes never leave memory otherwise.
        return (ProjectKey, (self._key, self.project))


def load_secret(key_file: Path | None, environ: Mapping[str, str] | None = None) -> bytes:
    """The de-identification secret: ``DICOMHUB_DEID_SECRET`` first, else the key file.

    Never from a command-line argument (it would show in the process list and
    shell history).
    """
    env = os.environ if environ is None else environ
    value = env.get(SECRET_ENV, "")
    if value:
        secret = value.encode("utf-8")
        source = f"${SECRET_ENV}"
    elif key_file is not None:
        try:
            secret = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise DeidentificationError(
                f"cannot read the de-identification key file {key_file}: {exc.strerror}"
            ) from exc
        source = f"key file {key_file}"
    else:
        raise DeidentificationError(
            f"no de-identification secret: set {SECRET_ENV} or name a key file "
            "(deid_key_file in the configuration)"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise DeidentificationError(
            f"the de-identification secret from {source} is shorter than {MIN_SECRET_BYTES} bytes"
        )
    return secret

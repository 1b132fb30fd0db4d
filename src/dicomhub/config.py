"""Settings: one frozen value built once from flags, DICOMHUB_* variables and a TOML file.

Precedence, highest first: command-line flag, environment variable, config
file, default. Nothing else in dicomhub reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dicomhub.errors import ConfigurationError
from dicomhub.model.peer import Peer
from dicomhub.model.policy import (
    CompressionRule,
    DecodeCheckMode,
    DuplicatePolicy,
    ValidationPolicy,
    parse_compression_rule,
)
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.peerconfig import parse_peers

__all__ = [
    "DeidExport",
    "MaskRegion",
    "RemoteAE",
    "Settings",
    "anonymous_network_refusal",
    "load_settings",
    "parse_deid_export",
    "parse_mask_region",
    "parse_remote_ae",
    "tls_server_context",
]


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """An application entity dicomhub may open associations to."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DeidExport:
    """A destination that receives only de-identified objects: C-MOVE to ``ae_title``
    sends them through the project's profile with these option words."""

    ae_title: str
    project: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MaskRegion:
    """A rectangle of pixels (columns from ``x``, rows from ``y``) blanked in objects
    that may carry burned-in annotation, under the ``mask`` policy."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one dicomhub process."""

    data_dir: Path = Path("./dicomhub-data")
    aet: str = "DICOMHUB"
    dimse_port: int = 11112
    http_port: int = 8042
    host: str = "127.0.0.1"
    remote_aes: tuple[RemoteAE, ...] = ()
    # [[peer]] tables of the config file (dicomhub.peerconfig); see docs/peers.md
    peers: tuple[Peer, ...] = ()
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    known_aes_only: bool = False
    max_associations: int = 64
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    maximum_pdu_size: int = 262144
    workers: int = 0  # 0: one DIMSE worker process per CPU core
    qido_default_limit: int = 1000  # QIDO-RS results when no limit is asked for
    qido_max_limit: int = 10000  # the largest limit a QIDO-RS request may ask for
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the HTTP API ("*" for any)
    # The DICOMweb root as clients reach it (e.g. https://pacs.example.org/dicom-web behind a
    # reverse proxy), for absolute BulkDataURI and RetrieveURL values; empty: from each request.
    public_base_url: str = ""
    database_url: str = ""  # empty: SQLite in the data dir
    # Where blobs live: file:///path or s3://bucket/prefix (empty: data_dir/blobs).
    storage_url: str = ""
    # Read also from here when a blob is not in storage_url: the old store
    # while `dicomhub migrate-storage` moves blobs over.
    storage_fallback_url: str = ""
    # S3 endpoint and region when not from AWS_ENDPOINT_URL / AWS_REGION / ~/.aws.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # Compression at rest: the first matching rule decides (none: keep as received).
    compress: tuple[CompressionRule, ...] = ()
    allow_lossy_compression: bool = False  # a lossy `compress` rule needs this
    decode_check: DecodeCheckMode = DecodeCheckMode.SAMPLE
    # IOD validation of incoming objects: record findings (default), answer with
    # a warning status, or refuse; per calling AE overrides (AET, policy).
    validation_policy: ValidationPolicy = ValidationPolicy.RECORD
    validation_ae: tuple[tuple[str, ValidationPolicy], ...] = ()
    # De-identification on the server: the key file holding the projects' secret
    # (else DICOMHUB_DEID_SECRET), the destinations that get de-identified copies,
    # and what happens to objects that may carry burned-in annotation.
    deid_key_file: str = ""
    deid_export: tuple[DeidExport, ...] = ()
    deid_burned_in: str = "refuse"  # refuse, mask or allow
    deid_mask: tuple[MaskRegion, ...] = ()
    # Access control (docs/access-control.md): off, every caller may do
    # everything, which is allowed only when listening on loopback addresses.
    auth_required: bool = False
    allow_anonymous_network: bool = False  # the explicit override of that rule
    # OpenID Connect bearer tokens: the issuer, its JWKS (URL or file), the
    # audience this archive expects and the claim naming the principal.
    oidc_issuer: str = ""
    oidc_jwks: str = ""
    oidc_audience: str = ""
    oidc_principal_claim: str = "sub"
    # Without oidc_jwks the keys are found through the issuer's discovery document
    # (https only), trusting the CA bundle oidc_ca_file (empty: the system's).
    oidc_ca_file: str = ""
    # Accept a token whose azp (not aud) names oidc_audience: Keycloak's clients.
    oidc_accept_azp: bool = False
    # Grants from a claim (a name or a dotted path: realm_access.roles, groups):
    # "VALUE=ROLE" or "VALUE=ROLE@SCOPE" entries, or a TOML table VALUE = "ROLE@SCOPE".
    oidc_role_claim: str = ""
    oidc_roles: tuple[str, ...] = ()
    # Labels given at ingest: "LABEL=calling_ae:AET" or "LABEL=Keyword:value".
    label_rules: tuple[str, ...] = ()
    # Storage SOP classes beyond the standard's (dicomhub.model.sopclasses): private
    # SOP Class UIDs to accept, and whether to accept any SOP class the standard
    # does not register (off: an unknown class is refused at negotiation).
    accept_sop_classes: tuple[str, ...] = ()
    accept_unknown_sop_classes: bool = False
    # Transport security (docs/transport-security.md): one certificate and key
    # for DICOM TLS and HTTPS; a CA bundle to verify client certificates with.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify_client: bool = False  # require a client certificate signed by tls_ca
    dimse_tls_port: int = 0  # 0: no DICOM TLS port
    https: bool = False  # the HTTP port speaks HTTPS
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_store_url(self) -> str:
        """``storage_url``, or the ``file://`` URL of the blob folder in the data dir."""
        return self.storage_url or self.blob_dir.resolve().as_uri()

    @property
    def spool_dir(self) -> Path:
        """Temporary files (large received objects, transcoded copies), beside the blobs."""
        return self.data_dir / "tmp"

    def deid_export_for(self, ae_title: str) -> DeidExport | None:
        for profile in self.deid_export:
            if profile.ae_title == ae_title.strip():
                return profile
        return None

    def remote_ae(self, ae_title: str) -> RemoteAE | None:
        for remote in self.remote_aes:
            if remote.ae_title == ae_title.strip():
                return remote
        return None

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


def parse_remote_ae(text: str) -> RemoteAE:
    """Parse ``AET=HOST:PORT``."""
    try:
        aet, address = text.split("=", 1)
        host, port = address.rsplit(":", 1)
        remote = RemoteAE(aet.strip(), host.strip().strip("[]"), int(port))
    except ValueError as exc:
        raise ConfigurationError(f"remote AE {text!r} is not of the form AET=HOST:PORT") from exc
    if not remote.ae_title or len(remote.ae_title) > 16 or not 0 < remote.port < 65536:
        raise ConfigurationError(
            f"remote AE {text!r}: AE title of 1-16 characters and a valid port"
        )
    return remote


def parse_deid_export(text: str) -> DeidExport:
    """Parse ``AET=PROJECT[:option,option...]``."""
    aet, sep, rest = text.partition("=")
    project, _, options = rest.partition(":")
    aet, project = aet.strip(), project.strip()
    if not sep or not aet or len(aet) > 16 or not project or len(project) > 64:
        raise ConfigurationError(
            f"de-identified export {text!r} is not of the form AET=PROJECT[:option,option...]"
        )
    return DeidExport(aet, project, tuple(o.strip() for o in options.split(",") if o.strip()))


def parse_mask_region(text: str) -> MaskRegion:
    """Parse ``X,Y,WIDTH,HEIGHT`` (pixels)."""
    try:
        x, y, width, height = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigurationError(f"mask region {text!r} is not X,Y,WIDTH,HEIGHT") from exc
    if min(x, y) < 0 or min(width, height) < 1:
        raise ConfigurationError(f"mask region {text!r}: X and Y from 0, WIDTH and HEIGHT from 1")
    return MaskRegion(x, y, width, height)


def _listed(value: Any, separator: str = ",") -> list[Any]:
    return [i for i in (value.split(separator) if isinstance(value, str) else list(value)) if i]


def _coerce(name: str, value: Any) -> Any:
    default = Settings.__dataclass_fields__[name].default
    try:
        if name == "remote_aes":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                parse_remote_ae(i)
                if isinstance(i, str)
                else parse_remote_ae(f"{i['aet']}={i['host']}:{i['port']}")
                for i in items
                if i
            )
        if name == "peers":
            return parse_peers(value)
        if name == "data_dir":
            return Path(value)
        if name in ("cors_origins", "label_rules", "accept_sop_classes"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if name == "duplicate_policy":
            return DuplicatePolicy(str(value).lower())
        if name == "decode_check":
            return DecodeCheckMode(str(value).lower())
        if name == "validation_policy":
            return ValidationPolicy(str(value).lower())
        if name == "validation_ae":
            items = value.split(",") if isinstance(value, str) else list(value)
            pairs = []
            for item in items:
                if isinstance(item, tuple):
                    pairs.append(item)
                    continue
                aet, sep, policy = str(item).partition("=")
                if not sep or not aet.strip() or len(aet.strip()) > 16:
                    raise ValueError(f"{item!r} is not AET=POLICY")
                pairs.append((aet.strip(), ValidationPolicy(policy.strip().lower())))
            return tuple(pairs)
        if name == "deid_export":
            # Entries hold commas of their own (option lists): ";" between them.
            return tuple(
                i if isinstance(i, DeidExport) else parse_deid_export(str(i)) for i in _listed(value, ";")
            )
        if name == "deid_mask":
            return tuple(
                i if isinstance(i, MaskRegion) else parse_mask_region(str(i)) for i in _listed(value, ";")
            )
        if name == "oidc_roles":
            return _oidc_roles(value)
        if name == "deid_burned_in":
            policy = str(value).strip().lower()
            if policy not in ("refuse", "mask", "allow"):
                raise ValueError(policy)
            return policy
        if name == "compress":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                i if isinstance(i, CompressionRule) else parse_compression_rule(str(i))
                for i in items
                if str(i).strip()
            )
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            return str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"invalid value for {name}: {value!r}") from exc


def _oidc_roles(value: Any) -> tuple[str, ...]:
    """``VALUE=ROLE[@SCOPE]`` entries from a comma-separated string, a list of them, or a
    TOML table of VALUE = "ROLE@SCOPE" (or a list of those); checked in bootstrap."""
    if isinstance(value, Mapping):
        entries = []
        for claim_value, grants in value.items():
            for grant in [grants] if isinstance(grants, str) else list(grants):
                entries.append(f"{claim_value}={grant}")
        return tuple(entries)
    return tuple(str(i).strip() for i in _listed(value) if str(i).strip())


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, ``DICOMHUB_*`` variables and flags.

    Raises
    ------
    ConfigurationError
        For an unreadable file, an unknown key or an invalid value.
    """
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)} - {"extra"}
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("DICOMHUB_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read config file {config_file}: {exc}") from exc
        section = data.get("dicomhub", data)
        if section is not data and "peer" in data:
            section = {**section, "peer": data["peer"]}  # [[peer]] beside a [dicomhub] table
        for key, value in section.items():
            name = key.replace("-", "_")
            if name == "remote_ae":
                name = "remote_aes"
            elif name == "peer":
                name = "peers"
            if name not in names:
                raise ConfigurationError(f"unknown setting {key!r} in {config_file}")
            values[name] = _coerce(name, value)
    for name in names:
        env = environ.get("DICOMHUB_" + name.upper())
        if env is None and name == "remote_aes":
            env = environ.get("DICOMHUB_REMOTE_AE")
        if env is not None and env != "":
            values[name] = _coerce(name, env)
    for name, value in (overrides or {}).items():
        if value is None or (name == "remote_aes" and not value):
            continue
        values[name] = _coerce(name, value)
    settings = replace(Settings(), **values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if not s.aet or len(s.aet) > 16:
        raise ConfigurationError("the AE title must have 1 to 16 characters")
    for port in (s.dimse_port, s.http_port):
        if not 0 <= port < 65536:
            raise ConfigurationError(f"invalid port {port}")
    if s.max_associations < 1:
        raise ConfigurationError("max_associations must be at least 1")
    _validate_compression(s)
    # A typo in an accepted SOP class UID must stop `serve`, not refuse the modality later.
    StorableSOPClasses.from_settings(s.accept_sop_classes, s.accept_unknown_sop_classes)
    if s.deid_burned_in == "mask" and not s.deid_mask:
        raise ConfigurationError("deid_burned_in mask needs at least one region (deid_mask X,Y,WIDTH,HEIGHT)")
    _validate_deid_export(s)
    _validate_tls(s)
    _validate_public_base_url(s)


def _validate_public_base_url(s: Settings) -> None:
    # Checked at start-up: a typo here would otherwise show only as broken links in viewers.
    if not s.public_base_url:
        return
    parts = urlsplit(s.public_base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"public_base_url {s.public_base_url!r} must be an absolute http(s) URL without "
            "query or fragment, e.g. https://pacs.example.org/dicomweb"
        )


def _validate_tls(s: Settings) -> None:
    if not 0 <= s.dimse_tls_port < 65536:
        raise ConfigurationError(f"invalid port {s.dimse_tls_port}")
    if (s.dimse_tls_port or s.https) and not (s.tls_cert and s.tls_key):
        raise ConfigurationError("DICOM TLS and HTTPS need a certificate and its key (--tls-cert, --tls-key)")
    if s.tls_verify_client and not s.tls_ca:
        raise ConfigurationError("--tls-verify-client needs the CA bundle to verify with (--tls-ca)")


def _validate_deid_export(s: Settings) -> None:
    # A typo in an option word must stop `serve`, not the first C-MOVE to that peer.
    from dicomhub.deid import Options
    from dicomhub.errors import DeidentificationError

    for profile in s.deid_export:
        try:
            Options.parse(profile.options)
        except DeidentificationError as exc:
            raise ConfigurationError(f"de-identified export to {profile.ae_title}: {exc}") from exc


def _validate_compression(s: Settings) -> None:
    # Resolved here so that a typo or a lossy rule stops `serve` at start-up,
    # not at the first matching object.
    from dicomhub.codec import transfer_syntax
    from dicomhub.errors import DicomhubError

    for rule in s.compress:
        try:
            syntax = transfer_syntax(rule.transfer_syntax)
        except DicomhubError as exc:
            raise ConfigurationError(f"compression rule {rule}: {exc}") from exc
        if not syntax.can_encode:
            raise ConfigurationError(
                f"compression rule {rule}: {syntax.title} cannot be encoded in this install"
            )
        if syntax.lossy and not s.allow_lossy_compression:
            raise ConfigurationError(
                f"compression rule {rule}: {syntax.title} is lossy; "
                "set allow_lossy_compression (--allow-lossy-compression) to store lossy copies"
            )


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback address.

    "" and 0.0.0.0 / :: (all interfaces) are not; a name counts as loopback
    only when every address it resolves to is one (an unresolvable name is not).
    """
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def anonymous_network_refusal(settings: Settings) -> str | None:
    """Why ``serve`` must not start with these settings, or None.

    The safe default: without access control every caller may read and
    change everything, which is acceptable only for callers on this machine.
    """
    if settings.auth_required or settings.allow_anonymous_network or _is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host or 'every address'} without authentication: "
        "anyone who can reach it could read and change every study. Turn access control on "
        "with --auth (auth_required), listen on 127.0.0.1, or, knowingly, pass "
        "--allow-anonymous-network (allow_anonymous_network)"
    )


# The cipher suites of the BCP 195 (RFC 9325) TLS 1.2 profile that DICOM PS3.15
# B.9 ("BCP 195 RFC-8996 TLS Profile") points to: forward secrecy and AEAD only.
# TLS 1.3 suites are OpenSSL's defaults, all of which qualify.
_BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


def tls_server_context(settings: Settings) -> ssl.SSLContext:
    """The server side of DICOM TLS and HTTPS: TLS 1.2 or later, BCP 195 ciphers,
    and with ``tls_verify_client`` a client certificate chaining to ``tls_ca``.

    Raises
    ------
    ConfigurationError
        When the certificate, key or CA bundle cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca:
            context.load_verify_locations(cafile=settings.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate, key or CA bundle: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_verify_client else (
        ssl.CERT_OPTIONAL if settings.tls_ca else ssl.CERT_NONE
    )
    return context

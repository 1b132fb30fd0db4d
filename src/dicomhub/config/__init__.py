"""Settings: one frozen value built once from flags, DICOMHUB_* variables and a TOML file.

Precedence, highest first: command-line flag, environment variable, config
file, default. Nothing else in dicomhub reads the environment.

The typed model is the :class:`Settings` dataclass itself. Each field's
annotation decides how a value is read (a boolean is exactly true/false, 1/0,
yes/no or on/off in any case; an Enum or Literal lists its allowed values; a
``tuple[X, ...]`` comes from a TOML array or a comma-separated string; ...),
the comment above or after the field is its documentation, and
:func:`setting_specs` turns the fields into the reference
(``dicomhub config reference``, docs/configuration.md). Adding a setting is one
commented field line; a new item type of a list needs a row in
:data:`_ITEM_FORMS`, a range a row in :data:`_BOUNDS`, a cross-field check a
row in :data:`dicomhub.config.checks.CHECKS`.

Every value keeps its source (``default``, ``file PATH:LINE``, ``env VAR``,
``flag --x``), and every problem, not only the first, is reported with it:
:class:`InvalidSettings`. A key in the file or a ``DICOMHUB_`` variable that
names no setting is an error with the closest known name suggested (except the
few variables of :data:`NON_SETTING_VARIABLES`).

Why not pydantic-settings: pydantic is not a dependency of dicomhub (only of
test tools), and it would still leave most of this to write: its TOML source
has no line numbers, its sources do not record where each value came from, its
environment source ignores unknown variables, its booleans accept more words
(``t``, ``y``), lists in variables are JSON rather than comma-separated, and
the parsers of AE titles, compression rules and regions would be validators
anyway. Keeping the frozen dataclass as the model also keeps every user of
:class:`Settings` (and ``dataclasses.replace`` on it) unchanged.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import io
import os
import re
import tokenize
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args, get_origin, get_type_hints

from dicomhub.errors import ConfigurationError
from dicomhub.model.hanging import HangingProtocol, parse_hanging_protocols
from dicomhub.model.peer import Peer
from dicomhub.model.plugins import PluginConfig, parse_plugin_name, plugins_table
from dicomhub.model.policy import (
    CompressionRule,
    DecodeCheckMode,
    DuplicatePolicy,
    ValidationPolicy,
    parse_compression_rule,
)
from dicomhub.model.retention import Duration, RetentionRule, parse_duration, parse_retention_rules
from dicomhub.model.routing import Route, parse_routes
from dicomhub.model.webhooks import Webhook, parse_webhooks
from dicomhub.peerconfig import parse_peers
from dicomhub.printerconfig import Printer, printer_item, printers_table

__all__ = [
    "NON_SETTING_VARIABLES",
    "DeidExport",
    "InvalidSettings",
    "LoadedSettings",
    "MaskRegion",
    "Problem",
    "RemoteAE",
    "SettingSpec",
    "Settings",
    "Source",
    "display_value",
    "load_settings",
    "load_settings_with_sources",
    "parse_deid_export",
    "parse_mask_region",
    "parse_remote_ae",
    "setting_specs",
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
    # DICOM printers `dicomhub print` and POST /print/requests may print to: [printers.NAME]
    # tables of aet, host, port, color, dpi (docs/printing.md).
    printers: tuple[Printer, ...] = ()
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    known_aes_only: bool = False
    max_associations: int = 64
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    # Seconds an HTTP client has to send a request's whole head (request line and
    # header fields), from the connection opening or from the previous response.
    http_header_timeout: float = 30.0
    # An HTTP request body must deliver http_body_min_rate bytes per second, judged
    # over every http_body_timeout seconds; a slower client is disconnected.
    http_body_timeout: float = 60.0
    # The slowest HTTP request body accepted, bytes per second (0: only a stopped body
    # is disconnected, after http_body_timeout seconds without a byte).
    http_body_min_rate: int = 1024
    maximum_pdu_size: int = 262144  # the largest PDU we receive, in bytes (0: unlimited)
    workers: int = 0  # 0: one DIMSE worker process per CPU core
    qido_default_limit: int = 1000  # QIDO-RS results when no limit is asked for
    qido_max_limit: int = 10000  # the largest limit a QIDO-RS request may ask for
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the HTTP API ("*" for any)
    # The DICOMweb root as clients reach it (e.g. https://pacs.example.org/dicom-web behind a
    # reverse proxy), for absolute BulkDataURI and RetrieveURL values; empty: from each request.
    public_base_url: str = ""
    database_url: str = ""  # empty: SQLite in the data dir
    # SQLite: seconds a write waits for another process's lock on the index before the
    # store fails (C-STORE 0xA701, STOW-RS 503) rather than hanging the sender.
    database_busy_timeout: float = 60.0
    # Where blobs live: file:///path or s3://bucket/prefix (empty: data_dir/blobs).
    storage_url: str = ""
    # Read also from here when a blob is not in storage_url: the old store
    # while `dicomhub migrate-storage` moves blobs over.
    storage_fallback_url: str = ""
    # S3 endpoint and region when not from AWS_ENDPOINT_URL / AWS_REGION / ~/.aws.
    s3_endpoint_url: str = ""
    s3_region: str = ""  # the S3 region (empty: AWS_REGION or ~/.aws/config)
    # Seconds to wait for an S3 response before the request is retried (botocore's
    # standard retries, with backoff) and, after s3_max_attempts, fails the store.
    s3_read_timeout: float = 60.0
    s3_max_attempts: int = 4  # tries of one S3 request in all (1: no retry)
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
    deid_burned_in: Literal["refuse", "mask", "allow"] = "refuse"
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
    # Log-in from the web UI through the issuer (authorization code flow with PKCE):
    # the UI's public client id at the provider; empty: the UI offers no such log-in.
    oidc_ui_client_id: str = ""
    oidc_ui_provider_name: str = ""
    oidc_ui_scope: str = "openid"
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
    hl7_port: int = 0  # HL7 v2 over MLLP: orders and patients in (docs/orders.md); 0: no listener
    # host:port of the order system's MLLP listener that gets an ORM^O01 status message
    # whenever an MPPS moves an order (docs/orders.md); "": none sent
    mpps_hl7_destination: str = ""
    # Resolution of the films printed to the archive's Print SCP, in pixels per inch
    # of the Film Size ID (14INX17IN at 150: 2100 x 2550 pixels; docs/printing.md).
    print_dpi: int = 150
    # Seconds without a new instance after which a study or series is announced
    # stable (a "stable" change in the change feed; docs/changes.md).
    stable_age: float = 60.0
    # [[webhook]] tables of the config file (dicomhub.model.webhooks); see docs/changes.md
    webhooks: tuple[Webhook, ...] = ()
    # [[route]] tables of the config file (dicomhub.model.routing): forward what is
    # stored, or studies once stable, to peers or folders; see docs/routing.md
    routes: tuple[Route, ...] = ()
    # Seconds a node's claim on the routing items it is sending lasts without renewal
    # (renewed after each send): when a node dies, another takes its items over after
    # this long. Keep it well above one send's time, or a slow send may go twice.
    route_lease: float = 120.0
    # Python plugins to load from the dicomhub.plugins entry points: [plugins] enabled = [...]
    # with a [plugins.NAME] table of each one's settings; none runs unless listed (docs/plugins.md)
    plugins: tuple[PluginConfig, ...] = ()
    # How long a deleted study, series or instance stays in the trash, restorable, before it
    # is purged for good (docs/trash-and-retention.md); 0: a delete removes it for good at once.
    trash_keep: Duration = Duration(7 * 86400)
    # [[retention]] tables of the config file: studies that go to the trash once they are
    # older than a duration (dicomhub.model.retention); see docs/trash-and-retention.md
    retention: tuple[RetentionRule, ...] = ()
    # [[hanging_protocol]] tables of the config file: how the web UI's study viewer lays a
    # study out (name, modalities, rows, columns, viewports, priors), tried in order before
    # the built-in ones for CT, MR, CR/DX and mammography; see docs/ui.md
    hanging_protocols: tuple[HangingProtocol, ...] = ()
    # How often the background process applies the [[retention]] rules; 0: only
    # `dicomhub retention run` applies them.
    retention_interval: Duration = Duration(86400)
    # An operating-system printer each print job's PDF is handed to (docs/printing.md):
    # the command and its arguments, run without a shell with the PDF on its standard
    # input (["lp", "-d", "film"] for a CUPS queue); empty: none.
    print_os_command: tuple[str, ...] = ()
    # Keep each print job's PDF as an Encapsulated PDF instance too (docs/printing.md),
    # in the study of the printed images when they name one.
    print_archive: bool = False
    # The study archived prints go to when their images name none (a study kept for
    # prints); empty: one study per calling AE title.
    print_archive_study_uid: str = ""
    # The Issuer of Patient ID the archive's own Patient IDs belong to: patient
    # updates and merges with this issuer (or none) reach the stored studies.
    patient_id_issuer: str = ""
    https: bool = False  # the HTTP port speaks HTTPS
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"  # serve's log level
    # Operations (docs/operations.md): the log line format, the HTTP access log,
    # and the syslog collector that receives the audit messages (IHE ATNA).
    log_format: Literal["text", "json"] = "text"  # text or json (one object per line)
    access_log: bool = True
    audit_syslog: str = ""  # tls://host:6514, tcp://host:601 or udp://host:514; "" = none
    audit_syslog_ca: str = ""  # PEM CA bundle the collector's certificate must chain to
    audit_syslog_cert: str = ""  # this node's certificate for the collector (mutual TLS)
    audit_syslog_key: str = ""  # the private key of audit_syslog_cert
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


# ------------------------------------------------------------------ the model over the dataclass
#
# Every setting is one field of Settings; its annotation decides how a text (a
# variable, a flag) or a TOML value becomes the field's value, and which values
# are allowed. The tables below only add what an annotation cannot say: numeric
# ranges, how one item of a list is written, and other names of a setting.

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

# Inclusive ranges (None: unbounded), checked where each value is read so that the
# error names the value's source.
_BOUNDS: dict[str, tuple[int | None, int | None]] = {
    "dimse_port": (0, 65535),
    "http_port": (0, 65535),
    "dimse_tls_port": (0, 65535),
    "hl7_port": (0, 65535),
    "max_associations": (1, None),
    "http_body_min_rate": (0, None),
    "s3_max_attempts": (1, 20),
    "print_dpi": (25, 600),
    "stable_age": (1, 86400),
    "route_lease": (1, 86400),
}

# Other names of a setting in the file and the environment (the repeatable flag's singular).
_ALIASES: dict[str, str] = {
    "remote_ae": "remote_aes",
    "peer": "peers",
    "webhook": "webhooks",
    "route": "routes",
    "hanging_protocol": "hanging_protocols",
}

#: ``DICOMHUB_`` variables that are not settings, and what reads them. Any other
#: ``DICOMHUB_`` variable that names no setting is an error (a typo would
#: otherwise be ignored silently).
NON_SETTING_VARIABLES: Mapping[str, str] = MappingProxyType(
    {
        "DICOMHUB_CONFIG": "the configuration file when --config is not given",
        "DICOMHUB_DEID_SECRET": "the de-identification secret (kept out of the settings, never printed)",
        "DICOMHUB_TEST_BACKEND": "the test suite's index and blob store (tests/backends.py)",
    }
)


def _remote_ae_item(item: Any) -> RemoteAE:
    if isinstance(item, RemoteAE):
        return item
    if isinstance(item, Mapping):
        if set(item) != {"aet", "host", "port"}:
            raise ConfigurationError(f"remote AE table {dict(item)!r} must have exactly aet, host and port")
        return parse_remote_ae(f"{item['aet']}={item['host']}:{item['port']}")
    return parse_remote_ae(_text(item))


def _validation_ae_item(item: Any) -> tuple[str, ValidationPolicy]:
    if isinstance(item, tuple):
        return (str(item[0]), ValidationPolicy(item[1]))
    aet, sep, policy = _text(item).partition("=")
    allowed = ", ".join(p.value for p in ValidationPolicy)
    try:
        parsed = ValidationPolicy(policy.strip().lower())
    except ValueError:
        parsed = None
    if not sep or not aet.strip() or len(aet.strip()) > 16 or parsed is None:
        raise ConfigurationError(
            f"{item!r} is not AET=POLICY (AE title of 1-16 characters; POLICY: {allowed})"
        )
    return (aet.strip(), parsed)


def _typed_or(kind: type, parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def item(value: Any) -> Any:
        return value if isinstance(value, kind) else parse(_text(value))

    return item


def _compression_item(text: str) -> CompressionRule:
    try:
        return parse_compression_rule(text)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class _ItemForm:
    """How one item of a list-valued setting is parsed and written."""

    parse: Callable[[Any], Any]
    form: str
    separator: str = ","


def _peer_item(item: Any) -> Peer:
    if isinstance(item, Peer):
        return item
    if isinstance(item, Mapping):
        return parse_peers([dict(item)])[0]
    raise ConfigurationError("peers are [[peer]] tables of the configuration file (docs/peers.md)")


def _retention_item(item: Any) -> RetentionRule:
    if isinstance(item, RetentionRule | Mapping):
        return parse_retention_rules([item])[0]
    raise ConfigurationError(
        "retention rules are [[retention]] tables of the configuration file (docs/trash-and-retention.md)"
    )


def _webhook_item(item: Any) -> Webhook:
    if isinstance(item, Webhook | Mapping):
        return parse_webhooks([item])[0]
    raise ConfigurationError("webhooks are [[webhook]] tables of the configuration file (docs/changes.md)")


def _hanging_protocol_item(item: Any) -> HangingProtocol:
    if isinstance(item, HangingProtocol | Mapping):
        return parse_hanging_protocols([item])[0]
    raise ConfigurationError(
        "hanging protocols are [[hanging_protocol]] tables of the configuration file (docs/ui.md)"
    )


def _route_item(item: Any) -> Route:
    if isinstance(item, Route | Mapping):
        return parse_routes([item])[0]
    raise ConfigurationError("routes are [[route]] tables of the configuration file (docs/routing.md)")


# Item types of tuple-valued settings other than str; a new item type needs a row here.
_ITEM_FORMS: dict[Any, _ItemForm] = {
    Peer: _ItemForm(_peer_item, "[[peer]] tables of the configuration file (docs/peers.md)"),
    Webhook: _ItemForm(_webhook_item, "[[webhook]] tables of the configuration file (docs/changes.md)"),
    PluginConfig: _ItemForm(parse_plugin_name, "plugin names (their settings: [plugins.NAME] tables)"),
    Route: _ItemForm(_route_item, "[[route]] tables of the configuration file (docs/routing.md)"),
    RetentionRule: _ItemForm(
        _retention_item, "[[retention]] tables of the configuration file (docs/trash-and-retention.md)"
    ),
    Printer: _ItemForm(printer_item, "NAME=AET@HOST:PORT[:color]"),
    HangingProtocol: _ItemForm(
        _hanging_protocol_item, "[[hanging_protocol]] tables of the configuration file (docs/ui.md)"
    ),
    RemoteAE: _ItemForm(_remote_ae_item, "AET=HOST:PORT (or, in the file, tables of aet, host, port)"),
    # Entries hold commas of their own (option lists, coordinates): ";" between them.
    DeidExport: _ItemForm(_typed_or(DeidExport, parse_deid_export), "AET=PROJECT[:OPTION,...]", ";"),
    MaskRegion: _ItemForm(_typed_or(MaskRegion, parse_mask_region), "X,Y,WIDTH,HEIGHT", ";"),
    CompressionRule: _ItemForm(_typed_or(CompressionRule, _compression_item), "KEY=SYNTAX"),
    tuple[str, ValidationPolicy]: _ItemForm(_validation_ae_item, "AET=POLICY (record, warn or reject)"),
}


def _oidc_roles_table(value: Mapping[str, Any]) -> tuple[str, ...]:
    """A TOML table of VALUE = "ROLE@SCOPE" (or a list of those) as VALUE=ROLE@SCOPE entries."""
    entries = []
    for claim_value, grants in value.items():
        if not isinstance(grants, (str, list)):
            # e.g. `http_port = 42` written below [oidc_roles]: TOML puts it in the table.
            raise ConfigurationError(
                f"oidc_roles.{claim_value}: expected \"ROLE[@SCOPE]\" or a list of them, "
                f"not {type(grants).__name__} {grants!r} (a setting below the [oidc_roles] table?)"
            )
        for grant in [grants] if isinstance(grants, str) else grants:
            entries.append(f"{claim_value}={_text(grant)}")
    return tuple(entries)


# Settings that the file may also give as a table, and how that table becomes the value.
_TABLES: dict[str, tuple[Callable[[Mapping[str, Any]], Any], str]] = {
    "oidc_roles": (_oidc_roles_table, 'a table VALUE = "ROLE[@SCOPE]"'),
    "printers": (printers_table, "[printers.NAME] tables of aet, host, port, color, dpi"),
    "plugins": (plugins_table, "a [plugins] table: enabled = [NAMES], [plugins.NAME] settings"),
}


def _text(value: Any) -> str:
    # Only text (or a path) where text is expected: a TOML number or list given for
    # a string setting is a mistake worth naming.
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    raise ConfigurationError(f"expected a string, not {type(value).__name__} {value!r}")


def _enum_values(tp: Any) -> tuple[str, ...]:
    if get_origin(tp) is Literal:
        return tuple(str(v) for v in get_args(tp))
    return tuple(str(m.value) for m in tp)


def _parse(tp: Any, value: Any) -> Any:
    """``value`` (text from a variable or flag, or a TOML value) as an instance of ``tp``."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, str) else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        words = ", ".join(f"{t}/{f}" for t, f in zip(_TRUE, _FALSE, strict=True))
        raise ConfigurationError(f"{value!r} is not a boolean (allowed: {words}, in any case)")
    if tp is Duration:
        return parse_duration(value.strip() if isinstance(value, str) else value)
    if tp is int or tp is float:
        kind = "an integer" if tp is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigurationError(f"{value!r} is not {kind}")
        if tp is int and isinstance(value, float):
            raise ConfigurationError(f"{value!r} is not {kind}")
        try:
            return tp(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise ConfigurationError(f"{value!r} is not {kind}") from None
    if tp is str:
        return _text(value)
    if tp is Path:
        return value if isinstance(value, Path) else Path(_text(value))
    if get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
        allowed = _enum_values(tp)
        if isinstance(value, Enum) and value in list(tp):
            return value
        text = _text(value).strip().lower()
        for choice in allowed:
            if choice.lower() == text:
                return choice if get_origin(tp) is Literal else tp(choice)
        raise ConfigurationError(f"{value!r} is not one of the allowed values: {', '.join(allowed)}")
    if get_origin(tp) is tuple and len(get_args(tp)) == 2 and get_args(tp)[1] is Ellipsis:
        item_type = get_args(tp)[0]
        form = _ITEM_FORMS.get(item_type)
        separator = form.separator if form else ","
        if isinstance(value, str):
            items: list[Any] = value.split(separator)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigurationError(f"expected a list or a {separator!r}-separated string, not {value!r}")
        parsed = []
        for item in items:
            if isinstance(item, str):
                item = item.strip()
                if not item:
                    continue
            parsed.append(form.parse(item) if form else _parse(item_type, item))
        return tuple(parsed)
    raise ConfigurationError(f"no parser for the type {tp!r}")  # a new kind of field: add it above


def _describe(tp: Any) -> str:
    if tp is bool:
        return "boolean: true or false (also 1/0, yes/no, on/off)"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if tp is Duration:
        return "duration: seconds, or a number with s, m, h, d, w or y (`7d`)"
    if tp is str:
        return "string"
    if tp is Path:
        return "path"
    if get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, Enum)):
        return "one of " + ", ".join(f"`{v}`" for v in _enum_values(tp))
    if get_origin(tp) is tuple:
        item_type = get_args(tp)[0]
        form = _ITEM_FORMS.get(item_type)
        item = form.form if form else _describe(item_type)
        separator = form.separator if form else ","
        return f"list of {item} (an array in the file; elsewhere separated by `{separator}`)"
    return str(tp)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting: its field of :class:`Settings`, its type, default and documentation."""

    name: str
    type: Any
    default: Any
    doc: str

    @property
    def variable(self) -> str:
        """The environment variable that sets it."""
        return "DICOMHUB_" + self.name.upper()

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names of it, in the file and (``DICOMHUB_`` + upper case) in the environment."""
        return tuple(alias for alias, name in _ALIASES.items() if name == self.name)

    @property
    def bounds(self) -> tuple[int | None, int | None] | None:
        return _BOUNDS.get(self.name)

    def parse(self, value: Any) -> Any:
        """``value`` from any source as this setting's value.

        Raises
        ------
        ConfigurationError
            When the value does not fit (the message lists what would).
        """
        if self.name in _TABLES and isinstance(value, Mapping):
            return _TABLES[self.name][0](value)
        parsed = _parse(self.type, value)
        if self.bounds is not None:
            low, high = self.bounds
            if (low is not None and parsed < low) or (high is not None and parsed > high):
                span = f"{low} to {high}" if high is not None else f"{low} or more"
                raise ConfigurationError(f"{parsed} is out of range (allowed: {span})")
        return parsed

    def describe(self) -> str:
        """The type and allowed values, in words (for the reference and errors)."""
        text = _describe(self.type)
        if self.bounds is not None:
            low, high = self.bounds
            text += f" from {low} to {high}" if high is not None else f" from {low}"
        if self.name in _TABLES:
            text += f", or in the file {_TABLES[self.name][1]}"
        return text


def _field_docs() -> dict[str, str]:
    """Each field's documentation: the comment lines right above it and its trailing comment.

    Read from the source so that adding a setting stays one commented field line.
    """
    try:
        source = inspect.getsource(Settings)
    except (OSError, TypeError):  # no source shipped: the reference is built from a checkout
        return {}
    docs: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"    (\w+)\s*:", line)
        if stripped.startswith(("def ", "@")):
            break  # the properties and methods after the fields
        if match is None:
            above = []
            continue
        docs[match.group(1)] = " ".join(above + _trailing_comment(stripped))
        above = []
    return docs


def _trailing_comment(line: str) -> list[str]:
    # Tokenized, so that a "#" inside a default string is not taken for a comment.
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
    except (tokenize.TokenError, SyntaxError):  # a field whose default goes on over more lines
        _code, sep, comment = line.partition("  # ")
        return [comment.strip()] if sep else []
    return [tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT]


@functools.cache
def setting_specs() -> Mapping[str, SettingSpec]:
    """Every setting, in the order of the fields of :class:`Settings` (``extra`` is not one)."""
    hints = get_type_hints(Settings)
    docs = _field_docs()
    specs = {
        f.name: SettingSpec(f.name, hints[f.name], getattr(Settings(), f.name), docs.get(f.name, ""))
        for f in fields(Settings)
        if f.name != "extra"
    }
    return MappingProxyType(specs)


def display_value(value: Any) -> str:
    """A setting's value written as it would be configured (lists ``,``/``;``-separated).

    Parameters
    ----------
    value
        The value of a field of :class:`Settings`, or one item of a list-valued one.

    Returns
    -------
    str
        Text that :meth:`SettingSpec.parse` reads back to the same value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, RemoteAE):
        return f"{value.ae_title}={value.host}:{value.port}"
    if isinstance(value, DeidExport):
        return f"{value.ae_title}={value.project}" + (f":{','.join(value.options)}" if value.options else "")
    if isinstance(value, MaskRegion):
        return f"{value.x},{value.y},{value.width},{value.height}"
    if isinstance(value, CompressionRule):
        return f"{value.key}={value.transfer_syntax}"
    if isinstance(value, PluginConfig):
        return value.name
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], ValidationPolicy):
        return f"{value[0]}={value[1].value}"
    if isinstance(value, tuple):
        form = _ITEM_FORMS.get(type(value[0])) if value else None
        return (form.separator if form else ",").join(display_value(v) for v in value)
    return str(value)


# ------------------------------------------------------------------ sources and problems


@dataclass(frozen=True, slots=True)
class Source:
    """Where a setting's value came from: ``default``, ``file PATH:LINE``, ``env VAR`` or ``flag --x``."""

    kind: Literal["default", "file", "env", "flag"]
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.where}" if self.where else self.kind


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration: where, which setting, and what is allowed."""

    where: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"


class InvalidSettings(ConfigurationError):
    """Every problem found in one configuration, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = [str(p) for p in self.problems]
        text = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(text)


@dataclass(frozen=True)
class LoadedSettings:
    """The settings and, for each setting, the source its value came from."""

    settings: Settings
    sources: Mapping[str, Source]


def _closest(word: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _suggest(word: str, known: Iterable[str]) -> str:
    close = _closest(word, known)
    return f"; did you mean {close}?" if close else ""


_TOML_KEY_PART = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_TOML_HEADER = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(rf"\s*((?:{_TOML_KEY_PART})(?:\s*\.\s*(?:{_TOML_KEY_PART}))*)\s*=")


def _toml_path(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in re.findall(_TOML_KEY_PART, dotted))


def _toml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of each key (by its full dotted path) and table header in a TOML text.

    ``tomllib`` gives no positions; this scan of the text is enough for the keys
    of a settings file. Lines inside multi-line strings are skipped; a key
    written inside an inline table maps to no line (then only the file is named).
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        header = _TOML_HEADER.match(line)
        if header is not None:
            table = _toml_path(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _TOML_KEY.match(line)
        if key is None:
            continue
        lines.setdefault(table + _toml_path(key.group(1)), number)
        rest = line[key.end() :]
        for quotes in ('"""', "'''"):
            if rest.count(quotes) % 2 == 1:
                in_string = quotes
    return lines


def _read_file(
    path: str,
    specs: Mapping[str, SettingSpec],
    take: Callable[[str, Any, Source], None],
    problems: list[Problem],
) -> None:
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(Problem(f"file {path}", "", f"cannot read the configuration file: {exc}"))
        return
    lines = _toml_key_lines(text)

    def where(*keys: str) -> str:
        line = lines.get(keys)
        return f"file {path}:{line}" if line else f"file {path}"

    known = [*specs, *_ALIASES]
    prefix: tuple[str, ...] = ()
    section: Mapping[str, Any] = data
    if isinstance(data.get("dicomhub"), dict):
        prefix, section = ("dicomhub",), data["dicomhub"]
        for key in data:
            # these tables may stand beside [dicomhub]
            if key in ("peer", "webhook", "route", "retention", "plugins", "hanging_protocol"):
                take(_ALIASES.get(key, key), data[key], Source("file", where(key).removeprefix("file ")))
            elif key != "dicomhub":
                hint = f"; move it into [dicomhub] as dicomhub.{key}" if key in known else ""
                hint = hint or _suggest(key, known)
                problems.append(Problem(where(key), key, f"outside the [dicomhub] table{hint}"))
    for key, value in section.items():
        name = key.replace("-", "_")
        name = _ALIASES.get(name, name)
        source = Source("file", where(*prefix, key).removeprefix("file "))
        if name not in specs:
            problems.append(Problem(str(source), key, "unknown setting" + _suggest(name, known)))
        else:
            take(name, value, source)


def load_settings_with_sources(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Build :class:`Settings` from a TOML file, ``DICOMHUB_*`` variables and flags, noting sources.

    Parameters
    ----------
    overrides
        Setting name -> value given on the command line (None: not given).
    config_file
        The TOML file (else ``DICOMHUB_CONFIG``, else none). Keys at the top level
        or under a ``[dicomhub]`` table.
    environ
        The environment (default ``os.environ``).
    flags
        Setting name -> the flag that gave it, to name it in errors and sources
        (default ``--name-with-dashes``).

    Returns
    -------
    LoadedSettings
        The settings and where each value came from.

    Raises
    ------
    InvalidSettings
        Listing every problem: an unreadable file, an unknown key or variable,
        a value its setting does not allow, or settings that do not fit together.
    """
    environ = os.environ if environ is None else environ
    specs = setting_specs()
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    problems: list[Problem] = []
    failed: set[str] = set()

    def take(name: str, raw: Any, source: Source) -> None:
        try:
            values[name] = specs[name].parse(raw)
        except ConfigurationError as exc:
            problems.append(Problem(str(source), name, str(exc)))
            failed.add(name)
            return
        sources[name] = source

    path = config_file or environ.get("DICOMHUB_CONFIG")
    if path:
        _read_file(os.fspath(path), specs, take, problems)
    # Aliases first, so that the setting's own variable wins when both are set; then by name,
    # so that problems come in a stable order.
    for variable in sorted(environ, key=lambda v: (v[9:].lower() not in _ALIASES, v)):
        if not variable.startswith("DICOMHUB_") or variable in NON_SETTING_VARIABLES:
            continue
        key = variable[len("DICOMHUB_") :].lower()
        name = _ALIASES.get(key, key)
        if name not in specs:
            # Compared without the common prefix, which would make every name look close.
            names = [*specs, *(v[len("DICOMHUB_") :].lower() for v in NON_SETTING_VARIABLES)]
            close = _closest(key, names)
            message = "names no setting" + (f"; did you mean DICOMHUB_{close.upper()}?" if close else "")
            problems.append(Problem(f"env {variable}", "", f"{message} (see docs/configuration.md)"))
        elif environ[variable] != "":
            take(name, environ[variable], Source("env", variable))
    for name, raw in (overrides or {}).items():
        if raw is None or (isinstance(raw, (list, tuple)) and not raw and name == "remote_aes"):
            continue
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        if name not in specs:
            problems.append(Problem(f"flag {flag}", name, "unknown setting"))
            continue
        take(name, raw, Source("flag", flag))
    settings = replace(Settings(), **values)
    from dicomhub.config.checks import CHECKS  # it needs Settings, defined here

    for keys, check in CHECKS:
        if failed.intersection(keys):
            continue  # already reported, and its value is not the one given
        try:
            check(settings)
        except ConfigurationError as exc:
            given = [k for k in keys if k in sources] or list(keys[:1])
            where = ", ".join(str(sources.get(k, Source("default"))) for k in given)
            problems.append(Problem(where, ", ".join(given), str(exc)))
    if problems:
        raise InvalidSettings(problems)
    return LoadedSettings(settings, MappingProxyType({n: sources.get(n, Source("default")) for n in specs}))


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, ``DICOMHUB_*`` variables and flags.

    See :func:`load_settings_with_sources`.

    Raises
    ------
    ConfigurationError
        :class:`InvalidSettings`, listing every problem.
    """
    return load_settings_with_sources(overrides, config_file, environ).settings

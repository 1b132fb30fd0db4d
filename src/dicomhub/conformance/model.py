"""The conformance statement as a value, built from what the server actually runs with.

Nothing here is a hand-written list of SOP classes or transfer syntaxes:

- accepted presentation contexts come from
  :func:`dicomhub.dimse.acse.acceptor_contexts` on the
  :class:`~dicomhub.dimse.requests.AssociationConfig` that
  :func:`dicomhub.dimse.server.association_config` builds for the DIMSE workers;
- what this install decodes and encodes comes from
  :func:`dicomhub.codec.transfer_syntaxes`;
- the Storage SCU behaviour of C-GET/C-MOVE (stored syntax, lossless
  alternatives, the uncompressed fallback context) comes from the functions the
  retrieve path calls;
- the DICOMweb routes come from the running application's route table;
- statuses come from :mod:`dicomhub.dimse.status`;
- association policies and parameters come from :class:`~dicomhub.config.Settings`.

References
----------
PS3.2 Annex A (conformance statement template), PS3.7 (DIMSE), PS3.8
(association negotiation), PS3.18 (DICOMweb).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.uid import UID

from dicomhub import __version__, codec
from dicomhub.config import RemoteAE, Settings
from dicomhub.dimse import status
from dicomhub.dimse.acse import acceptor_contexts
from dicomhub.dimse.providers.mpps import MPPS_STATUSES
from dicomhub.dimse.providers.printing import PRINT_STATUSES
from dicomhub.dimse.providers.query_retrieve import move_proposals
from dicomhub.dimse.requests import (
    QUERY_RETRIEVE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    AssociationConfig,
    Sendable,
)
from dicomhub.dimse.server import association_config
from dicomhub.model.peer import Peer
from dicomhub.model.sopclasses import storage_sop_class
from dicomhub.services.transcode import TranscodeService

__all__ = [
    "AcceptedContextGroup",
    "ConformanceStatement",
    "HttpOperation",
    "Parameter",
    "RetrieveSyntaxRow",
    "StatusRow",
    "SyntaxRow",
    "build_statement",
    "http_routes_of",
    "uid_name",
]

#: PS3.8 Annex A.2: the DICOM application context.
APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"


def uid_name(uid: str) -> str:
    """pydicom's registered name of ``uid`` (the UID itself when unregistered)."""
    name = UID(uid).name
    return name if name and name != uid else uid


@dataclass(frozen=True, slots=True)
class SyntaxRow:
    """One transfer syntax of an accepted context, with what this install can do with it."""

    uid: str
    name: str
    decodable: bool
    encodable: bool
    lossy: bool | None  # None: not in the codec catalogue (stored as received only)


@dataclass(frozen=True, slots=True)
class AcceptedContextGroup:
    """Abstract syntaxes accepted with exactly the same transfer syntaxes and roles.

    Attributes
    ----------
    kind : str
        ``"verification"``, ``"storage"``, ``"query_retrieve"`` or ``"other"``.
    abstract_syntaxes : tuple of (str, str)
        (UID, name), in the order of the negotiation table.
    transfer_syntaxes : tuple of SyntaxRow
        Every transfer syntax accepted for each of them, in our preference order.
    scu_role, scp_role : bool or None
        The acceptor's role selection values (``None``: role selection is not
        answered and the context is accepted with dicomhub as SCP).
    """

    kind: str
    abstract_syntaxes: tuple[tuple[str, str], ...]
    transfer_syntaxes: tuple[SyntaxRow, ...]
    scu_role: bool | None
    scp_role: bool | None

    @property
    def role_text(self) -> str:
        if self.scu_role and self.scp_role:
            why = " (C-GET sub-operations)" if self.kind == "storage" else ""
            return f"SCP; SCU too when the requestor proposes SCP/SCU role selection{why}"
        if self.scu_role:
            return "SCU (with SCP/SCU role selection)"
        return "SCP"

    @property
    def provides_scp(self) -> bool:
        return self.scp_role is not False

    @property
    def offers_scu(self) -> bool:
        return bool(self.scu_role)


@dataclass(frozen=True, slots=True)
class RetrieveSyntaxRow:
    """How an instance stored in one transfer syntax is sent as a C-GET/C-MOVE sub-operation."""

    stored: str
    get_order: tuple[str, ...]
    move_contexts: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class StatusRow:
    service: str
    code: int
    meaning: str
    cause: str


@dataclass(frozen=True, slots=True)
class HttpOperation:
    """One route of the HTTP application."""

    service: str
    method: str
    path: str
    request_media_types: tuple[str, ...]
    response_media_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    value: str
    default: str


@dataclass(frozen=True)
class ConformanceStatement:
    """Everything the conformance statement says, as data (rendered by :mod:`.render`)."""

    product: str
    version: str
    ae_title: str
    host: str
    dimse_port: int
    http_port: int
    implementation_class_uid: str
    implementation_version_name: str
    maximum_pdu_size: int
    max_associations: int
    workers: str
    known_aes_only: bool
    require_called_ae_title: bool
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    remote_aes: tuple[tuple[str, str, int], ...]
    accepted: tuple[AcceptedContextGroup, ...]
    retrieve_syntaxes: tuple[RetrieveSyntaxRow, ...]
    codecs: tuple[codec.TransferSyntax, ...]
    statuses: tuple[StatusRow, ...]
    http: tuple[HttpOperation, ...]
    frame_media_types: tuple[tuple[str, str], ...]
    rendered_media_types: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    duplicate_policy: str
    compression_rules: tuple[str, ...]
    # Transport security and access control (docs/transport-security.md).
    dimse_tls_port: int = 0
    https: bool = False
    tls_verify_client: bool = False
    auth_required: bool = False
    # Any SOP class the standard does not register is accepted for storage too.
    accept_unknown_sop_classes: bool = False

    # ------------------------------------------------------------ convenience

    def groups(self, kind: str) -> list[AcceptedContextGroup]:
        return [g for g in self.accepted if g.kind == kind]

    def accepted_pairs(self) -> list[tuple[str, str, bool]]:
        """Every (abstract syntax, transfer syntax, SCU role offered) the server accepts."""
        return [
            (uid, ts.uid, bool(group.scu_role))
            for group in self.accepted
            for uid, _name in group.abstract_syntaxes
            for ts in group.transfer_syntaxes
        ]

    @property
    def storage_sop_classes(self) -> list[tuple[str, str]]:
        return [sop for g in self.groups("storage") for sop in g.abstract_syntaxes]

    @property
    def retired_storage_sop_classes(self) -> int:
        """How many of the storage SOP classes the standard has retired."""
        return sum(1 for uid, _name in self.storage_sop_classes if _is_retired(uid))


def _is_retired(uid: str) -> bool:
    sop = storage_sop_class(uid)
    return sop is not None and sop.retired


def storage_class_name(uid: str) -> str:
    """The name of an accepted storage SOP class: the standard's, marked "(Retired)"
    for a retired class; a configured private class is named as such."""
    sop = storage_sop_class(uid)
    if sop is not None:
        return sop.title
    name = uid_name(uid)
    return name if name != uid else "Private SOP class (accept_sop_classes)"


# ---------------------------------------------------------------- DIMSE


def _syntax_row(uid: str, catalogue: dict[str, codec.TransferSyntax]) -> SyntaxRow:
    ts = catalogue.get(uid)
    if ts is None:
        return SyntaxRow(uid, uid_name(uid), False, False, None)
    return SyntaxRow(uid, ts.title, ts.can_decode, ts.can_encode, ts.lossy)


def _kind(uid: str, config: AssociationConfig) -> str:
    if uid == VERIFICATION_SOP_CLASS:
        return "verification"
    if uid in config.storage_contexts:
        return "storage"
    if uid in QUERY_RETRIEVE_SOP_CLASSES:
        return "query_retrieve"
    return "other"


def _accepted_groups(
    config: AssociationConfig, catalogue: dict[str, codec.TransferSyntax]
) -> tuple[AcceptedContextGroup, ...]:
    """Group the acceptor's contexts by (kind, transfer syntaxes, roles), in their order."""
    groups: dict[tuple[str, tuple[str, ...], bool | None, bool | None], list[str]] = {}
    for context in acceptor_contexts(config):
        uid = str(context.abstract_syntax)
        syntaxes = tuple(str(ts) for ts in context.transfer_syntax)
        key = (_kind(uid, config), syntaxes, context.scu_role, context.scp_role)
        groups.setdefault(key, []).append(uid)
    out = []
    for (kind, syntaxes, scu, scp), uids in groups.items():
        name = storage_class_name if kind == "storage" else uid_name
        if kind == "storage":
            uids = sorted(uids, key=lambda u: (name(u).lower(), u))
        out.append(
            AcceptedContextGroup(
                kind,
                tuple((u, name(u)) for u in uids),
                tuple(_syntax_row(ts, catalogue) for ts in syntaxes),
                scu,
                scp,
            )
        )
    return tuple(out)


def _retrieve_syntaxes(stored_syntaxes: Iterable[str]) -> tuple[RetrieveSyntaxRow, ...]:
    """For each syntax an instance may be stored in: the C-GET order and the C-MOVE contexts.

    Computed with the retrieve path's own functions: the lossless alternatives
    the handlers attach to every sub-operation, and the C-MOVE proposal builder
    of the association loop (applied to one instance stored in that syntax).
    """
    rows = []
    for stored in stored_syntaxes:
        instance = Sendable(
            "1.2.840.10008.5.1.4.1.1.7",  # any storage class: proposals do not depend on it
            "1.2.3",
            stored,
            read=bytes,
            alternatives=TranscodeService.alternatives(stored),
        )
        proposals = move_proposals([instance])  # the function the C-MOVE path calls
        rows.append(
            RetrieveSyntaxRow(
                stored,
                instance.syntaxes(),
                tuple(tuple(syntaxes) for _sop, syntaxes in proposals),
            )
        )
    return tuple(rows)


# The statuses dicomhub answers on purpose, per service: (service, code, meaning, cause).
def _statuses() -> tuple[StatusRow, ...]:
    rows = [
        StatusRow("Verification", status.SUCCESS, "Success", "always"),
        StatusRow(
            "Storage", status.SUCCESS, "Success", "stored durably (or the same object is already held)"
        ),
    ]
    tables = (
        ("Storage", status.STORE_STATUSES, status.STORE_PROCESSING_FAILURE),
        ("Query/Retrieve FIND", status.FIND_STATUSES, status.QR_UNABLE_TO_PROCESS),
        ("Query/Retrieve GET/MOVE", status.RETRIEVE_STATUSES, status.QR_UNABLE_TO_PROCESS),
    )
    for service, table, default in tables:
        for exc, code in table:
            doc = (exc.__doc__ or exc.__name__).strip().splitlines()[0]
            meaning = _meaning(service, code)
            rows.append(StatusRow(service, code, meaning, f"{exc.__name__}: {doc}"))
        rows.append(StatusRow(service, default, _meaning(service, default), "any other error"))
    rows += [
        StatusRow("Query/Retrieve FIND", status.PENDING, "Pending", "one response per match"),
        StatusRow("Query/Retrieve FIND", status.SUCCESS, "Success", "all matches sent"),
        StatusRow("Query/Retrieve GET/MOVE", status.PENDING, "Pending", "after each sub-operation"),
        StatusRow("Query/Retrieve GET/MOVE", status.SUCCESS, "Success", "every sub-operation succeeded"),
        StatusRow(
            "Query/Retrieve GET/MOVE",
            status.QR_SUBOPS_FAILED_OR_WARNING,
            "Warning",
            "some sub-operations failed (counted in the final response; the others went on)",
        ),
        StatusRow("Query/Retrieve FIND", status.CANCEL, "Cancel", "C-CANCEL received"),
        StatusRow("Query/Retrieve GET/MOVE", status.CANCEL, "Cancel", "C-CANCEL received"),
    ]
    rows += [StatusRow("MPPS", code, meaning, cause) for code, meaning, cause in MPPS_STATUSES]
    rows += [StatusRow("Print", code, meaning, cause) for code, meaning, cause in PRINT_STATUSES]
    return tuple(rows)


_STORE_MEANINGS: Final = {
    status.STORE_OUT_OF_RESOURCES: "Refused: Out of Resources",
    status.STORE_INDEX_UNAVAILABLE: "Refused: Out of Resources (index unavailable)",
    status.STORE_DATASET_DOES_NOT_MATCH: "Error: Data Set does not match SOP Class",
    status.STORE_CANNOT_UNDERSTAND: "Error: Cannot understand",
    status.STORE_SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class not supported",
    status.STORE_DUPLICATE_REFUSED: "Error: Cannot understand (duplicate refused by policy)",
    status.STORE_PATIENT_MISMATCH: "Error: Cannot understand (study held under another patient)",
    status.STORE_CONFLICT: "Error: Cannot understand (refused by policy)",
    status.STORE_PROCESSING_FAILURE: "Failure: Processing failure",
    status.STORE_SUBSEQUENT_OCCURRENCE_OF_REJECTED: "Refused: Subsequent occurrence of a rejected object",
    status.STORE_REJECTION_FAILED_NO_SUCH_INSTANCE: "Refused: Rejection failed, no such instance",
}
_QR_MEANINGS: Final = {
    status.QR_OUT_OF_RESOURCES: "Refused: Out of Resources",
    status.QR_SUBOPS_OUT_OF_RESOURCES: "Refused: Out of Resources (sub-operations)",
    status.QR_UNKNOWN_DESTINATION: "Refused: Move Destination unknown",
    status.QR_IDENTIFIER_DOES_NOT_MATCH: "Error: Identifier does not match SOP Class",
    status.QR_UNABLE_TO_PROCESS: "Failure: Unable to process",
}


def _meaning(service: str, code: int) -> str:
    table = _STORE_MEANINGS if service == "Storage" else _QR_MEANINGS
    return table.get(code, "Failure")


# ---------------------------------------------------------------- HTTP


def _service(method: str, path: str) -> str:
    if path.startswith("/deid"):
        return "De-identification"
    if path.startswith("/migrations"):
        return "Migration"
    if path.startswith("/print"):
        return "Print"
    if "/labels" in path or path.startswith(("/users", "/grants", "/audit")):
        return "Access control"
    if not path.startswith("/dicomweb"):
        return "Admin" if path.startswith("/admin") else "Server"
    if method == "POST" and path.endswith("/reject"):
        return "Reject (IHE IOCM)"
    if method == "POST":
        return "STOW-RS"
    if method == "DELETE":
        return "Delete (not in PS3.18)"
    if path == "/dicomweb/wado":
        return "WADO-URI"
    # "patients": dicomhub's patient-level search, an extension of QIDO-RS.
    if path.rsplit("/", 1)[-1] in ("patients", "studies", "series", "instances"):
        return "QIDO-RS"
    return "WADO-RS"


def _http_operations(routes: Iterable[tuple[str, str]]) -> tuple[HttpOperation, ...]:
    """Classify the routes and give each its media types (from the OpenAPI document and the web modules)."""
    from dicomhub.web.dicomweb import wado
    from dicomhub.web.openapi import openapi_document

    paths = openapi_document()["paths"]
    frame_types = (wado.OCTET_STREAM, *dict.fromkeys(wado.FRAME_MEDIA_TYPES.values()))
    out = []
    for method, path in routes:
        operation = paths.get(path, {}).get(method.lower())
        request: tuple[str, ...] = ()
        response: tuple[str, ...] = ()
        if operation is not None:
            body = operation.get("requestBody", {}).get("content", {})
            request = tuple(body)
            for code in ("200", "201", "202", "206"):
                response += tuple(
                    m for m in operation["responses"].get(code, {}).get("content", {}) if m not in response
                )
        elif path.endswith("/frames/{frames}"):
            response = tuple(f'multipart/related; type="{m}"' for m in frame_types)
        elif method == "GET" and path.startswith("/dicomweb/studies"):
            response = (f'multipart/related; type="{wado.DICOM}"',)
        if method == "POST" and path.startswith("/dicomweb") and not path.endswith("/reject"):  # STOW-RS
            request = (f'multipart/related; type="{wado.DICOM}"',)
        out.append(HttpOperation(_service(method, path), method, path, request, response))
    order = (
        "QIDO-RS", "WADO-RS", "WADO-URI", "STOW-RS", "Delete (not in PS3.18)", "Reject (IHE IOCM)",
        "Server", "Admin",
        "De-identification", "Migration", "Print", "Access control",
    )  # fmt: skip
    return tuple(sorted(out, key=lambda o: (order.index(o.service), o.path, o.method)))


# ---------------------------------------------------------------- parameters


_SECRET_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(_text(v) for v in value) or "none"
    if hasattr(value, "value") and not isinstance(value, str | int | float):
        return str(value.value)
    if isinstance(value, RemoteAE):
        return f"{value.ae_title}={value.host}:{value.port}"
    if isinstance(value, Peer):
        # Its name and address only: never its credentials.
        return f"{value.name} ({value.describe()})"
    return str(value)


# What an empty storage setting means.
_WHEN_EMPTY = {
    "storage_url": "blobs in the data dir",
    "storage_fallback_url": "none",
    "s3_endpoint_url": "AWS_ENDPOINT_URL or AWS",
    "s3_region": "AWS_REGION or ~/.aws/config",
}


def _parameters(settings: Settings) -> tuple[Parameter, ...]:
    defaults = Settings()
    out = []
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        value, default = getattr(settings, f.name), getattr(defaults, f.name)
        text, default_text = _text(value), _text(default)
        if f.name == "database_url":
            text = _SECRET_IN_URL.sub(r"\1***@", text) or "SQLite in the data dir"
            default_text = "SQLite in the data dir"
        if f.name == "workers":
            text = str(value) if value else "one per core"
            default_text = "one per core"
        if f.name in _WHEN_EMPTY:
            text, default_text = text or _WHEN_EMPTY[f.name], default_text or _WHEN_EMPTY[f.name]
        out.append(Parameter(f.name, text, default_text))
    return tuple(out)


# ---------------------------------------------------------------- the statement


def build_statement(
    settings: Settings,
    http_routes: Sequence[tuple[str, str]] = (),
    config: AssociationConfig | None = None,
) -> ConformanceStatement:
    """Build the conformance statement of a server running with ``settings``.

    Parameters
    ----------
    settings : Settings
        The configuration ``dicomhub serve`` runs with.
    http_routes : sequence of (str, str)
        (method, path template) of every route of the HTTP application
        (HEAD left out), e.g. from :func:`http_routes_of`.
    config : AssociationConfig, optional
        The association loop's configuration; by default the one the DIMSE
        workers build (:func:`dicomhub.dimse.server.association_config`).

    Returns
    -------
    ConformanceStatement
    """
    config = config or association_config(settings)
    catalogue = {ts.uid: ts for ts in codec.transfer_syntaxes()}
    accepted = _accepted_groups(config, catalogue)
    stored = [ts.uid for g in accepted if g.kind == "storage" for ts in g.transfer_syntaxes]
    from dicomhub.web.dicomweb import render as web_render
    from dicomhub.web.dicomweb import wado

    return ConformanceStatement(
        product="dicomhub",
        version=__version__,
        ae_title=settings.aet,
        host=settings.host,
        dimse_port=settings.dimse_port,
        http_port=settings.http_port,
        implementation_class_uid=config.implementation_class_uid,
        implementation_version_name=config.implementation_version_name,
        maximum_pdu_size=config.maximum_pdu_size,
        max_associations=settings.max_associations,
        workers=f"{settings.workers}" if settings.workers else "one per CPU core",
        known_aes_only=settings.known_aes_only,
        require_called_ae_title=config.require_called_ae_title,
        acse_timeout=config.acse_timeout,
        dimse_timeout=config.dimse_timeout,
        network_timeout=config.network_timeout,
        remote_aes=tuple((r.ae_title, r.host, r.port) for r in settings.remote_aes),
        accepted=accepted,
        retrieve_syntaxes=_retrieve_syntaxes(dict.fromkeys(stored)),
        codecs=tuple(catalogue.values()),
        statuses=_statuses(),
        http=_http_operations(http_routes),
        frame_media_types=tuple(wado.FRAME_MEDIA_TYPES.items()),
        rendered_media_types=tuple(web_render.RENDERED_TYPES),
        parameters=_parameters(settings),
        duplicate_policy=settings.duplicate_policy.value,
        compression_rules=tuple(str(rule) for rule in settings.compress),
        dimse_tls_port=settings.dimse_tls_port,
        https=settings.https,
        tls_verify_client=settings.tls_verify_client,
        auth_required=settings.auth_required,
        accept_unknown_sop_classes=config.accept_unknown_storage,
    )


def http_routes_of(routes: Iterable[object], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path template) of every Starlette route, mounts flattened, HEAD left out."""
    from starlette.routing import Mount, Route

    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Mount):
            out += http_routes_of(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            out += [(m, prefix + route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out

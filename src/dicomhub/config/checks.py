"""Checks of loaded settings that span several of them, and what settings decide about
the network: refusing anonymous access beyond the loopback, and the TLS contexts
of the DICOM and HTTP listeners and of outgoing associations.

:func:`dicomhub.config.load_settings_with_sources` runs every row of :data:`CHECKS`
whose settings were given, and reports each failure as a problem of those settings.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.model.retention import RetentionRule, parse_retention_rules
from dicomhub.model.routing import Route, parse_routes
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.model.webhooks import Webhook, parse_webhooks

if TYPE_CHECKING:
    from dicomhub.config import Settings

__all__ = ["CHECKS", "anonymous_network_refusal", "tls_client_context", "tls_server_context"]


def _validate_aet(s: Settings) -> None:
    if not s.aet or len(s.aet) > 16:
        raise ConfigurationError("the AE title must have 1 to 16 characters")


def _validate_sop_classes(s: Settings) -> None:
    # A typo in an accepted SOP class UID must stop `serve`, not refuse the modality later.
    StorableSOPClasses.from_settings(s.accept_sop_classes, s.accept_unknown_sop_classes)


def _validate_deid_mask(s: Settings) -> None:
    if s.deid_burned_in == "mask" and not s.deid_mask:
        raise ConfigurationError("deid_burned_in mask needs at least one region (deid_mask X,Y,WIDTH,HEIGHT)")


def _validate_public_base_url(s: Settings) -> None:
    # Checked at start-up: a typo here would otherwise show only as broken links in viewers.
    if not s.public_base_url:
        return
    try:
        parts = urlsplit(s.public_base_url)
    except ValueError:  # e.g. an unbalanced "[" or "]" (urlsplit reads it as an IPv6 host)
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"public_base_url {s.public_base_url!r} must be an absolute http(s) URL without "
            "query or fragment, e.g. https://pacs.example.org/dicomweb"
        )


def _validate_audit_syslog(s: Settings) -> None:
    if s.audit_syslog:
        from dicomhub.telemetry.syslog import parse_target

        parse_target(s.audit_syslog)  # raises ConfigurationError


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


# Checks of settings that must fit together, each with the settings it concerns
# (named in its error with their sources). A new check is a row here.
CHECKS: tuple[tuple[tuple[str, ...], Callable[[Settings], None]], ...] = (
    (("aet",), _validate_aet),
    (("compress", "allow_lossy_compression"), _validate_compression),
    (("accept_sop_classes", "accept_unknown_sop_classes"), _validate_sop_classes),
    (("deid_burned_in", "deid_mask"), _validate_deid_mask),
    (("deid_export",), _validate_deid_export),
    (("dimse_tls_port", "https", "tls_cert", "tls_key", "tls_verify_client", "tls_ca"), _validate_tls),
    (("public_base_url",), _validate_public_base_url),
    (("audit_syslog",), _validate_audit_syslog),
    (("mpps_hl7_destination",), lambda s: _validate_host_port(s.mpps_hl7_destination)),
    (("webhooks",), lambda s: _validate_webhooks(s.webhooks)),
    (("routes",), lambda s: _validate_routes(s.routes)),
    (("retention",), lambda s: _validate_retention(s.retention)),
    (("oidc_ui_client_id", "oidc_issuer"), lambda s: _validate_oidc_ui(s)),
)


def _validate_oidc_ui(s: Settings) -> None:
    # The UI's log-in runs against the issuer whose tokens the archive accepts.
    if s.oidc_ui_client_id and not s.oidc_issuer:
        raise ConfigurationError("oidc_ui_client_id (log-in from the web UI) needs oidc_issuer")


def _validate_routes(routes: tuple[Route, ...]) -> None:
    # Resolved here so that a typo stops `serve` at start-up. Whether each peer
    # exists is asked when the archive is open (peers may live in the index).
    from dicomhub.codec import transfer_syntax

    parse_routes(list(routes))  # the names are unique across the tables
    for route in routes:
        if not route.transfer_syntax:
            continue
        try:
            syntax = transfer_syntax(route.transfer_syntax)
        except DicomhubError as exc:
            raise ConfigurationError(f"[[route]] {route.name}: {exc}") from exc
        if not syntax.can_encode:
            raise ConfigurationError(
                f"[[route]] {route.name}: {syntax.title} cannot be encoded in this install"
            )


def _validate_retention(rules: tuple[RetentionRule, ...]) -> None:
    parse_retention_rules(list(rules))  # the names are unique across the tables


def _validate_webhooks(hooks: tuple[Webhook, ...]) -> None:
    parse_webhooks(list(hooks))  # the names are unique across the tables


def _validate_host_port(value: str) -> None:
    if not value:
        return
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{value!r} is not host:port (e.g. ris.example.org:2575)")


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


def tls_client_context(settings: Settings) -> ssl.SSLContext:
    """The client side of DICOM TLS (PS3.15 B.1), for associations dicomhub opens
    to a peer with ``tls`` set: C-MOVE sub-operations, Storage Commitment reports.

    TLS 1.2 or later with the BCP 195 ciphers; the peer's certificate must chain
    to ``tls_ca`` (the same bundle that verifies client certificates on our own
    TLS port), or to the system's trust store when ``tls_ca`` is empty, and name
    the host we connect to (the caller gives it as ``server_hostname``). Our own
    ``tls_cert`` / ``tls_key``, when configured, are presented as the client
    certificate: DICOM TLS peers usually require mutual authentication.

    Parameters
    ----------
    settings : Settings
        Where ``tls_ca``, ``tls_cert`` and ``tls_key`` come from.

    Returns
    -------
    ssl.SSLContext
        A fresh context: built per use, so a renewed certificate is picked up
        without a restart.

    Raises
    ------
    ConfigurationError
        When the CA bundle, certificate or key cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        if settings.tls_ca:
            context.load_verify_locations(cafile=settings.tls_ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if settings.tls_cert and settings.tls_key:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS CA bundle, certificate or key: {exc}") from exc
    return context

"""The server-wide options of ``dicomhub`` commands, and the settings they give.

Options whose destination is a setting (or another name of one) are settings
options: :func:`load_from_args` lays them over the environment and the
``--config`` file. A command names the groups it uses (:class:`Shared`), so
that its ``--help`` lists no option it ignores: ``user token`` has no
``--duplicate-policy``, only what stores objects has.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from typing import Any

from dicomhub.config import LoadedSettings, load_settings_with_sources, setting_specs

__all__ = [
    "ARCHIVE",
    "INGEST",
    "OFFLINE",
    "SERVER",
    "Shared",
    "add_shared_options",
    "load_from_args",
    "settings_flags",
    "settings_parser",
]


class Shared(enum.Flag):
    """Groups of server-wide options; a command uses a union of them."""

    NONE = 0
    CONFIG = enum.auto()  # --config
    LOCATION = enum.auto()  # where the index and the blobs are
    LOG_LEVEL = enum.auto()  # only serve logs below WARNING
    LOG_FORMAT = enum.auto()
    STORE = enum.auto()  # what ingest accepts and does with duplicates
    SERVER_ONLY = enum.auto()  # listening, security, codecs, de-identification on export...


# What a command that reads the settings but opens no archive uses (``deid``).
OFFLINE = Shared.CONFIG | Shared.LOG_FORMAT
# What a command on the archive uses.
ARCHIVE = OFFLINE | Shared.LOCATION
# What a command that stores objects into the archive uses.
INGEST = ARCHIVE | Shared.STORE
# Everything: serve, and what must see the configuration serve would run with.
SERVER = INGEST | Shared.LOG_LEVEL | Shared.SERVER_ONLY


def _switch(p: argparse.ArgumentParser, flag: str, help: str, dest: str | None = None) -> None:
    # default None, not False: a switch not given leaves the setting to the environment or the file.
    named: dict[str, Any] = {"dest": dest} if dest else {}
    p.add_argument(flag, **named, action="store_true", default=None, help=help)


def _repeatable(
    p: argparse.ArgumentParser, flag: str, metavar: str, help: str, dest: str | None = None
) -> None:
    # default []: load_from_args reads an empty list as "not given".
    named: dict[str, Any] = {"dest": dest} if dest else {}
    p.add_argument(flag, **named, action="append", default=[], metavar=metavar, help=help)


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")


def _location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (default ./dicomhub-data)")
    p.add_argument("--database-url", help="index database URL (default: SQLite in the data dir)")
    p.add_argument(
        "--storage-url", help="blob store: file:///path or s3://bucket/prefix (default: data dir/blobs)"
    )
    p.add_argument("--storage-fallback-url", help="also read blobs from this store (while migrating storage)")


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")


def _log_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects"
    )


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duplicate-policy",
        choices=["keep", "overwrite", "reject"],
        help="what to do with a second copy of a SOP Instance UID (default keep)",
    )
    _repeatable(
        p,
        "--accept-sop-class",
        "UID",
        "also store objects of this (private) SOP class (repeatable)",
        dest="accept_sop_classes",
    )
    _switch(
        p,
        "--accept-unknown-sop-classes",
        "also store objects of any SOP class the standard does not register",
    )


def _server_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aet", help="our AE title (default DICOMHUB)")
    p.add_argument("--dimse-port", type=int, help="DIMSE port (default 11112)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8042)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--public-base-url",
        help="the DICOMweb root as clients reach it (behind a reverse proxy), for absolute "
        "BulkDataURI and RetrieveURL values (default: from each request)",
    )
    _repeatable(
        p, "--remote-ae", "AET=HOST:PORT", "a remote AE dicomhub may open associations to (repeatable)"
    )
    _switch(p, "--known-aes-only", "accept associations only from the configured remote AEs")
    p.add_argument("--max-associations", type=int, help="concurrent associations (default 64)")
    p.add_argument("--acse-timeout", type=float, help="seconds (default 30)")
    p.add_argument("--dimse-timeout", type=float, help="seconds (default 60)")
    p.add_argument("--network-timeout", type=float, help="seconds (default 120)")
    p.add_argument("--workers", type=int, help="DIMSE worker processes (default: one per core)")
    _repeatable(
        p,
        "--compress",
        "KEY=SYNTAX",
        "store objects compressed at rest: KEY is a Modality, a SOP Class UID or *, "
        "SYNTAX a name from `dicomhub codecs` or a UID (repeatable; first match wins)",
    )
    _switch(p, "--allow-lossy-compression", "allow --compress rules with a lossy transfer syntax")
    p.add_argument(
        "--validation-policy",
        choices=["record", "warn", "reject"],
        help="objects that break their IOD: record the findings (default), answer with a "
        "warning status, or refuse them",
    )
    _repeatable(p, "--validation-ae", "AET=POLICY", "validation policy for one calling AE (repeatable)")
    p.add_argument(
        "--decode-check",
        choices=["off", "sample", "always"],
        help="decode stored pixel data once after ingest: the first objects of each "
        "syntax (sample, default), every object (always), or none (off)",
    )
    _repeatable(
        p,
        "--deid-export",
        "AET=PROJECT[:OPTION,...]",
        "C-MOVE to this destination sends only objects de-identified for PROJECT, "
        "with these profile options (repeatable)",
    )
    p.add_argument(
        "--deid-burned-in",
        choices=["refuse", "mask", "allow"],
        help="de-identification of objects that may carry burned-in annotation: refuse "
        "them (default), mask the --deid-mask regions, or allow them",
    )
    _repeatable(
        p,
        "--deid-mask",
        "X,Y,WIDTH,HEIGHT",
        "a pixel region blanked under --deid-burned-in mask (repeatable)",
    )
    _security_args(p)
    _operations_args(p)


# In the order --help lists them.
_ADDERS: tuple[tuple[Shared, Callable[[argparse.ArgumentParser], None]], ...] = (
    (Shared.CONFIG, _config),
    (Shared.LOCATION, _location),
    (Shared.LOG_LEVEL, _log_level),
    (Shared.LOG_FORMAT, _log_format),
    (Shared.STORE, _store),
    (Shared.SERVER_ONLY, _server_only),
)


def add_shared_options(p: argparse.ArgumentParser, shared: Shared) -> None:
    """Add to ``p`` the options of every group in ``shared``."""
    for flag, add in _ADDERS:
        if flag in shared:
            add(p)


def settings_parser() -> argparse.ArgumentParser:
    """A parser with every settings option (as ``serve`` has), for the configuration reference."""
    scratch = argparse.ArgumentParser()
    add_shared_options(scratch, SERVER)
    return scratch


def _security_args(p: argparse.ArgumentParser) -> None:
    _switch(
        p, "--auth", "require every HTTP request and DIMSE association to authenticate", dest="auth_required"
    )
    _switch(
        p, "--allow-anonymous-network", "listen on a non-loopback address without --auth (not recommended)"
    )
    p.add_argument("--oidc-issuer", help="accept OpenID Connect bearer tokens from this issuer")
    p.add_argument(
        "--oidc-jwks", help="the issuer's JWKS: an https URL or a file (default: found by discovery)"
    )
    p.add_argument("--oidc-audience", help="the audience (aud) tokens must name")
    p.add_argument("--oidc-principal-claim", help="the claim naming the principal (default sub)")
    p.add_argument(
        "--oidc-ca-file", help="PEM CA bundle the issuer's https certificate must chain to (default: system)"
    )
    _switch(
        p,
        "--oidc-accept-azp",
        "accept tokens whose azp (Keycloak: the client) is the audience, whatever their aud",
    )
    p.add_argument(
        "--oidc-role-claim",
        help="the claim whose values --oidc-role maps: a name or a dotted path (realm_access.roles)",
    )
    _repeatable(
        p,
        "--oidc-role",
        "VALUE=ROLE[@SCOPE]",
        "a token whose role claim holds VALUE holds ROLE at SCOPE (default archive); repeatable",
        dest="oidc_roles",
    )
    p.add_argument(
        "--oidc-ui-client-id",
        help="the web UI's public client at the issuer: offers 'Log in with ...' (code flow, PKCE)",
    )
    p.add_argument(
        "--oidc-ui-provider-name", help="the name on the UI's log-in button (default OpenID Connect)"
    )
    p.add_argument("--oidc-ui-scope", help="the scopes the UI's log-in asks for (default openid)")
    _repeatable(
        p,
        "--label-rule",
        "LABEL=calling_ae:AET|Keyword:VALUE",
        "label studies at ingest by calling AE or attribute (repeatable)",
        dest="label_rules",
    )
    p.add_argument("--tls-cert", help="PEM certificate (chain) for DICOM TLS and HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", help="PEM CA bundle that client certificates must chain to")
    _switch(p, "--tls-verify-client", "require a client certificate signed by --tls-ca")
    p.add_argument("--dimse-tls-port", type=int, help="DICOM TLS port (default: none)")
    p.add_argument("--hl7-port", type=int, help="HL7 v2 (MLLP) port for orders and patients (default: none)")
    p.add_argument(
        "--mpps-hl7-destination",
        metavar="HOST:PORT",
        help="send an HL7 ORM^O01 status message there when an MPPS moves an order (default: none)",
    )
    p.add_argument(
        "--print-dpi", type=int, help="resolution of printed films, pixels per inch (default: 150)"
    )
    p.add_argument(
        "--stable-age",
        type=float,
        help="seconds without a new instance before a study or series is announced stable (default: 60)",
    )
    p.add_argument("--https", action="store_true", default=None, help="serve HTTPS on the HTTP port")


def _operations_args(p: argparse.ArgumentParser) -> None:
    """The access log and the syslog audit feed (docs/operations.md)."""
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="no log line per HTTP request",
    )
    p.add_argument(
        "--audit-syslog",
        metavar="URL",
        help="send audit messages to a syslog collector: tls://HOST:6514, tcp://HOST:601 or udp://HOST:514",
    )
    p.add_argument("--audit-syslog-ca", help="PEM CA bundle the syslog collector's certificate must chain to")
    p.add_argument("--audit-syslog-cert", help="PEM certificate presented to the syslog collector")
    p.add_argument("--audit-syslog-key", help="PEM private key of --audit-syslog-cert")


def settings_flags(p: argparse.ArgumentParser) -> dict[str, tuple[str, str]]:
    """The settings options of ``p``: setting name -> (destination in the namespace, flag).

    Options whose destination is a setting (or another name of one, ``remote_ae``)
    are settings options: a new setting's flag needs only ``dest`` = its name.

    Parameters
    ----------
    p
        A parser after :func:`add_shared_options` (and nothing else) added its options.

    Returns
    -------
    dict
        Setting name -> (destination, the option's first spelling).
    """
    specs = setting_specs()
    alias_of = {alias: spec.name for spec in specs.values() for alias in spec.aliases}
    out: dict[str, tuple[str, str]] = {}
    for action in p._actions:
        name = alias_of.get(action.dest, action.dest)
        if name in specs and action.option_strings:
            out[name] = (action.dest, action.option_strings[0])
    return out


def load_from_args(args: argparse.Namespace) -> LoadedSettings:
    """The settings of a command line: its settings options over the environment over ``--config``.

    Parameters
    ----------
    args
        Parsed by a parser that :func:`add_shared_options` gave the settings options.

    Returns
    -------
    LoadedSettings
        The settings and the source of each value.

    Raises
    ------
    InvalidSettings
        Listing every problem.
    """
    known: dict[str, tuple[str, str]] = getattr(args, "settings_flags", {})
    overrides: dict[str, Any] = {}
    for name, (dest, _flag) in known.items():
        value = getattr(args, dest, None)
        overrides[name] = None if value == [] else value  # an append option not given
    flags = {name: flag for name, (_dest, flag) in known.items()}
    return load_settings_with_sources(overrides, getattr(args, "config", None), flags=flags)

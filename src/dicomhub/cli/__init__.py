"""The ``dicomhub`` command: parse, call a service, print. No logic of its own.

The core commands live here; a feature with several commands of its own keeps
them in a module of this package that adds them to the parser (see
:data:`_COMMAND_MODULES` and :class:`CommandModule`), so that features grow
without all editing one file.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from dicomhub import __version__
from dicomhub.config import (
    LoadedSettings,
    Settings,
    anonymous_network_refusal,
    load_settings_with_sources,
    setting_specs,
    tls_server_context,
)
from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.query import Query
from dicomhub.services.ingest import StoreOutcome
from dicomhub.telemetry.metrics import prepare_directory, remove_directory

__all__ = ["CommandModule", "SettingsArgs", "load_from_args", "main", "settings_flags"]


class SettingsArgs(Protocol):
    """Adds the common settings options (data dir, database, ...) to a sub-parser."""

    def __call__(self, p: argparse.ArgumentParser, server: bool = False) -> None: ...


class CommandModule(Protocol):
    """A module of this package that brings its own sub-commands.

    ``add_commands`` adds them to ``sub`` and sets ``run`` on each parser with
    ``p.set_defaults(run=handler)``, ``handler(settings, args) -> int`` (the
    exit status). :class:`~dicomhub.errors.DicomhubError` raised by a handler
    is printed and gives exit status 1, like the core commands. A command that
    reads the settings itself (or needs none) sets ``run_unloaded=handler``,
    ``handler(args) -> int``, instead: ``dicomhub config check`` reports
    configuration errors its own way.
    """

    def add_commands(self, sub: Any, settings_args: SettingsArgs) -> None: ...


# Modules (relative to this package) whose commands join the core ones.
_COMMAND_MODULES: tuple[str, ...] = (
    "ae",
    "auditexport",
    "backup",
    "configuration",
    "deid",
    "deidserver",
    "migration",
    "orders",
    "peer",
    "security",
    "storage",
)


def _command_modules() -> list[CommandModule]:
    return [import_module(f"{__name__}.{name}") for name in _COMMAND_MODULES]

LOGGER = logging.getLogger("dicomhub")

_LS_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    Level.STUDY: (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
}
_INTEGER_KEYS = {k for keys in _LS_KEYS.values() for k in keys if k.startswith("NumberOf")}
_INTEGER_KEYS.add("SeriesNumber")


def _settings_args(p: argparse.ArgumentParser, server: bool = False) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="data directory (default ./dicomhub-data)")
    p.add_argument("--database-url", help="index database URL (default: SQLite in the data dir)")
    p.add_argument(
        "--storage-url", help="blob store: file:///path or s3://bucket/prefix (default: data dir/blobs)"
    )
    p.add_argument(
        "--storage-fallback-url", help="also read blobs from this store (while migrating storage)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects"
    )
    p.add_argument(
        "--duplicate-policy",
        choices=["keep", "overwrite", "reject"],
        help="what to do with a second copy of a SOP Instance UID (default keep)",
    )
    p.add_argument(
        "--accept-sop-class",
        dest="accept_sop_classes",
        action="append",
        default=[],
        metavar="UID",
        help="also store objects of this (private) SOP class (repeatable)",
    )
    p.add_argument(
        "--accept-unknown-sop-classes",
        action="store_true",
        default=None,
        help="also store objects of any SOP class the standard does not register",
    )
    if not server:
        p.set_defaults(settings_flags=settings_flags(p))
        return
    p.add_argument("--aet", help="our AE title (default DICOMHUB)")
    p.add_argument("--dimse-port", type=int, help="DIMSE port (default 11112)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8042)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--public-base-url",
        help="the DICOMweb root as clients reach it (behind a reverse proxy), for absolute "
        "BulkDataURI and RetrieveURL values (default: from each request)",
    )
    p.add_argument(
        "--remote-ae",
        action="append",
        default=[],
        metavar="AET=HOST:PORT",
        help="a remote AE dicomhub may open associations to (repeatable)",
    )
    p.add_argument(
        "--known-aes-only",
        action="store_true",
        default=None,
        help="accept associations only from the configured remote AEs",
    )
    p.add_argument("--max-associations", type=int, help="concurrent associations (default 64)")
    p.add_argument("--acse-timeout", type=float, help="seconds (default 30)")
    p.add_argument("--dimse-timeout", type=float, help="seconds (default 60)")
    p.add_argument("--network-timeout", type=float, help="seconds (default 120)")
    p.add_argument("--workers", type=int, help="DIMSE worker processes (default: one per core)")
    p.add_argument(
        "--compress",
        action="append",
        default=[],
        metavar="KEY=SYNTAX",
        help="store objects compressed at rest: KEY is a Modality, a SOP Class UID or *, "
        "SYNTAX a name from `dicomhub codecs` or a UID (repeatable; first match wins)",
    )
    p.add_argument(
        "--allow-lossy-compression",
        action="store_true",
        default=None,
        help="allow --compress rules with a lossy transfer syntax",
    )
    p.add_argument(
        "--validation-policy",
        choices=["record", "warn", "reject"],
        help="objects that break their IOD: record the findings (default), answer with a "
        "warning status, or refuse them",
    )
    p.add_argument(
        "--validation-ae",
        action="append",
        default=[],
        metavar="AET=POLICY",
        help="validation policy for one calling AE (repeatable)",
    )
    p.add_argument(
        "--decode-check",
        choices=["off", "sample", "always"],
        help="decode stored pixel data once after ingest: the first objects of each "
        "syntax (sample, default), every object (always), or none (off)",
    )
    p.add_argument(
        "--deid-export",
        action="append",
        default=[],
        metavar="AET=PROJECT[:OPTION,...]",
        help="C-MOVE to this destination sends only objects de-identified for PROJECT, "
        "with these profile options (repeatable)",
    )
    p.add_argument(
        "--deid-burned-in",
        choices=["refuse", "mask", "allow"],
        help="de-identification of objects that may carry burned-in annotation: refuse "
        "them (default), mask the --deid-mask regions, or allow them",
    )
    p.add_argument(
        "--deid-mask",
        action="append",
        default=[],
        metavar="X,Y,WIDTH,HEIGHT",
        help="a pixel region blanked under --deid-burned-in mask (repeatable)",
    )
    _security_args(p)
    _operations_args(p)
    p.set_defaults(settings_flags=settings_flags(p))


def _security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        dest="auth_required",
        action="store_true",
        default=None,
        help="require every HTTP request and DIMSE association to authenticate",
    )
    p.add_argument(
        "--allow-anonymous-network",
        action="store_true",
        default=None,
        help="listen on a non-loopback address without --auth (not recommended)",
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
    p.add_argument(
        "--oidc-accept-azp",
        action="store_true",
        default=None,
        help="accept tokens whose azp (Keycloak: the client) is the audience, whatever their aud",
    )
    p.add_argument(
        "--oidc-role-claim",
        help="the claim whose values --oidc-role maps: a name or a dotted path (realm_access.roles)",
    )
    p.add_argument(
        "--oidc-role",
        dest="oidc_roles",
        action="append",
        default=[],
        metavar="VALUE=ROLE[@SCOPE]",
        help="a token whose role claim holds VALUE holds ROLE at SCOPE (default archive); repeatable",
    )
    p.add_argument(
        "--label-rule",
        dest="label_rules",
        action="append",
        default=[],
        metavar="LABEL=calling_ae:AET|Keyword:VALUE",
        help="label studies at ingest by calling AE or attribute (repeatable)",
    )
    p.add_argument("--tls-cert", help="PEM certificate (chain) for DICOM TLS and HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", help="PEM CA bundle that client certificates must chain to")
    p.add_argument(
        "--tls-verify-client",
        action="store_true",
        default=None,
        help="require a client certificate signed by --tls-ca",
    )
    p.add_argument("--dimse-tls-port", type=int, help="DICOM TLS port (default: none)")
    p.add_argument("--hl7-port", type=int, help="HL7 v2 (MLLP) port for orders and patients (default: none)")
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
        A parser after :func:`_settings_args` (and nothing else) added its options.

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
        Parsed by a parser that :func:`_settings_args` gave the settings options.

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


def _load(args: argparse.Namespace) -> Settings:
    return load_from_args(args).settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomhub", description="A DICOM archive server.")
    parser.add_argument("--version", action="version", version=f"dicomhub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DIMSE and HTTP server")
    _settings_args(serve, server=True)

    imp = sub.add_parser("import", help="import DICOM files and folders (recursive)")
    _settings_args(imp)
    imp.add_argument("paths", nargs="+", help="files or folders")
    imp.add_argument("--jobs", type=int, default=4, help="parallel files (default 4)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")

    ls = sub.add_parser("ls", help="list what the archive holds")
    _settings_args(ls)
    ls.add_argument("--level", choices=["patient", "study", "series"], default="study")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    db = sub.add_parser("db", help="index database operations")
    _settings_args(db)
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply migrations")

    conflicts = sub.add_parser("conflicts", help="list refused copies kept in quarantine")
    _settings_args(conflicts)
    conflicts.add_argument("--json", action="store_true")

    assoc = sub.add_parser(
        "associations", help="recent DIMSE associations and totals per calling AE (statistics)"
    )
    _settings_args(assoc)
    assoc.add_argument("--json", action="store_true")
    assoc.add_argument("--limit", type=int, default=50, help="recent associations to list (default 50)")
    assoc.add_argument("--ae", help="only this calling AE title")

    validate = sub.add_parser(
        "validate", help="IOD validation findings of stored objects, and a summary per source AE"
    )
    _settings_args(validate)
    validate.add_argument("--json", action="store_true")
    validate.add_argument("--source", help="only objects from this calling AE title")
    validate.add_argument("--limit", type=int, default=1000)

    codecs = sub.add_parser("codecs", help="transfer syntaxes this install decodes and encodes")
    codecs.add_argument("--json", action="store_true")

    conformance = sub.add_parser(
        "conformance", help="the DICOM conformance statement of the configuration `serve` would run with"
    )
    _settings_args(conformance, server=True)
    conformance.add_argument("--format", choices=["markdown", "html"], default="markdown")
    conformance.add_argument("--output", help="write to FILE instead of standard output")

    check = sub.add_parser(
        "check", help="report stored objects that need attention (exit 1 when there are any)"
    )
    _settings_args(check)
    check.add_argument("--json", action="store_true")
    check.add_argument(
        "--repair",
        action="store_true",
        help="remove orphan blobs older than --grace (indexing again those the index lost)",
    )
    check.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="leave orphans younger than this alone: stores may be in flight (default 3600)",
    )
    check.add_argument(
        "--sizes-only", action="store_true", help="compare blob sizes, not SHA-256 digests (no reading)"
    )

    for module in _command_modules():
        module.add_commands(sub, _settings_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "codecs":
        return _codecs(args)
    unloaded = getattr(args, "run_unloaded", None)
    if unloaded is not None:
        return int(unloaded(args))
    try:
        settings = _load(args)
    except ConfigurationError as exc:
        print(f"dicomhub: configuration error: {exc}", file=sys.stderr)
        return 2
    from dicomhub.bootstrap import configure_logging

    configure_logging(settings.log_level if args.command == "serve" else "WARNING", settings.log_format)
    try:
        if args.command == "serve":
            return _serve(settings)
        if args.command == "import":
            return _import(settings, args)
        if args.command == "ls":
            return _ls(settings, args)
        if args.command == "db":
            return _db(settings)
        if args.command == "conflicts":
            return _conflicts(settings, args)
        if args.command == "check":
            return _check(settings, args)
        if args.command == "associations":
            return _associations(settings, args)
        if args.command == "validate":
            return _validate(settings, args)
        if args.command == "conformance":
            return _conformance(settings, args)
        run = getattr(args, "run", None)
        if run is not None:
            return int(run(settings, args))
    except DicomhubError as exc:
        print(f"dicomhub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2  # pragma: no cover - argparse requires a command


# ------------------------------------------------------------------ serve


def _serve(settings: Settings) -> int:
    refusal = anonymous_network_refusal(settings)
    if refusal is not None:
        print(f"dicomhub: {refusal}", file=sys.stderr)
        return 2
    if settings.dimse_tls_port or settings.https:
        tls_server_context(settings)  # a certificate that cannot be loaded stops serve here
    # Before any metric is counted and any worker spawned (they inherit the directory):
    # every process counts into it, /metrics adds them up; a fresh one per start.
    metrics_dir = prepare_directory(Path(tempfile.mkdtemp(prefix="dicomhub-metrics-")))
    try:
        return _serve_with_metrics(settings)
    finally:
        remove_directory(metrics_dir)


def _serve_with_metrics(settings: Settings) -> int:
    import uvicorn

    from dicomhub.bootstrap import open_archive, run_background_worker, run_dimse_worker, start_hl7_listener
    from dicomhub.conformance import conformance_renderer, http_routes_of
    from dicomhub.dimse.server import DimseWorkers, bind_listener
    from dicomhub.web.app import create_app

    archive = open_archive(settings)  # migrates the index before any worker starts
    # dimse_port 0 with a TLS port: DICOM TLS only (its listener serves as both).
    tls_only = settings.dimse_port == 0 and settings.dimse_tls_port > 0
    try:
        tls_listener = (
            bind_listener(settings.host, settings.dimse_tls_port) if settings.dimse_tls_port else None
        )
        listener = (
            tls_listener if tls_only and tls_listener else bind_listener(settings.host, settings.dimse_port)
        )
    except OSError as exc:
        print(f"dicomhub: cannot listen on {settings.host} for DIMSE: {exc.strerror}", file=sys.stderr)
        archive.close()
        return 1
    workers = DimseWorkers(settings, listener, run_dimse_worker, tls_listener)
    workers.start()
    background = multiprocessing.get_context("spawn").Process(
        target=run_background_worker,
        args=(settings, os.getpid()),
        name="dicomhub-background",
        daemon=True,
    )
    background.start()
    # The statement lists the app's own routes: built on the first request, when `app` exists.
    conformance = conformance_renderer(settings, lambda: http_routes_of(app.routes))

    def processes() -> dict[str, int]:
        found = {"http": os.getpid(), "background": background.pid or 0}
        found.update({f"dimse-{i}": p.pid for i, p in enumerate(workers.processes) if p is not None})
        return found

    app = create_app(
        archive, settings, dimse_alive=workers.alive, conformance=conformance, processes=processes
    )
    try:
        hl7 = start_hl7_listener(settings, archive)
    except OSError as exc:
        where = f"{settings.host}:{settings.hl7_port}"
        print(f"dicomhub: cannot listen on {where} for HL7: {exc.strerror}", file=sys.stderr)
        background.terminate()
        workers.stop()
        archive.close()
        return 1
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        # Our access log (dicomhub.web.observe) has the request id and the principal;
        # log_config None: uvicorn's loggers go through our handler and format.
        access_log=False,
        log_config=None,
        lifespan="off",
        # HTTPS: the same context as DICOM TLS (TLS 1.2+, BCP 195 ciphers, client certificates).
        ssl_context_factory=(lambda _cfg, _default: tls_server_context(settings)) if settings.https else None,
    )
    class _Server(uvicorn.Server):
        # uvicorn stops quietly on a signal; an operator (and a benchmark that
        # sees the process gone) must be able to tell who ended it.
        def handle_exit(self, sig: int, frame: object) -> None:
            LOGGER.warning("signal %s received: shutting down", signal.Signals(sig).name)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # uvicorn raises the signal again once it has stopped, which killed this
            # process before the clean-up below (audit backlog, workers, syslog feed,
            # metrics directory) could run: let run() return instead.
            self._captured_signals.clear()

    # A crash in native code (a codec, the SQLite driver) leaves Python stacks in the log.
    faulthandler.enable()
    server = _Server(config)
    dimse_port = "-" if tls_only else listener.getsockname()[1]
    tls_port = f", DICOM TLS on port {settings.dimse_tls_port}" if settings.dimse_tls_port else ""
    scheme = "https" if settings.https else "http"
    banner = (
        f"dicomhub {__version__}: AE title {settings.aet}, DIMSE on {settings.host}:{dimse_port}{tls_port}"
        f" ({settings.worker_count} workers), HTTP on {scheme}://{settings.host}:{settings.http_port}"
        f" (/healthz), data in {settings.data_dir.resolve()}"
    )
    if settings.log_format == "json":
        LOGGER.info("%s", banner)  # a JSON log stays all JSON
    else:
        print(banner, flush=True)
    if hl7 is not None:
        print(f"dicomhub: HL7 v2 (MLLP) on {settings.host}:{hl7.port}", flush=True)
    try:
        server.run()
    finally:
        if hl7 is not None:
            hl7.close()
        app.state.audit_backlog.close()
        background.terminate()
        workers.stop()
        background.join(5)
        listener.close()
        if tls_listener is not None:
            tls_listener.close()
        archive.close()
    if not server.started:
        print(f"dicomhub: cannot serve HTTP on port {settings.http_port}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ import


def _walk(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            yield path


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    console = Console(stderr=True)
    files = list(_walk(args.paths))
    missing = [p for p in files if not p.exists()]
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = [(str(p), "no such file or folder") for p in missing]
    caller = Caller.cli()

    def one(path: Path) -> tuple[str, str]:
        if path.name.upper() == "DICOMDIR":
            return "skipped", "DICOMDIR (a media directory, not an object)"
        try:
            result = archive.ingest.store_part10_file(path, caller)
        except OSError as exc:
            return "rejected", f"cannot read: {exc.strerror}"
        except DicomhubError as exc:
            return "rejected", str(exc)
        if result.outcome is StoreOutcome.ALREADY_PRESENT:
            return "already present", ""
        return result.outcome.value, ""

    existing = [p for p in files if p.exists()]
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task("importing", total=len(existing))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for path, (outcome, reason) in zip(existing, pool.map(one, existing), strict=True):
                counts[outcome] += 1
                if outcome == "rejected":
                    rejected.append((str(path), reason))
                progress.advance(task)
    archive.close()
    counts["rejected"] += len(missing)
    out = Console()
    table = Table(title="dicomhub import")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("stored", "replaced", "already present", "skipped", "rejected"):
        if counts[outcome] or outcome in ("stored", "already present", "rejected"):
            table.add_row(outcome, str(counts[outcome]))
    out.print(table)
    for name, reason in rejected:
        print(f"rejected: {name}: {reason}")  # one line each, unwrapped: grep-able
    return 1 if rejected else 0


# ------------------------------------------------------------------ ls


def _ls(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    level = Level.parse(args.level)
    keys = _LS_KEYS[level]
    query = Query(level=level, return_keys=keys)
    rows: list[dict[str, Any]] = []
    for match in archive.search.search(query, Caller.cli()):
        row: dict[str, Any] = {}
        for key in keys:
            value = match.get(key)
            if key == "ModalitiesInStudy":
                row[key] = list(value or [])
            elif key in _INTEGER_KEYS:
                row[key] = int(value) if value not in (None, "") else None
            else:
                row[key] = str(value) if value is not None else ""
        rows.append(row)
    archive.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"dicomhub: {len(rows)} {level.value.lower()} entries")
    for key in keys:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                "\\".join(v) if isinstance(v, list) else ("" if v is None else str(v))
                for v in row.values()
            )
        )
    Console().print(table)
    return 0


# ------------------------------------------------------------------ db, conflicts


def _db(settings: Settings) -> int:
    from dicomhub.bootstrap import open_archive

    open_archive(settings, upgrade=True).close()
    print("dicomhub: index schema is up to date")
    return 0


def _conflicts(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    rows = archive.index.conflicts()
    archive.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = Table(title=f"dicomhub: {len(rows)} refused copies")
    for col in ("at", "kind", "sop_instance_uid", "source_ae_title", "blob_key", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["at"]),
            r["kind"],
            r["sop_instance_uid"],
            r["source_ae_title"] or "",
            r["blob_key"],
            r["detail"],
        )
    Console().print(table)
    return 0


# ------------------------------------------------------------------ conformance


def _conformance(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    from dicomhub.bootstrap import open_archive
    from dicomhub.conformance import build_statement, http_routes_of, render
    from dicomhub.web.app import create_app

    # The HTTP routes are those of the app `serve` builds; an empty throw-away
    # archive stands in for the data dir, which is neither needed nor touched.
    with tempfile.TemporaryDirectory(prefix="dicomhub-conformance-") as tmp:
        scratch = dataclasses.replace(settings, data_dir=Path(tmp), database_url="")
        archive = open_archive(scratch)
        try:
            routes = http_routes_of(create_app(archive, scratch).routes)
        finally:
            archive.close()
    text = render(build_statement(settings, routes), args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ codecs, check, associations


def _validate(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        findings = archive.validation.findings(args.source, max(1, args.limit))
        summary = archive.validation.summary()
    finally:
        archive.close()
    if args.source:
        summary = [s for s in summary if s["source_ae_title"] == args.source]
    if args.json:
        print(json.dumps({"summary": summary, "findings": findings}, indent=2, default=str))
        return 0
    console = Console()
    table = Table(title="dicomhub: IOD validation per source")
    for col in ("source AE", "checked", "with errors", "with warnings", "rejected", "most frequent"):
        table.add_column(col, overflow="fold")
    for s in summary:
        top = "; ".join(f"{t['attribute']} ({t['code']}) x{t['instances']}" for t in s["top_findings"][:3])
        table.add_row(
            str(s["source_ae_title"] or "(not DIMSE)"),
            str(s["instances_checked"]),
            str(s["instances_with_errors"]),
            str(s["instances_with_warnings"]),
            str(s["instances_rejected"]),
            top,
        )
    console.print(table)
    detail = Table(title=f"{len(findings)} findings")
    for col in ("severity", "sop_instance_uid", "source", "module", "attribute", "message"):
        detail.add_column(col, overflow="fold")
    for f in findings:
        detail.add_row(
            f["severity"], f["sop_instance_uid"], f["source_ae_title"] or "", f["module"] or "",
            f["attribute"] or "", f["message"],
        )  # fmt: skip
    console.print(detail)
    return 0


def _associations(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        recent = archive.statistics.recent(max(1, args.limit), args.ae)
        totals = archive.statistics.totals()
    finally:
        archive.close()
    if args.json:
        print(json.dumps({"recent": recent, "totals": totals}, indent=2))
        return 0
    console = Console()
    per_ae = Table(title="dicomhub: associations per calling AE")
    for col in ("calling AE", "outcome", "associations", "refused contexts", "bytes received"):
        per_ae.add_column(col, overflow="fold")
    for row in totals["associations"]:
        per_ae.add_row(
            row["calling_ae_title"],
            row["outcome"],
            str(row["associations"]),
            str(row["rejected_contexts"]),
            str(row["bytes_received"]),
        )
    console.print(per_ae)
    ops = Table(title="DIMSE operations")
    for col in ("calling AE", "operation", "status", "count"):
        ops.add_column(col)
    for row in totals["operations"]:
        ops.add_row(row["calling_ae_title"], row["operation"], row["status"], str(row["count"]))
    console.print(ops)
    last = Table(title=f"last {len(recent)} associations")
    for col in ("started", "calling -> called", "from", "outcome", "contexts ok/refused", "operations"):
        last.add_column(col, overflow="fold")
    for r in recent:
        refused = [c[0] for c in (r["contexts"] or []) if c[1] != 0]
        last.add_row(
            r["started_at"],
            f"{r['calling_ae_title']} -> {r['called_ae_title']}",
            r["peer_host"],
            r["outcome"] + (f" ({r['reason']})" if r["reason"] else ""),
            f"{r['accepted_contexts']}/{r['rejected_contexts']}"
            + (f" refused: {', '.join(refused[:5])}" if refused else ""),
            ", ".join(f"{k} {v}" for k, v in sorted(r["operations"].items())),
        )
    console.print(last)
    return 0


def _codecs(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from dicomhub.codec import transfer_syntaxes

    syntaxes = transfer_syntaxes()
    if args.json:
        print(json.dumps([dataclasses.asdict(ts) for ts in syntaxes], indent=2))
        return 0
    table = Table(title="dicomhub: transfer syntaxes in this install")
    for col in ("name", "UID", "title", "lossy", "decode", "encode"):
        table.add_column(col, overflow="fold")
    for ts in syntaxes:
        table.add_row(
            ts.name,
            ts.uid,
            ts.title,
            "lossy" if ts.lossy else "",
            "yes" if ts.can_decode else "no",
            "yes" if ts.can_encode else "no",
        )
    Console().print(table)
    # One line per syntax rather than two more columns: the chains would be folded
    # mid-word in an 80-column table. The fast path comes first, GDCM only for what
    # it misses (docs/transcoding.md, "Decoders").
    print("decoders, in the order tried (gdcm-fallback only when those before it fail on a frame):")
    width = max(len(ts.name) for ts in syntaxes)
    for ts in syntaxes:
        encoders = " → ".join(ts.encoders) or "(decode only)"
        print(f"  {ts.name:<{width}}  {' → '.join(ts.decoders) or '-'};  encoders: {encoders}")
    return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        failures = archive.decode_check.failures()
        decoders = archive.decode_check.decoders()
        report = archive.storage_check.check(
            digests=not args.sizes_only, repair=args.repair, grace=max(0.0, args.grace)
        )
    finally:
        archive.close()
    if args.json:
        storage = dataclasses.asdict(report)
        print(json.dumps({"decode_failures": failures, "decoders": decoders, "storage": storage}, indent=2))
    else:
        console = Console()
        table = Table(title=f"dicomhub: {len(failures)} stored objects whose pixel data does not decode")
        for col in ("checked_at", "sop_instance_uid", "transfer_syntax_uid", "reason"):
            table.add_column(col, overflow="fold")
        for f in failures:
            table.add_row(f["checked_at"], f["sop_instance_uid"], f["transfer_syntax_uid"], f["reason"] or "")
        console.print(table)
        if decoders:
            # gdcm-fallback rows: what only GDCM reads (docs/transcoding.md, "Decoders").
            used = Table(title="dicomhub: decoded objects by decoder (the decode check)")
            for col in ("transfer_syntax_uid", "decoder", "objects"):
                used.add_column(col, overflow="fold")
            for d in decoders:
                used.add_row(d["transfer_syntax_uid"], d["decoder"] or "(not recorded)", str(d["objects"]))
            console.print(used)
        problems = Table(
            title=f"dicomhub: index vs storage: {report.referenced} blobs referenced, {report.stored} "
            f"stored, {len(report.problems)} problems"
        )
        for col in ("problem", "blob", "sop_instance_uid", "detail"):
            problems.add_column(col, overflow="fold")
        for p in report.problems:
            problems.add_row(p.kind, p.blob_key, p.sop_instance_uid or "", p.detail)
        console.print(problems)
        if args.repair:
            console.print(
                f"repair: {len(report.removed)} orphans removed, {len(report.reindexed)} indexed again, "
                f"{report.skipped_young} younger than {args.grace:g} s left alone"
            )
    return 1 if failures or report.problems else 0

"""``dicomhub serve`` and ``dicomhub conformance``: the server, and the statement of what it would run.

``serve`` only parses here; the processes it starts and stops are the
composition root's (:func:`dicomhub.bootstrap.processes.serve`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dicomhub.cli.options import SERVER
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.config.checks import anonymous_network_refusal

__all__: list[str] = []


@command("serve", help="run the DIMSE and HTTP server", shared=SERVER, logs_at_configured_level=True)
def _serve(settings: Settings, args: argparse.Namespace) -> int:
    refusal = anonymous_network_refusal(settings)
    if refusal is not None:
        print(f"dicomhub: {refusal}", file=sys.stderr)
        return 2
    from dicomhub.bootstrap.processes import serve

    serve(settings)
    return 0


@command(
    "conformance",
    help="the DICOM conformance statement of the configuration `serve` would run with",
    shared=SERVER,
    args=(
        arg("--format", choices=["markdown", "html"], default="markdown"),
        arg("--output", help="write to FILE instead of standard output"),
    ),
)
def _conformance(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from dicomhub.bootstrap import open_archive
    from dicomhub.conformance import build_statement, http_routes_of, render
    from dicomhub.web.app import create_app

    # The HTTP routes are those of the app `serve` builds; an empty throw-away
    # archive stands in for the data dir, which is neither needed nor touched.
    with tempfile.TemporaryDirectory(prefix="dicomhub-conformance-") as tmp:
        scratch = dataclasses.replace(settings, data_dir=Path(tmp), database_url="")
        with open_archive(scratch) as archive:
            routes = http_routes_of(create_app(archive, scratch).routes)
    text = render(build_statement(settings, routes), args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0

"""``dicomhub check``, ``validate``, ``associations`` and ``codecs``: what needs attention, and what
this install can do."""

from __future__ import annotations

import argparse
import json

from dicomhub.cli.options import ARCHIVE, INGEST
from dicomhub.cli.registry import arg, command, standalone
from dicomhub.config import Settings

__all__: list[str] = []


@command(
    "associations",
    help="recent DIMSE associations and totals per calling AE (statistics)",
    shared=ARCHIVE,
    args=(
        arg("--json", action="store_true"),
        arg("--limit", type=int, default=50, help="recent associations to list (default 50)"),
        arg("--ae", help="only this calling AE title"),
    ),
)
def _associations(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        recent = archive.statistics.recent(max(1, args.limit), args.ae)
        totals = archive.statistics.totals()
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


@command(
    "validate",
    help="IOD validation findings of stored objects, and a summary per source AE",
    shared=ARCHIVE,
    args=(
        arg("--json", action="store_true"),
        arg("--source", help="only objects from this calling AE title"),
        arg("--limit", type=int, default=1000),
    ),
)
def _validate(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        findings = archive.validation.findings(args.source, max(1, args.limit))
        summary = archive.validation.summary()
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


@standalone(
    "codecs",
    help="transfer syntaxes this install decodes and encodes",
    args=(arg("--json", action="store_true"),),
)
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


@command(
    "check",
    help="report stored objects that need attention (exit 1 when there are any)",
    # --repair indexes again the blobs the index lost, through ingest.
    shared=INGEST,
    args=(
        arg("--json", action="store_true"),
        arg(
            "--repair",
            action="store_true",
            help="remove orphan blobs older than --grace (indexing again those the index lost)",
        ),
        arg(
            "--grace",
            type=float,
            default=3600.0,
            metavar="SECONDS",
            help="leave orphans younger than this alone: stores may be in flight (default 3600)",
        ),
        arg("--sizes-only", action="store_true", help="compare blob sizes, not SHA-256 digests (no reading)"),
    ),
)
def _check(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        failures = archive.decode_check.failures()
        decoders = archive.decode_check.decoders()
        report = archive.storage_check.check(
            digests=not args.sizes_only, repair=args.repair, grace=max(0.0, args.grace)
        )
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

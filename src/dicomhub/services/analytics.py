"""The metadata export: the index and the stored headers as Parquet files, written
incrementally from the change feed, for downstream analytics (DuckDB, pandas, Spark).

Each run continues where the last ended (``_export-state.json`` in the output folder
holds the last change log sequence number written) and writes one new file,
``metadata-FIRST-LAST.parquet``, with one row per change that concerns metadata:

- ``created`` (an instance stored): the instance's indexed attributes from patient to
  instance level and its header as DICOM JSON (bulk data left out);
- ``updated`` (a study whose patient was corrected): the current rows of each of the
  study's instances again;
- ``deleted`` (any level): a row naming what was deleted (``level``, ``uid``), the
  attribute columns empty, so that a reader drops what it holds of it.

A reader wanting the current state keeps, per SOP Instance UID, the row with the
highest ``seq`` and drops deleted entities. The file is written under a temporary name
and renamed, then the state file is replaced the same way: a run stopped midway
leaves either nothing or a whole file, and the next run writes what was not recorded.
The schema is documented in docs/analytics.md (:func:`schema` is its source).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomhub.index.analytics import METADATA_COLUMNS, MetadataRows
from dicomhub.services.changes import ChangeLog

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ExportResult", "MetadataExport", "schema"]

_STATE = "_export-state.json"  # "_": Arrow, Spark and DuckDB folder readers skip it


def schema() -> pa.Schema:
    """The columns of every exported file, in order.

    pyarrow is imported here, not with the module: it adds about 60 MB to a process,
    and every process of the server imports this module but only the export runs it.
    """
    import pyarrow as pa

    typed = {
        "series_number": pa.int32(),
        "instance_number": pa.int32(),
        "size": pa.int64(),
        "received_at": pa.timestamp("us", tz="UTC"),
    }  # the other attribute columns are text
    return pa.schema(
        [
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("change_type", pa.string(), nullable=False),
            pa.field("level", pa.string(), nullable=False),
            pa.field("uid", pa.string(), nullable=False),
            pa.field("changed_at", pa.timestamp("us", tz="UTC"), nullable=False),
            *(pa.field(name, typed.get(name, pa.string())) for name in METADATA_COLUMNS),
            pa.field("header_json", pa.string()),
        ]
    )


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one run wrote: the new file (None when nothing had changed) and its rows."""

    file: Path | None
    rows: int
    first: int  # the first and last change log sequence numbers covered
    last: int


class MetadataExport:
    """Writes the changes after the last export as one Parquet file."""

    def __init__(
        self,
        log: ChangeLog,
        rows: MetadataRows,
        header_json: Callable[[Sequence[int]], dict[int, str]],
        page: int = 5000,
    ) -> None:
        self._log = log
        self._rows = rows
        self._header_json = header_json
        self._page = page

    @staticmethod
    def position(output: Path) -> int:
        """The last sequence number exported to ``output`` (0 before the first run)."""
        try:
            return int(json.loads((output / _STATE).read_text())["last"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{output / _STATE} is damaged: {exc}") from exc

    def export(self, output: Path, max_rows: int = 200_000) -> ExportResult:
        """Export the changes after the last run (at most about ``max_rows`` rows per run:
        a larger backlog takes several runs, each a file)."""
        output.mkdir(parents=True, exist_ok=True)
        since = first = self.position(output)
        records: list[dict[str, Any]] = []
        while len(records) < max_rows:
            changes = self._log.changes(since, self._page)
            if not changes:
                break
            records += self._records(changes)
            since = int(changes[-1]["seq"])
        if since == first:
            return ExportResult(None, 0, first, first)
        path = output / f"metadata-{first + 1:012d}-{since:012d}.parquet"
        import pyarrow as pa
        import pyarrow.parquet as pq

        _atomically(path, lambda tmp: pq.write_table(pa.Table.from_pylist(records, schema=schema()), tmp))
        _atomically(output / _STATE, lambda tmp: tmp.write_text(json.dumps({"last": since}) + "\n"))
        return ExportResult(path, len(records), first + 1, since)

    def _records(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stored = [str(c["uid"]) for c in changes if (c["change_type"], c["level"]) == ("created", "IMAGE")]
        current = {r["sop_instance_uid"]: r for r in self._rows.instances(stored)} if stored else {}
        out: list[dict[str, Any]] = []
        for c in changes:
            base = {"seq": int(c["seq"]), "change_type": str(c["change_type"]), "level": str(c["level"]),
                    "uid": str(c["uid"]), "changed_at": c["at"]}  # fmt: skip
            kind = (base["change_type"], base["level"])
            if kind == ("created", "IMAGE") and base["uid"] in current:
                out.append({**base, **current[base["uid"]]})
            elif kind == ("updated", "STUDY"):
                out += [{**base, **r} for r in self._rows.study_instances(base["uid"])]
            elif base["change_type"] == "deleted":
                out.append(base)
        headers = self._header_json([r["instance_pk"] for r in out if "instance_pk" in r])
        for r in out:
            pk = r.pop("instance_pk", None)
            r["header_json"] = headers.get(pk) if pk is not None else None
        return out


def _atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, flushed, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

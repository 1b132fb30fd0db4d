"""Write the decode table of ``docs/transcoding.md`` (issue 16).

Decodes every pixel-bearing file of pydicom's test files and pydicom-data with
dicomhub and with the peers (GDCM's ``gdcmconv``, else DCMTK) through the same
loop the test ``tests/unit/test_decode_survey.py`` runs (``tests/decodesurvey.py``),
and replaces the table between the ``decode-table`` markers in the docs. The test
fails when the docs no longer hold what this script would write.

    .venv/bin/python benchmarks/decode_table.py            # rewrite the table
    .venv/bin/python benchmarks/decode_table.py --check    # exit 1 when it is stale

Needs ``gdcmconv`` (libgdcm-tools) and DCMTK (``scripts/install-test-deps.sh``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.decodesurvey import FileResult, survey, table_markdown  # noqa: E402

DOCS = ROOT / "docs" / "transcoding.md"
START = "<!-- decode-table:start -->\n"
END = "<!-- decode-table:end -->\n"


def replace_table(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    head, _, rest = text.partition(START)
    _, found, tail = rest.partition(END)
    if not found:
        raise SystemExit(f"{DOCS}: the {START.strip()} / {END.strip()} markers are missing")
    return head + START + table + END + tail


def summary(results: list[FileResult]) -> str:
    """One line per outcome, for the terminal."""
    counts = collections.Counter(
        (r.reference or "no peer", r.decoder or "dicomhub fails", r.comparison) for r in results
    )
    return "\n".join(f"{n:4d}  peer {p}, decoder {d}: {c}" for (p, d, c), n in sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the docs table is stale")
    args = parser.parse_args()
    started = time.monotonic()
    results = survey()
    print(summary(results))
    print(f"{len(results)} files in {time.monotonic() - started:.1f} s")
    text = DOCS.read_text(encoding="utf-8")
    updated = replace_table(text, table_markdown(results))
    if args.check:
        if updated != text:
            print(f"{DOCS} is stale: run benchmarks/decode_table.py")
            return 1
        return 0
    DOCS.write_text(updated, encoding="utf-8")
    print(f"wrote the table in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

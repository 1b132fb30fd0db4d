"""The documentation: relative links resolve, and no internal references leak into it.

Checks README.md, docs/*.md and benchmarks/README.md: every relative link points to a file
of the repository (and to an existing heading when it carries a ``#fragment``, with GitHub's
anchor slugs), and no text names an issue number, ``../shared`` or a ``/work/`` path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINKED = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKED = [*LINKED, ROOT / "benchmarks" / "README.md"]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
_INTERNAL = [
    (re.compile(r"\bissues? \d+", re.IGNORECASE), "an issue number"),
    (re.compile(r"\.\./shared"), "a path outside the repository (../shared)"),
    (re.compile(r"/work/"), "a path outside the repository (/work/)"),
]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for no, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((no, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link outside code."""
    out = []
    for no, line in _prose_lines(path.read_text(encoding="utf-8")):
        line = _INLINE_CODE.sub("", line)
        out += [(no, m.group(1)) for m in _LINK.finditer(line)]
        ref = _REF_DEF.match(line)
        if ref:
            out.append((no, ref.group(1)))
    return out


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for no, target in links(doc):
        if _is_external(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(ROOT)}:{no}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{where} (outside the repository)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{where} (no heading #{fragment})")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_references(doc: Path) -> None:
    found = [
        f"{doc.relative_to(ROOT)}:{no}: {what}: {line.strip()}"
        for no, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        for pattern, what in _INTERNAL
        if pattern.search(line)
    ]
    assert not found, "internal references:\n" + "\n".join(found)


def test_index_links_every_page() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index) if not _is_external(t)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md") if p.name != "index.md"}
    assert not pages - linked, f"pages missing from docs/index.md: {sorted(p.name for p in pages - linked)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("What counts as the same object", "what-counts-as-the-same-object"),
        ("Scale out: PostgreSQL and several nodes", "scale-out-postgresql-and-several-nodes"),
        (
            "`dimse_bench.py`: DIMSE throughput, dicomhub vs Orthanc",
            "dimse_benchpy-dimse-throughput-dicomhub-vs-orthanc",
        ),
        ("Blob storage: S3, check and migration", "blob-storage-s3-check-and-migration"),
        ("401 / 403 from HTTP", "401--403-from-http"),
    ],
)
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor

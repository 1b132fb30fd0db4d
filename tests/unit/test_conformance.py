"""The conformance statement: built from the negotiated contexts, every PS3.2 section, valid HTML.

``docs/conformance.md`` must be what ``dicomhub conformance`` prints for the
default configuration: a change in negotiation (or in the routes, codecs or
statuses) that is not regenerated fails here. Regenerate with::

    dicomhub conformance --output docs/conformance.md
"""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from dicomhub.bootstrap import open_archive
from dicomhub.config import RemoteAE, Settings
from dicomhub.conformance import build_statement, http_routes_of, render_html, render_markdown
from dicomhub.conformance.model import ConformanceStatement
from dicomhub.dimse.acse import acceptor_contexts
from dicomhub.dimse.server import association_config
from dicomhub.web.app import create_app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"

SECTIONS = (
    "1 Conformance Statement Overview",
    "2 Table of Contents",
    "3 Introduction",
    "3.1 Revision History",
    "3.2 Audience",
    "3.3 Remarks",
    "3.4 Terms and Definitions",
    "3.5 References",
    "4 Networking",
    "4.1 Implementation Model",
    "4.1.1 Application Data Flow",
    "4.1.2 Functional Definition of AEs",
    "4.1.3 Sequencing of Real-World Activities",
    "4.2 AE Specifications",
    "4.2.1.1 SOP Classes",
    "4.2.1.2 Association Policies",
    "4.2.1.2.1 General",
    "4.2.1.2.2 Number of Associations",
    "4.2.1.2.3 Asynchronous Nature",
    "4.2.1.2.4 Implementation Identifying Information",
    "4.2.1.3 Association Initiation Policy",
    "4.2.1.4 Association Acceptance Policy",
    "4.2.1.5 SOP Specific Conformance",
    "4.3 Network Interfaces",
    "4.4 Configuration",
    "4.4.1 AE Title/Presentation Address Mapping",
    "4.4.2 Parameters",
    "4.5 DICOMweb Services (PS3.18)",
    "5 Media Interchange",
    "6 Support of Character Sets",
    "7 Security",
    "8 Annexes",
    "8.1 IOD Contents",
    "8.2 Data Dictionary of Private Attributes",
    "8.3 Coded Terminology and Templates",
)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("conformance"))
    archive = open_archive(settings)
    try:
        return http_routes_of(create_app(archive, settings).routes)
    finally:
        archive.close()


@pytest.fixture(scope="module")
def statement(routes: list[tuple[str, str]]) -> ConformanceStatement:
    return build_statement(Settings(), routes)


def test_claims_are_exactly_the_acceptor_contexts(statement: ConformanceStatement) -> None:
    expected = {
        (str(cx.abstract_syntax), str(ts), bool(cx.scu_role))
        for cx in acceptor_contexts(association_config(Settings()))
        for ts in cx.transfer_syntax
    }
    claimed = statement.accepted_pairs()
    assert len(claimed) == len(set(claimed)), "a context is listed twice"
    assert set(claimed) == expected


def test_storage_grouped_only_when_identical(statement: ConformanceStatement) -> None:
    config = association_config(Settings())
    for group in statement.groups("storage"):
        syntaxes = [ts.uid for ts in group.transfer_syntaxes]
        for uid, _name in group.abstract_syntaxes:
            assert list(config.storage_contexts[uid]) == syntaxes
    assert len(statement.storage_sop_classes) == len(config.storage_contexts)


def test_every_section_present(statement: ConformanceStatement) -> None:
    md = render_markdown(statement)
    headings = [line.lstrip("#").strip() for line in md.splitlines() if line.startswith("#")]
    for section in SECTIONS:
        assert section in headings, section
    for uid, _name in statement.storage_sop_classes:
        assert f"`{uid}`" in md
    for needle in ("No TLS", "no authentication", "0xC401", "0xA801", "Implementation Class UID", "QIDO-RS"):
        assert needle.lower() in md.lower(), needle
    # TOC links point at existing anchors.
    assert "(#4-networking)" in md and "(#8-annexes)" in md


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "br", "link", "img", "hr", "input"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.links: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        href = values.get("href")
        if href and href.startswith("#"):
            self.links.add(href[1:])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_html_well_formed(statement: ConformanceStatement) -> None:
    page = render_html(statement)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert checker.links and checker.links <= checker.ids, checker.links - checker.ids
    assert page.count("<h2") == render_markdown(statement).count("\n## ")
    assert "<code>1.2.840.10008.1.1</code>" in page


def test_html_escapes(routes: list[tuple[str, str]]) -> None:
    remote = RemoteAE("<b>&X", "host", 104)
    page = render_html(build_statement(Settings(remote_aes=(remote,)), routes))
    assert "<b>&X" not in page and "&lt;b&gt;&amp;X" in page


def test_configuration_shows(routes: list[tuple[str, str]]) -> None:
    settings = Settings(
        aet="ARCHIVE",
        max_associations=7,
        known_aes_only=True,
        remote_aes=(RemoteAE("VIEWER", "10.0.0.5", 11112),),
        database_url="postgresql://user:secret@db/dicomhub",
    )
    md = render_markdown(build_statement(settings, routes))
    assert "At most 7 concurrent associations" in md
    assert "`VIEWER` | `10.0.0.5` | 11112" in md
    assert "known AEs only is on" in md
    assert "secret" not in md and "postgresql://user:***@db/dicomhub" in md


def _get(app: Starlette, params: dict[str, str] | None = None, accept: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Accept": accept} if accept else {}
            return await client.get("/conformance", params=params, headers=headers)

    return asyncio.run(go())


def test_http_endpoint(tmp_path: Path, routes: list[tuple[str, str]]) -> None:
    settings = Settings(data_dir=tmp_path)
    statement = build_statement(settings, routes)
    archive = open_archive(settings)
    try:
        docs = {"markdown": render_markdown(statement), "html": render_html(statement)}
        app = create_app(archive, settings, conformance=docs.__getitem__)
        r = _get(app)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text == docs["html"]
        r = _get(app, {"format": "markdown"})
        assert r.headers["content-type"].startswith("text/markdown") and r.text == docs["markdown"]
        assert _get(app, accept="text/markdown").text == docs["markdown"]
        assert _get(app, {"format": "pdf"}).status_code == 400
        assert _get(create_app(archive, settings)).status_code == 404
    finally:
        archive.close()


def test_docs_file_is_up_to_date(statement: ConformanceStatement) -> None:
    assert DOCS.exists(), "run: dicomhub conformance --output docs/conformance.md"
    assert DOCS.read_text(encoding="utf-8") == render_markdown(statement), (
        "docs/conformance.md is out of date; run: dicomhub conformance --output docs/conformance.md"
    )

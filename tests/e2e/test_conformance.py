"""The conformance statement is true of the running server.

- ``GET /conformance?format=markdown`` is the statement built in-process for
  the server's own settings (so the claims below are the served ones);
- every (abstract syntax, transfer syntax) it lists as accepted is proposed
  with pynetdicom, one presentation context per pair, 128 per association,
  and must come back accepted in exactly that transfer syntax, with the roles
  listed (SCP; and SCU as well where the statement says role selection gives
  it, proposed with SCP/SCU role selection);
- a sample of what it does not list is rejected: unregistered abstract
  syntaxes, SOP classes dicomhub does not provide (Modality Worklist FIND,
  Basic Grayscale Print), a private transfer syntax, and every catalogue
  transfer syntax not listed for the non-storage abstract syntaxes;
- DCMTK ``echoscu`` gets Verification.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pynetdicom import AE, build_role
from pynetdicom.presentation import PresentationContext

from dicomhub.bootstrap import open_archive
from dicomhub.codec import transfer_syntaxes
from dicomhub.config import Settings
from dicomhub.conformance import build_statement, http_routes_of, render_markdown
from dicomhub.conformance.model import ConformanceStatement
from dicomhub.web.app import create_app
from tests.backends import backend_env

from .helpers import HOST, DicomhubServer, echo, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

_MAX_CONTEXTS = 128
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_VERIFICATION = "1.2.840.10008.1.1"
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

#: (abstract syntax, transfer syntax, role selection proposed: SCU and SCP)
Proposal = tuple[str, str, bool]


@pytest.fixture(scope="module")
def statement(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> ConformanceStatement:
    """The statement of ``server``, built in-process from the same settings it was started with."""
    backend = backend_env(server.data_dir)  # the database and storage DICOMHUB_TEST_BACKEND gave it
    settings = Settings(
        data_dir=server.data_dir,
        aet=server.aet,
        dimse_port=server.dimse_port,
        http_port=server.http_port,
        host=HOST,
        database_url=backend.get("DICOMHUB_DATABASE_URL", ""),
        storage_url=backend.get("DICOMHUB_STORAGE_URL", ""),
    )
    scratch = Settings(data_dir=tmp_path_factory.mktemp("conformance-routes"))
    archive = open_archive(scratch)
    try:
        routes = http_routes_of(create_app(archive, scratch).routes)
    finally:
        archive.close()
    return build_statement(settings, routes)


def _associate(
    server: DicomhubServer, proposals: Sequence[Proposal]
) -> list[tuple[Proposal, PresentationContext | None]]:
    """Propose one context per item; return each with its negotiated context (None if rejected)."""
    assert 0 < len(proposals) <= _MAX_CONTEXTS
    ae = AE(ae_title="CONFSCU")
    ae.acse_timeout = 15
    ae.network_timeout = 15
    for abstract, ts, _roles in proposals:
        ae.add_requested_context(abstract, [ts])
    roles = sorted({abstract for abstract, _ts, with_roles in proposals if with_roles})
    ext: list[Any] = [build_role(uid, scu_role=True, scp_role=True) for uid in roles]
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.aet, ext_neg=ext or None)
    try:
        assert assoc.is_established, f"association not established (rejected={assoc.is_rejected})"
        by_id = {cx.context_id: cx for cx in assoc.accepted_contexts}
        requested = sorted(ae.requested_contexts, key=lambda cx: int(cx.context_id or 0))
        # pynetdicom numbers the requested contexts 1, 3, 5, ... in the order they were added.
        out = []
        for i, proposal in enumerate(proposals):
            out.append((proposal, by_id.get(2 * i + 1)))
        assert len(requested) == len(proposals)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return out


def _batches(items: Sequence[Proposal], size: int = _MAX_CONTEXTS) -> list[Sequence[Proposal]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_served_statement_is_the_one_checked(server: DicomhubServer, statement: ConformanceStatement) -> None:
    r = httpx.get(f"{server.base_url}/conformance", params={"format": "markdown"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/markdown")
    assert r.text == render_markdown(statement)
    html = httpx.get(f"{server.base_url}/conformance", timeout=30)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")


def test_every_claimed_context_is_accepted(server: DicomhubServer, statement: ConformanceStatement) -> None:
    claims = statement.accepted_pairs()
    assert len(statement.storage_sop_classes) > 100 and len(claims) > 3000
    failures: list[str] = []
    for batch in _batches(claims):
        for (abstract, ts, scu_offered), cx in _associate(server, batch):
            if cx is None:
                failures.append(f"{abstract} in {ts}: rejected")
                continue
            if str(cx.transfer_syntax[0]) != ts:
                failures.append(f"{abstract}: accepted in {cx.transfer_syntax[0]}, not {ts}")
            # Requestor's view: as_scu means the server is SCP; as_scp means the server may be SCU.
            if not cx.as_scu:
                failures.append(f"{abstract} in {ts}: server not SCP")
            if scu_offered and not cx.as_scp:
                failures.append(f"{abstract} in {ts}: SCU role not given with role selection")
    assert failures == [], f"{len(failures)} claimed contexts not accepted as stated: {failures[:20]}"


def test_query_retrieve_models_accepted_as_scp(
    server: DicomhubServer, statement: ConformanceStatement
) -> None:
    models = [uid for g in statement.groups("query_retrieve") for uid, _ in g.abstract_syntaxes]
    assert len(models) == 6
    proposals = [(uid, _EXPLICIT_LE, False) for uid in models]
    for (abstract, _ts, _), cx in _associate(server, proposals):
        assert cx is not None and cx.as_scu and not cx.as_scp, abstract


def test_what_is_not_listed_is_rejected(server: DicomhubServer, statement: ConformanceStatement) -> None:
    claimed = {(a, ts) for a, ts, _ in statement.accepted_pairs()}
    abstracts = {a for a, _ts in claimed}
    rng = random.Random(8)
    unregistered = [f"1.2.826.0.1.3680043.9.7433.{rng.randrange(1, 10**9)}" for _ in range(4)]
    not_provided = [
        "1.2.840.10008.5.1.4.33",  # Instance Availability Notification SOP Class
        "1.2.840.10008.5.1.4.1.2.3.1",  # Patient/Study Only Q/R - FIND (retired)
    ]
    assert not set(unregistered + not_provided) & abstracts
    negatives: list[Proposal] = [(uid, _EXPLICIT_LE, False) for uid in unregistered + not_provided]
    negatives.append((_CT_IMAGE, "1.2.826.0.1.3680043.9.7433.1.2", False))  # a private transfer syntax
    # Every catalogue syntax not listed for the non-storage abstract syntaxes (Verification, Q/R, ...).
    for group in statement.accepted:
        if group.kind == "storage":
            continue
        for abstract, _name in group.abstract_syntaxes:
            negatives += [
                (abstract, ts.uid, False) for ts in transfer_syntaxes() if (abstract, ts.uid) not in claimed
            ]
    assert any(a == "1.2.840.10008.5.1.4.1.2.2.1" for a, _, _ in negatives) and len(negatives) > 50
    wrongly_accepted: list[str] = []
    for batch in _batches(negatives, _MAX_CONTEXTS - 1):
        # One Verification context keeps the association established.
        results = _associate(server, [(_VERIFICATION, _EXPLICIT_LE, False), *batch])
        assert results[0][1] is not None
        wrongly_accepted += [f"{a} in {ts}" for (a, ts, _), cx in results[1:] if cx is not None]
    assert wrongly_accepted == []


def test_echoscu_verification(server: DicomhubServer, statement: ConformanceStatement) -> None:
    assert (_VERIFICATION, _EXPLICIT_LE, False) in statement.accepted_pairs()
    rc, out = echo(server)
    assert rc == 0, out


def test_cli_prints_the_same_statement(
    server: DicomhubServer, statement: ConformanceStatement, tmp_path: Path
) -> None:
    out = tmp_path / "c.md"
    rc, text = run_cli(
        "conformance",
        "--data-dir", str(server.data_dir),
        "--aet", server.aet,
        "--dimse-port", str(server.dimse_port),
        "--http-port", str(server.http_port),
        "--host", HOST,
        "--output", str(out),
    )  # fmt: skip
    assert rc == 0, text
    assert out.read_text(encoding="utf-8") == render_markdown(statement)

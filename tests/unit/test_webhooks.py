"""Webhook configuration and delivery on a real SQLite index with a scripted receiver
and a fake clock: where a new webhook starts, which entries are events, order and
signature, retries with backoff, giving up, and a missing secret."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomhub.errors import ConfigurationError
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.index.webhooks import WebhookRepository
from dicomhub.model.caller import Caller
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.webhooks import EVENTS, Webhook, backoff, parse_webhooks
from dicomhub.services.ingest import IngestService
from dicomhub.services.webhooks import WebhookService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

CLI = Caller.cli()
KEY = "s3cret"


class Receiver:
    """Answers each post with the next scripted outcome (an HTTP status, or an OSError)."""

    def __init__(self) -> None:
        self.script: list[int | OSError] = []
        self.bodies: list[dict[str, object]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        expected = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Dicomhub-Signature"] == expected
        outcome = self.script.pop(0) if self.script else 200
        if isinstance(outcome, OSError):
            raise outcome
        if 200 <= outcome < 300:
            self.bodies.append(json.loads(body))
        return outcome


class Setup:
    def __init__(self, tmp: Path, *hooks: Webhook, environ: Mapping[str, str] | None = None) -> None:
        engine = connect_engine(f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.ingest = IngestService(self.index, MemoryBlobStore(), DuplicatePolicy.KEEP)
        self.repo = WebhookRepository(engine)
        self.receiver = Receiver()
        self.now = 0.0
        environ = {"HOOK_KEY": KEY} if environ is None else environ
        self.service = WebhookService(
            hooks, self.index, self.repo, self.receiver, environ, clock=lambda: self.now
        )

    def store(self, **kwargs: object) -> Dataset:
        ds = datagen.make_dataset(rows=8, cols=8, **kwargs)  # type: ignore[arg-type]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.ingest.store_part10(buf.getvalue(), CLI)
        return ds


def hook(events: frozenset[str] = EVENTS, attempts: int = 10) -> Webhook:
    return Webhook("ai", "http://127.0.0.1:9/hook", "env:HOOK_KEY", events, attempts)


def test_a_new_webhook_starts_now_and_delivers_its_events_in_order(tmp_path: Path) -> None:
    s = Setup(tmp_path, hook(frozenset({"stored"})))
    s.store(patient_id="OLD")  # before the webhook's first turn: history, not sent
    assert s.service.step() == 0 and s.receiver.bodies == []
    first, second = s.store(patient_id="P1"), s.store(patient_id="P1")
    assert s.service.step() > 0
    assert [b["uid"] for b in s.receiver.bodies] == [str(first.SOPInstanceUID), str(second.SOPInstanceUID)]
    assert {b["event"] for b in s.receiver.bodies} == {"stored"}
    seqs = [int(str(b["seq"])) for b in s.receiver.bodies]
    assert seqs == sorted(seqs)
    # Patient, study and series creations are passed over: the cursor is at the newest entry.
    assert s.repo.position("ai") == s.index.last_change()
    assert [d["outcome"] for d in s.repo.deliveries("ai")] == ["delivered", "delivered"]


def test_failed_attempts_are_retried_with_backoff_and_later_events_wait(tmp_path: Path) -> None:
    s = Setup(tmp_path, hook(frozenset({"stored"})))
    s.service.step()
    a, b = s.store(), s.store()
    s.receiver.script = [OSError("connection refused"), 503]
    assert s.service.step() == 0 or s.receiver.bodies == []
    assert s.receiver.bodies == [] and s.service.step() == 0  # within the backoff: no attempt
    s.now += backoff(1)
    s.service.step()  # the 503
    assert s.receiver.bodies == []
    s.now += backoff(2)
    s.service.step()
    assert [x["uid"] for x in s.receiver.bodies] == [str(a.SOPInstanceUID), str(b.SOPInstanceUID)]
    log = list(reversed(s.repo.deliveries("ai")))
    assert [(d["uid"], d["attempt"], d["outcome"], d["status_code"]) for d in log] == [
        (str(a.SOPInstanceUID), 1, "failed", None),
        (str(a.SOPInstanceUID), 2, "failed", 503),
        (str(a.SOPInstanceUID), 3, "delivered", 200),
        (str(b.SOPInstanceUID), 1, "delivered", 200),
    ]
    assert "connection refused" in log[0]["error"]


def test_an_event_is_given_up_after_max_attempts_and_the_next_goes(tmp_path: Path) -> None:
    s = Setup(tmp_path, hook(frozenset({"stored"}), attempts=2))
    s.service.step()
    a, b = s.store(), s.store()
    s.receiver.script = [500, 500]
    s.service.step()
    s.now += 10
    s.service.step()
    assert [x["uid"] for x in s.receiver.bodies] == [str(b.SOPInstanceUID)]
    outcomes = [(d["uid"], d["outcome"]) for d in reversed(s.repo.deliveries("ai"))]
    a_uid, b_uid = str(a.SOPInstanceUID), str(b.SOPInstanceUID)
    assert outcomes == [(a_uid, "failed"), (a_uid, "gave-up"), (b_uid, "delivered")]


def test_a_missing_secret_fails_the_attempt_with_its_reason(tmp_path: Path) -> None:
    s = Setup(tmp_path, hook(frozenset({"stored"})), environ={})
    s.service.step()
    s.store()
    s.service.step()
    (attempt,) = s.repo.deliveries("ai")
    assert attempt["outcome"] == "failed" and "HOOK_KEY is not set" in attempt["error"]
    assert s.receiver.bodies == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://h/x", "secret": "env:K"}, "name"),
        ({"name": "a b", "url": "http://h/x", "secret": "env:K"}, "name"),
        ({"name": "a", "url": "ftp://h/x", "secret": "env:K"}, "url"),
        ({"name": "a", "url": "http://h/x", "secret": "plain"}, "env:VARIABLE"),
        ({"name": "a", "url": "http://h/x", "secret": "env:K", "events": ["stored", "x"]}, "unknown event"),
        ({"name": "a", "url": "http://h/x", "secret": "env:K", "max_attempts": 0}, "max_attempts"),
        ({"name": "a", "url": "http://h/x", "secret": "env:K", "colour": "red"}, "unknown key"),
    ],
)
def test_bad_webhook_tables_are_refused_with_the_reason(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_webhooks([table])


def test_webhook_names_are_unique() -> None:
    table = {"name": "a", "url": "http://h/x", "secret": "env:K"}
    assert parse_webhooks([table])[0].events == EVENTS
    with pytest.raises(ConfigurationError, match="same name"):
        parse_webhooks([table, table])

"""Plugins: the ``[plugins]`` settings, the loader's errors, the receive hooks on the
one ingest path (accept, reject with a status, modify, a hook that raises), their
statuses in the DIMSE and STOW-RS tables, and the event followers' at-least-once
cursor."""

from __future__ import annotations

import importlib.metadata
import io
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomhub.bootstrap.plugins import ingest_class
from dicomhub.config import InvalidSettings, load_settings
from dicomhub.dimse.status import store_status
from dicomhub.errors import ConfigurationError, InvalidIdentifier, PluginFailure, RefusedByPlugin
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.ingest import InstanceOrigin, OriginKind, Part10Object, ReceivedDataSet, StoreOutcome
from dicomhub.model.plugins import PluginConfig
from dicomhub.model.routing import parse_routes
from dicomhub.plugins.api import ACCEPT, Modify, Plugin, ReceivedObject, ReceiveResult, Reject
from dicomhub.plugins.host import PluginHost
from dicomhub.plugins.loader import load_plugins
from dicomhub.plugins.receive import HookedIngestService
from dicomhub.services.ingest import IngestService
from dicomhub.services.plugin_events import EventFollower, PluginEventService
from dicomhub.storage.memory import MemoryBlobStore
from dicomhub.web.dicomweb.stow import failure_reason
from tests import datagen

MODALITY = Caller(Channel.DIMSE, "MODALITY", "127.0.0.1")


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------- settings and loader


def test_the_plugins_table_enables_plugins_with_their_settings(tmp_path: Path) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text(
        '[dicomhub]\naet = "HUB"\n\n[plugins]\nenabled = ["one", "two"]\n\n[plugins.two]\nlimit = 3\n'
    )
    settings = load_settings(config_file=config, environ={})
    assert [p.name for p in settings.plugins] == ["one", "two"]
    assert settings.plugins[1].options == {"limit": 3}
    assert load_settings({"plugins": "one,two"}, environ={}).plugins == (
        PluginConfig("one"),
        PluginConfig("two"),
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[plugins]\nenabled = ["a"]\n[plugins.b]\nx = 1\n', "[plugins.b] configures a plugin"),
        ('[plugins]\nenabled = ["a", "a"]\n', "lists a plugin twice"),
        ('[plugins]\nenabled = ["Bad Name"]\n', "cannot name a plugin"),
        ('[plugins]\nenabled = "a"\n', "must be a list"),
    ],
)
def test_a_wrong_plugins_table_is_a_configuration_error(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text(table)
    with pytest.raises(InvalidSettings, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(config_file=config, environ={})


class _Counting(Plugin):
    pass


def _entry_points(**targets: str) -> Any:
    def found() -> Iterable[importlib.metadata.EntryPoint]:
        return [importlib.metadata.EntryPoint(n, v, "dicomhub.plugins") for n, v in targets.items()]

    return found


def _unread() -> Iterable[importlib.metadata.EntryPoint]:
    raise AssertionError("entry points read although no plugin is enabled")


def test_nothing_is_read_when_no_plugin_is_enabled() -> None:
    assert load_plugins((), _unread) == ()


def test_an_enabled_plugin_is_made_with_its_settings_read_only() -> None:
    (plugin,) = load_plugins(
        [PluginConfig("counting", {"k": 1})], _entry_points(counting=f"{__name__}:_Counting")
    )
    assert isinstance(plugin, _Counting)
    assert plugin.name == "counting"
    assert plugin.settings == {"k": 1}
    with pytest.raises(TypeError):
        plugin.settings["k"] = 2  # type: ignore[index]


def _refusing(_settings: Mapping[str, Any]) -> Plugin:
    raise ValueError("limit must be positive")


def _not_a_plugin(_settings: Mapping[str, Any]) -> object:
    return object()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"other": f"{__name__}:_Counting"}, "'missing' is enabled but not installed .*installed: other"),
        ({"missing": "no_such_module_here:Plugin"}, "'missing' cannot be imported"),
        ({"missing": f"{__name__}:_refusing"}, "'missing' refused its settings: ValueError: limit must be"),
        ({"missing": f"{__name__}:_not_a_plugin"}, "made a object, not a dicomhub.plugins.api.Plugin"),
    ],
)
def test_a_plugin_that_cannot_be_loaded_is_named_in_a_configuration_error(
    targets: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_plugins([PluginConfig("missing")], _entry_points(**targets))


def test_a_reject_must_carry_a_failure_status_of_the_allowed_ranges() -> None:
    for status in (0xA700, 0xA7FF, 0xA900, 0xC000, 0xCFFF):
        assert Reject(status, "no").status == status
    for status in (0x0000, 0x0110, 0xB000, 0xA800, 0xFF00):
        with pytest.raises(ValueError, match="not a C-STORE failure status"):
            Reject(status, "no")


def test_the_plugins_status_is_the_c_store_status_and_the_stow_failure_reason() -> None:
    refused = RefusedByPlugin("example", 0xA7F0, "not from there")
    assert store_status(refused) == 0xA7F0
    assert failure_reason(refused) == 0xA7F0
    assert store_status(PluginFailure("boom")) == 0xC210  # processing failure


# ---------------------------------------------------------------- receive hooks on ingest


class _Hooks(Plugin):
    """Refuses calling AE BAD and BodyPartExamined FOOT; stamps InstitutionName; raises on HAND."""

    def on_receive(self, received: ReceivedObject) -> ReceiveResult:
        if received.calling_ae_title == "BAD":
            return Reject(0xA7F0, "not from BAD")
        part = received.get("BodyPartExamined")
        if part == "FOOT":
            return Reject(0xC0F1, "no feet")
        if part == "HAND":
            raise RuntimeError("hands are a bug")
        if part == "KNEE":
            return Modify({"SOPInstanceUID": "1.2.3"})
        return Modify({"InstitutionName": "Stamped", "StudyDescription": None})


class _Reader(Plugin):
    """Sees what the hook before it changed."""

    seen: list[Any]

    def on_receive(self, received: ReceivedObject) -> ReceiveResult:
        self.seen.append(received.get("InstitutionName"))
        return ACCEPT


@pytest.fixture
def hooked(tmp_path: Path) -> tuple[HookedIngestService, _Reader]:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine, lock_dir=tmp_path)
    hooks, reader = _Hooks({}), _Reader({})
    hooks.name, reader.name, reader.seen = "hooks", "reader", []
    host = PluginHost([hooks, reader])
    assert ingest_class(host) is HookedIngestService
    ingest = HookedIngestService(IndexRepository(engine), MemoryBlobStore())
    ingest.hooks = host.receive
    return ingest, reader


def _stored(ingest: IngestService, sop_instance_uid: str) -> Dataset:
    row = ingest.index.get_instance(sop_instance_uid)
    assert row is not None
    return pydicom.dcmread(io.BytesIO(ingest.blobs.read(row.blob_key)))


def test_without_a_receive_hook_the_plain_ingest_service_runs() -> None:
    assert ingest_class(PluginHost([_Counting({})])) is IngestService


def test_a_modified_object_is_stored_changed_and_later_hooks_see_the_change(
    hooked: tuple[HookedIngestService, _Reader],
) -> None:
    ingest, reader = hooked
    ds = datagen.make_dataset(rows=8, cols=8)
    result = ingest.store(Part10Object(encode(ds)), InstanceOrigin(OriginKind.IMPORT), MODALITY)
    assert result.outcome is StoreOutcome.STORED
    stored = _stored(ingest, str(ds.SOPInstanceUID))
    assert stored.InstitutionName == "Stamped"
    assert "StudyDescription" not in stored
    assert stored.PixelData == ds.PixelData
    assert reader.seen == ["Stamped"]


def test_a_c_store_data_set_is_hooked_with_its_calling_ae(
    hooked: tuple[HookedIngestService, _Reader],
) -> None:
    ingest, _reader = hooked
    ds = datagen.make_dataset(rows=8, cols=8)
    data = encode(ds)
    dataset = data[data.index(b"DICM") + 4 :]
    dataset = dataset[12 + int.from_bytes(dataset[8:12], "little") :]  # past the File Meta group
    syntax = str(ds.file_meta.TransferSyntaxUID)
    received = ReceivedDataSet(syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID), dataset)
    bad = InstanceOrigin(OriginKind.C_STORE, calling_ae_title="BAD")
    with pytest.raises(RefusedByPlugin) as refused:
        ingest.store(received, bad, Caller(Channel.DIMSE, "BAD"))
    assert refused.value.status == 0xA7F0
    assert ingest.index.get_instance(str(ds.SOPInstanceUID)) is None
    good = InstanceOrigin(OriginKind.C_STORE, calling_ae_title="MODALITY")
    assert ingest.store(received, good, MODALITY).outcome is StoreOutcome.STORED
    assert _stored(ingest, str(ds.SOPInstanceUID)).InstitutionName == "Stamped"


def test_a_c_store_data_set_whose_uid_differs_from_the_command_is_refused_though_modified(
    hooked: tuple[HookedIngestService, _Reader],
) -> None:
    ingest, _reader = hooked
    ds = datagen.make_dataset(rows=8, cols=8)
    data = encode(ds)
    dataset = data[data.index(b"DICM") + 4 :]
    dataset = dataset[12 + int.from_bytes(dataset[8:12], "little") :]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    received = ReceivedDataSet(syntax, str(ds.SOPClassUID), "1.2.3.4", dataset)
    with pytest.raises(InvalidIdentifier, match="differs from the request's Affected SOP Instance UID"):
        ingest.store(received, InstanceOrigin(OriginKind.C_STORE, calling_ae_title="MODALITY"), MODALITY)
    assert ingest.index.get_instance(str(ds.SOPInstanceUID)) is None


def test_a_route_to_a_plugin_that_cannot_send_is_a_configuration_error() -> None:
    plugin = _Counting({})
    plugin.name = "counting"
    host = PluginHost([plugin])
    (route,) = parse_routes([{"name": "r", "to": ["plugin:counting:x"]}])
    with pytest.raises(ConfigurationError, match="names no enabled plugin with a routing destination"):
        host.check_routes([route])
    (other,) = parse_routes([{"name": "r", "to": ["plugin:absent"]}])
    with pytest.raises(ConfigurationError, match="'plugin:absent' names no enabled plugin"):
        host.check_routes([other])
    with pytest.raises(ConfigurationError, match="a plugin destination is plugin:NAME"):
        parse_routes([{"name": "r", "to": ["plugin:Bad Name"]}])


@pytest.mark.parametrize(
    ("part", "error", "text"),
    [
        ("FOOT", RefusedByPlugin, "refused by plugin hooks: no feet"),
        ("HAND", PluginFailure, "plugin hooks failed: RuntimeError: hands are a bug"),
        ("KNEE", PluginFailure, "may not set 'SOPInstanceUID'"),
    ],
)
def test_a_refused_or_failed_hook_stores_nothing(
    hooked: tuple[HookedIngestService, _Reader], part: str, error: type[Exception], text: str
) -> None:
    ingest, _reader = hooked
    ds = datagen.make_dataset(rows=8, cols=8, body_part=part)
    with pytest.raises(error, match=text):
        ingest.store(Part10Object(encode(ds)), InstanceOrigin(OriginKind.STOW_RS), MODALITY)
    assert ingest.index.get_instance(str(ds.SOPInstanceUID)) is None
    assert list(ingest.blobs.iter_keys()) == []


def test_store_many_keeps_each_refusal_in_its_place(hooked: tuple[HookedIngestService, _Reader]) -> None:
    ingest, _reader = hooked
    parts = [datagen.make_dataset(rows=8, cols=8, body_part=p) for p in ("CHEST", "FOOT", "CHEST")]
    items: list[Any] = [encode(parts[0]), iter([encode(parts[1])]), encode(parts[2])]
    results = ingest.store_many(items, MODALITY, origin=InstanceOrigin(OriginKind.STOW_RS))
    assert [type(r).__name__ for r in results] == ["StoreResult", "RefusedByPlugin", "StoreResult"]
    assert _stored(ingest, str(parts[2].SOPInstanceUID)).InstitutionName == "Stamped"


# ---------------------------------------------------------------- event followers


class _Log:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def changes(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["seq"] > since][:limit]

    def last_change(self) -> int:
        return max(r["seq"] for r in self.rows)


def _row(seq: int, change_type: str, level: str, uid: str) -> dict[str, Any]:
    return {"seq": seq, "change_type": change_type, "level": level, "uid": uid, "at": datetime.now(UTC)}


def test_a_failing_follower_retries_its_entry_and_does_not_hold_up_another() -> None:
    log = _Log([_row(1, "created", "IMAGE", "1.1"), _row(2, "stable", "STUDY", "9"),
                _row(3, "created", "IMAGE", "1.2")])  # fmt: skip
    cursors: dict[str, int] = {}
    got: dict[str, list[tuple[str, str]]] = {"flaky": [], "steady": []}
    failures = [RuntimeError("down")]

    def flaky(event: str, row: Mapping[str, Any]) -> None:
        if row["seq"] == 2 and failures:
            raise failures.pop()
        got["flaky"].append((event, row["uid"]))

    now = [0.0]
    service = PluginEventService(
        [
            EventFollower("flaky", frozenset({"stored", "stable_study"}), flaky),
            EventFollower(
                "steady", frozenset({"stable_study"}), lambda e, r: got["steady"].append((e, r["uid"]))
            ),
        ],
        log,
        lambda name: cursors.get(name, 0),
        cursors.__setitem__,
        clock=lambda: now[0],
    )
    service.step()
    assert got["flaky"] == [("stored", "1.1")] and cursors["flaky"] == 1  # stopped before the failed entry
    assert got["steady"] == [("stable_study", "9")] and cursors["steady"] == 3  # the others passed over
    service.step()
    assert cursors["flaky"] == 1  # still in its backoff
    now[0] = 10.0
    service.step()
    assert got["flaky"] == [("stored", "1.1"), ("stable_study", "9"), ("stored", "1.2")]
    assert cursors["flaky"] == 3

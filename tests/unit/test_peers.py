"""The peer registry: the service, the [[peer]] configuration, roles, and revision 0014
(registered AEs and remote archives moved into ``peer``) on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from dicomhub.bootstrap import open_archive
from dicomhub.config import RemoteAE, load_settings
from dicomhub.errors import ConfigurationError, Conflict, InvalidRequest, NotFound
from dicomhub.index.engine import _alembic_config, connect_engine, migrate
from dicomhub.index.peers import PeerRepository
from dicomhub.model.audit import AuditAction
from dicomhub.model.caller import Caller
from dicomhub.model.migration import RemoteKind
from dicomhub.model.peer import DIMSE_ROLES, Peer, PeerSource, Role
from dicomhub.peerconfig import configured_peers
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.peers import AssociationRefused, PeerService

CLI = Caller.cli()
SECRET = "bearer:s3cr3t-t0ken"


def _open(tmp_path: Path) -> Archive:
    cfg = tmp_path / "dicomhub.toml"
    cfg.write_text(
        'remote_ae = ["VIEWER=10.0.0.5:11112"]\n'
        "[[peer]]\n"
        'name = "cloud"\n'
        'dicomweb_url = "https://pacs.example.org/dicomweb/"\n'
        'auth = "env:CLOUD_TOKEN"\n'
        'roles = ["migration-source"]\n'
    )
    return open_archive(load_settings({"data_dir": tmp_path / "data"}, config_file=cfg, environ={}))


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = _open(tmp_path)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """One archive for the tests that only see requests refused (opening one takes a while)."""
    opened = _open(tmp_path_factory.mktemp("untouched"))
    yield opened
    opened.close()


def test_add_update_remove_and_the_audit_trail(archive: Archive) -> None:
    peers = archive.peers
    added = peers.add(
        Peer(
            "PACS", ae_title="PACS", host="127.0.0.1", port=104, roles=DIMSE_ROLES | {Role.MOVE_DESTINATION}
        ),
        CLI,
    )
    assert added.source is PeerSource.INDEX and added.created_at is not None
    assert peers.destination("PACS") == ("127.0.0.1", 104, "PACS")
    updated = peers.update("PACS", {"port": 11112, "roles": ["store"], "tls": True}, CLI)
    assert (updated.port, updated.roles, updated.tls) == (11112, frozenset({Role.STORE}), True)
    assert peers.destination("PACS") is None  # no longer a move destination
    assert peers.report_destination("PACS") == ("127.0.0.1", 11112, "PACS")
    with pytest.raises(InvalidRequest, match="unknown peer fields"):
        peers.update("PACS", {"name": "other"}, CLI)
    peers.remove("PACS", CLI)
    with pytest.raises(NotFound):
        peers.remove("PACS", CLI)
    with pytest.raises(NotFound):
        peers.update("PACS", {"port": 1}, CLI)
    changes = [e.detail["change"] for e in archive.audit.events(action=AuditAction.SECURITY_CHANGE)]
    assert sorted(changes) == ["peer-add", "peer-remove", "peer-update"]


def test_names_and_ae_titles_are_unique_across_index_and_configuration(archive: Archive) -> None:
    peers = archive.peers
    peers.add(
        Peer("web", dicomweb_url="https://a.example/dicomweb", roles=frozenset({Role.MIGRATION_SOURCE})), CLI
    )
    with pytest.raises(Conflict, match="registered already"):
        peers.add(Peer("web", folder="/x", roles=frozenset({Role.MIGRATION_SOURCE})), CLI)
    with pytest.raises(Conflict, match="configuration"):
        peers.add(Peer("cloud", folder="/x"), CLI)
    with pytest.raises(Conflict, match="AE title VIEWER"):
        peers.add(Peer("viewer2", ae_title="VIEWER", host="10.0.0.6", roles=DIMSE_ROLES), CLI)
    peers.add(Peer("MOD", ae_title="MOD", host="10.0.0.7", roles=frozenset({Role.STORE})), CLI)
    with pytest.raises(Conflict, match="AE title MOD"):
        peers.update("web", {"ae_title": "MOD", "host": "h", "roles": ["query"]}, CLI)
    # Migration peers may share an AE title (two names for one archive); lookups by AE
    # title find the peer that speaks for it.
    peers.add(
        Peer(
            "mod-archive", ae_title="MOD", host="10.0.0.7", port=104, roles=frozenset({Role.MIGRATION_SOURCE})
        ),
        CLI,
    )
    assert peers.by_ae_title("MOD").name == "MOD"  # type: ignore[union-attr]


def test_configured_peers_are_listed_with_their_source_and_read_only(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = archive.peers
    listed = {p.name: p for p in peers.list()}
    assert listed["VIEWER"].source is PeerSource.CONFIG and listed["cloud"].source is PeerSource.CONFIG
    # --remote-ae: everything it could do under --known-aes-only before, and a move destination.
    assert listed["VIEWER"].roles == DIMSE_ROLES | {Role.MOVE_DESTINATION}
    assert listed["cloud"].dicomweb_url == "https://pacs.example.org/dicomweb"  # normalised
    for change in (
        lambda: peers.update("cloud", {"find_limit": 5}, CLI),
        lambda: peers.remove("VIEWER", CLI),
        lambda: peers.put("cloud", {"folder": "/x"}, CLI),
    ):
        with pytest.raises(Conflict, match="configuration file"):
            change()
    # env:VARIABLE credentials are read from the environment the service was given, when used.
    with pytest.raises(ConfigurationError, match="CLOUD_TOKEN"):
        peers.remote("cloud")
    monkeypatch.setitem(peers.environ, "CLOUD_TOKEN", SECRET)  # type: ignore[index]
    assert peers.remote("cloud").auth == SECRET
    assert peers.remote("cloud").kind is RemoteKind.DICOMWEB
    with pytest.raises(InvalidRequest, match="migration-target"):
        peers.remote("cloud", Role.MIGRATION_TARGET)


def test_secrets_are_never_shown(archive: Archive) -> None:
    peer = archive.peers.add(
        Peer(
            "vendor",
            dicomweb_url="https://v.example/rs",
            auth=SECRET,
            roles=frozenset({Role.MIGRATION_TARGET}),
        ),
        CLI,
    )
    assert peer.public()["auth"] == "bearer" and "s3cr3t" not in str(peer.public())
    assert "s3cr3t" not in peer.describe()
    events = archive.audit.events(action=AuditAction.SECURITY_CHANGE)
    assert events and all("s3cr3t" not in str(e.detail) for e in events)
    assert archive.peers.remote("vendor").auth == SECRET  # the migration gets it, nobody else


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        (Peer("../etc", folder="/x"), "peer name"),
        (Peer("a/b", folder="/x"), "peer name"),
        (Peer("", folder="/x"), "peer name"),
        (Peer("x" * 65, folder="/x"), "peer name"),
        (Peer("BAD", ae_title="BAD\\AE", host="h"), "AE title"),
        (Peer("BAD", ae_title="A" * 17, host="h"), "AE title"),
        (Peer("BAD", ae_title="BAD\x01", host="h"), "AE title"),
        (Peer("BAD", ae_title="BAD", host=" "), "needs a host"),
        (Peer("BAD", ae_title="BAD", host="a b"), "host"),
        (Peer("BAD", ae_title="BAD", host="h", port=0), "port"),
        (Peer("BAD", ae_title="BAD", host="h", port=65536), "port"),
        (Peer("BAD", host="h", port=104, dicomweb_url="https://x/"), "port needs an AE title"),
        (Peer("web", dicomweb_url="file:///etc/passwd"), "DICOMweb URL"),
        (Peer("web", dicomweb_url="javascript:alert(1)"), "DICOMweb URL"),
        (Peer("web", dicomweb_url="https://user:pw@x.example/"), "without credentials"),
        (Peer("web", dicomweb_url="https://x.example/?token=1"), "DICOMweb URL"),
        (Peer("web", dicomweb_url="https://x.example/", auth="token"), "auth"),
        (Peer("web", dicomweb_url="https://x.example/", auth="env:1BAD"), "auth"),
        (Peer("web", folder="/x", auth=SECRET), "credentials are for a DICOMweb URL"),
        (Peer("none"), "give an AE title"),
        (
            Peer("mig", folder="/x", roles=frozenset({Role.MIGRATION_SOURCE}), migrate_via=RemoteKind.DIMSE),
            "DIMSE",
        ),
        (
            Peer("dest", dicomweb_url="https://x/", roles=frozenset({Role.MOVE_DESTINATION})),
            "move destination",
        ),
        (Peer("r", folder="/x", retrieve="steal"), "retrieve"),
        (Peer("f", folder="/x", find_limit=-1), "find limit"),
    ],
)
def test_hostile_input_is_refused(untouched: Archive, peer: Peer, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        untouched.peers.add(peer, CLI)
    assert {p.source for p in untouched.peers.list()} == {PeerSource.CONFIG}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": "104"}, "port"),
        ({"port": True}, "port"),
        ({"tls": "yes"}, "tls"),
        ({"roles": ["store", "admin"]}, "unknown peer role"),
        ({"migrate_via": "ftp"}, "migrate_via"),
        ({"host": ["a"]}, "host must be a string"),
        ({"pk": 1}, "unknown peer fields"),
    ],
)
def test_put_refuses_ill_typed_json(untouched: Archive, fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        untouched.peers.put("X", {"ae_title": "X", "host": "h", **fields}, CLI)


def test_put_creates_then_replaces(archive: Archive) -> None:
    peer, created = archive.peers.put("X", {"ae_title": "X", "host": "h", "port": 104, "roles": "store"}, CLI)
    assert created and peer.roles == {Role.STORE}
    peer, created = archive.peers.put("X", {"ae_title": "X", "host": "h2"}, CLI)
    assert not created and (peer.host, peer.port, peer.roles) == ("h2", None, frozenset())


def test_the_lookups_carry_a_peers_tls_to_where_it_connects(archive: Archive) -> None:
    """A move destination, a report destination and a migration peer come back
    whole, so that the connection is made over TLS when the peer says so."""
    peers = archive.peers
    peers.add(
        Peer(
            "PACS", ae_title="PACS", host="pacs.example", port=2762, tls=True,
            roles=frozenset({Role.MOVE_DESTINATION, Role.MIGRATION_SOURCE}),
        ),
        CLI,
    )  # fmt: skip
    moved = peers.move_destination("PACS")
    assert moved is not None and moved.tls and (moved.host, moved.port) == ("pacs.example", 2762)
    reported = peers.report_peer("PACS")
    assert reported is not None and reported.tls
    remote = peers.remote("PACS")
    assert remote.tls and "over TLS" in remote.describe()
    # The configured --remote-ae VIEWER has no tls: plain TCP.
    viewer = peers.move_destination("VIEWER")
    assert viewer is not None and not viewer.tls
    assert peers.move_destination("NOBODY") is None


def test_authentication_and_roles(archive: Archive) -> None:
    peers = archive.peers
    peers.add(
        Peer("CT", ae_title="CT", host="127.0.0.1", principal="ct-1", roles=frozenset({Role.STORE})), CLI
    )
    peer = peers.authenticate("CT", "::ffff:127.0.0.1", None)
    assert peer.principal_name == "ct-1" and peers.permits("CT", Role.STORE)
    assert not peers.permits("CT", Role.QUERY) and not peers.permits("NOBODY", Role.STORE)
    with pytest.raises(AssociationRefused, match="registered for host"):
        peers.authenticate("CT", "127.0.0.2", None)
    with pytest.raises(AssociationRefused, match="not registered"):
        peers.authenticate("NOBODY", "127.0.0.1", None)
    assert peers.known("CT") and peers.known("VIEWER") and not peers.known("NOBODY")
    # A DIMSE session enforces the calling peer's roles.
    from dicomhub.config import Settings
    from dicomhub.dimse.session import AssociationSession

    session = AssociationSession(archive, Settings(known_aes_only=True), "127.0.0.1", None)
    session.peer = peers.get("CT")
    session.require(Role.STORE)
    with pytest.raises(Forbidden, match="query"):
        session.require(Role.QUERY)
    session.peer = None  # no enforcement: every service open
    session.require(Role.RETRIEVE)


def test_the_ae_and_remote_views_are_peers(archive: Archive, tmp_path: Path) -> None:
    from dicomhub.model.applicationentity import ApplicationEntity
    from dicomhub.model.migration import RemoteArchive

    archive.aes.add(ApplicationEntity("STORESCP", "127.0.0.1", 4242), CLI)
    assert archive.peers.destination("STORESCP") == ("127.0.0.1", 4242, "STORESCP")
    archive.migration.add_remote(RemoteArchive("files", RemoteKind.FOLDER, path=str(tmp_path)))
    assert archive.peers.require("files").roles == {Role.MIGRATION_SOURCE}
    pk, remote = archive.migration.remote("files")
    assert remote.path == str(tmp_path) and pk == archive.migration.remote("files")[0]
    archive.peers.remove("files", CLI)  # its inventory state goes with it
    assert archive.migration.repo.state_pk("files", create=False) is None


def test_peer_config_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dicomhub]\naet = "HUB"\n[[peer]]\naet = "MOD"\nhost = "10.0.0.1"\nroles = "store,query"\n'
    )
    s = load_settings({}, config_file=cfg, environ={})
    assert [(p.name, p.ae_title, p.roles) for p in s.peers] == [
        ("MOD", "MOD", frozenset({Role.STORE, Role.QUERY}))
    ]
    for body, message in (
        ('[[peer]]\nname = "x"\nfolder = "/x"\npassword = "y"\n', "unknown key"),
        ('[[peer]]\nname = "x"\nae_title = "X"\nhost = "h"\nport = "104"\n', "wrong type"),
        ('[[peer]]\nname = "x"\nae_title = "X"\nhost = "h"\nport = 99999\n', "port"),
        ('[[peer]]\nhost = "h"\n', "needs a name"),
        ('peer = "x"\n', "tables"),
    ):
        cfg.write_text(body)
        with pytest.raises(ConfigurationError, match=message):
            load_settings({}, config_file=cfg, environ={})
    # The same AE title twice (a [[peer]] and a --remote-ae) stops the archive from opening.
    twice = configured_peers(s.peers, [RemoteAE("MOD", "10.0.0.2", 104)])
    with pytest.raises(ConfigurationError, match="configured twice|two peers"):
        PeerService(PeerRepository(sa.create_engine("sqlite://")), twice)


def test_migration_0014_moves_aes_and_remotes_into_peer(tmp_path: Path, index_url: str) -> None:
    engine = connect_engine(index_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0013")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        insert_ae = sa.text(
            "INSERT INTO application_entity (ae_title, host, port, principal, tls_subject, description,"
            " created_at) VALUES (:t, :h, :p, :pr, '', 'd', :at)"
        )
        conn.execute(insert_ae, {"t": "MODALITY", "h": "10.0.0.1", "p": None, "pr": "ct-1", "at": now})
        conn.execute(insert_ae, {"t": "PACS", "h": "10.0.0.2", "p": 104, "pr": "", "at": now})
        conn.execute(insert_ae, {"t": "WEBPACS", "h": "10.0.0.3", "p": 104, "pr": "", "at": now})
        insert_remote = sa.text(
            "INSERT INTO migration_remote (name, kind, ae_title, host, port, url, auth, path, retrieve,"
            " find_limit, inventory_complete, created_at) VALUES (:n, :k, :a, :h, :p, :u, :au, :pa, 'move',"
            " 10, :c, :at)"
        )
        rows = [
            # the same name as a registered AE but another address: renamed PACS-remote
            ("PACS", "dimse", "OLDPACS", "10.9.9.9", 11112, "", "", "", True),
            # the same name as a registered AE, over DICOMweb: one peer
            ("WEBPACS", "dicomweb", "", "", 0, "https://w.example/rs", SECRET, "", False),
            ("files", "folder", "", "", 0, "", "", "/data/old", False),
        ]
        for n, k, a, h, p, u, au, pa, c in rows:
            conn.execute(
                insert_remote,
                {"n": n, "k": k, "a": a, "h": h, "p": p, "u": u, "au": au, "pa": pa, "c": c, "at": now},
            )
        pacs_pk = conn.execute(sa.text("SELECT pk FROM migration_remote WHERE name = 'PACS'")).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO inventory_study (remote_pk, study_instance_uid, patient_id, patient_name,"
                " study_date, accession_number, complete)"
                " VALUES (:r, '1.2.3', 'P', 'N', '20200101', 'A', :t)"
            ),
            {"r": pacs_pk, "t": True},
        )
    migrate(engine, lock_dir=tmp_path)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("migration_remote")}
        assert columns == {"pk", "name", "inventory_complete", "inventory_at", "created_at"}
        assert not sa.inspect(conn).has_table("application_entity")
        names = dict(conn.execute(sa.text("SELECT name, pk FROM migration_remote")).all())
    engine.dispose()
    assert names["PACS-remote"] == pacs_pk  # the inventory followed the renamed peer

    arch = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": index_url}, environ={}))
    try:
        peers = {p.name: p for p in arch.peers.list()}
        assert set(peers) == {"MODALITY", "PACS", "PACS-remote", "WEBPACS", "files"}
        assert peers["MODALITY"].roles == DIMSE_ROLES and peers["MODALITY"].principal_name == "ct-1"
        assert peers["PACS"].roles == DIMSE_ROLES | {Role.MOVE_DESTINATION}
        old = peers["PACS-remote"]
        assert (old.ae_title, old.host, old.port, old.retrieve, old.find_limit) == (
            "OLDPACS",
            "10.9.9.9",
            11112,
            "move",
            10,
        )
        assert old.roles == {Role.MIGRATION_SOURCE, Role.MIGRATION_TARGET}
        web = peers["WEBPACS"]
        assert (web.ae_title, web.port, web.dicomweb_url, web.via) == (
            "WEBPACS",
            104,
            "https://w.example/rs",
            RemoteKind.DICOMWEB,
        )
        assert web.roles == DIMSE_ROLES | {
            Role.MOVE_DESTINATION,
            Role.MIGRATION_SOURCE,
            Role.MIGRATION_TARGET,
        }
        assert arch.peers.remote("WEBPACS").auth == SECRET
        assert peers["files"].roles == {Role.MIGRATION_SOURCE} and peers["files"].folder == "/data/old"
        assert list(arch.migration.inventory("PACS-remote").studies) == ["1.2.3"]
        assert arch.peers.destination("PACS") == ("10.0.0.2", 104, "PACS")
    finally:
        arch.close()

    engine = connect_engine(index_url)
    try:
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0013")
        with engine.connect() as conn:
            aes = set(conn.execute(sa.text("SELECT ae_title FROM application_entity")).scalars())
            kinds = dict(conn.execute(sa.text("SELECT name, kind FROM migration_remote")).all())
        assert aes == {"MODALITY", "PACS", "WEBPACS"}
        assert kinds == {"PACS-remote": "dimse", "WEBPACS": "dicomweb", "files": "folder"}
    finally:
        engine.dispose()


def test_admin_peer_routes_need_the_administer_right(tmp_path: Path) -> None:
    import asyncio

    import httpx

    from dicomhub.config import Settings
    from dicomhub.services.administration import SecurityAdministration
    from dicomhub.web.app import create_app

    settings = Settings(data_dir=tmp_path / "data", auth_required=True)
    arch = open_archive(settings)
    try:
        admin = SecurityAdministration(arch.access, arch.audit)
        reader = admin.add_user(CLI, "reader-1", grants=[("reader", "archive")])["token"]
        boss = admin.add_user(CLI, "admin-1", grants=[("admin", "archive")])["token"]
        app = create_app(arch, settings)

        async def call(method: str, token: str | None, body: object = None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                r = await client.request(method, "/admin/peers/VIEWER", json=body, headers=headers)
                return r.status_code

        body = {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 104}
        assert asyncio.run(call("PUT", None, body)) == 401
        assert asyncio.run(call("PUT", reader, body)) == 403
        assert asyncio.run(call("GET", reader)) == 403
        assert asyncio.run(call("PUT", boss, body)) == 201
        assert asyncio.run(call("GET", boss)) == 200
        (event,) = [
            e
            for e in arch.audit.events(action=AuditAction.SECURITY_CHANGE)
            if e.detail.get("change") == "peer-add"
        ]
        assert event.principal == "admin-1"
    finally:
        arch.close()

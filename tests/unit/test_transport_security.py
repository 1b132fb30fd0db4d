"""The safe default, the TLS context, the AE registry and the audit export formats."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import Settings, load_settings
from dicomhub.config.checks import anonymous_network_refusal, tls_client_context, tls_server_context
from dicomhub.conformance import build_statement, render_markdown
from dicomhub.errors import ConfigurationError, InvalidRequest, NotFound
from dicomhub.model.applicationentity import ApplicationEntity
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditOutcome, AuditRecord
from dicomhub.model.caller import Caller
from dicomhub.services.aes import AssociationRefused
from dicomhub.services.archive import Archive
from dicomhub.services.auditexport import dicom_audit_message, dicom_audit_xml, json_line
from tests.e2e.tlscerts import make_pki

# ------------------------------------------------------------------ safe default


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_auth(host: str) -> None:
    assert anonymous_network_refusal(Settings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10"])
def test_other_addresses_need_auth_or_the_override(host: str) -> None:
    refusal = anonymous_network_refusal(Settings(host=host))
    assert refusal is not None and "--auth" in refusal and "--allow-anonymous-network" in refusal
    assert anonymous_network_refusal(Settings(host=host, auth_required=True)) is None
    assert anonymous_network_refusal(Settings(host=host, allow_anonymous_network=True)) is None


# ------------------------------------------------------------------ TLS


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="certificate"):
        load_settings({"dimse_tls_port": 2762}, environ={})
    with pytest.raises(ConfigurationError, match="certificate"):
        load_settings({"https": True}, environ={})
    with pytest.raises(ConfigurationError, match="tls-ca"):
        load_settings({"tls_verify_client": True, "tls_cert": "c", "tls_key": "k"}, environ={})


def test_tls_server_context(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    base = Settings(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    context = tls_server_context(base)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    ciphers = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert ciphers and all(("GCM" in c or "CHACHA20" in c) and "DHE" in c for c in ciphers)
    verifying = Settings(
        tls_cert=str(pki.server.cert), tls_key=str(pki.server.key), tls_ca=str(pki.ca), tls_verify_client=True
    )
    assert tls_server_context(verifying).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigurationError, match="cannot load"):
        tls_server_context(Settings(tls_cert=str(tmp_path / "missing.pem"), tls_key=str(pki.server.key)))


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[dict[str, object] | None, str]:
    """One handshake over a socket pair: the client certificate the server saw
    (None: none or the handshake failed) and the server side's error, if any."""
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    theirs.settimeout(10)
    seen: list[dict[str, object] | None] = [None]
    error = [""]

    def serve() -> None:
        try:
            with server.wrap_socket(theirs, server_side=True) as tls:
                seen[0] = tls.getpeercert()  # type: ignore[assignment]
        except (OSError, ssl.SSLError) as exc:
            error[0] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(ours, server_hostname="127.0.0.1") as tls:
            tls.recv(1)  # the server closes: a TLS 1.3 client learns of a refused certificate here
    except (OSError, ssl.SSLError):
        pass
    finally:
        thread.join(10)
        theirs.close()
    return seen[0], error[0]


def test_tls_client_context(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    server.load_verify_locations(cafile=str(pki.ca))
    server.verify_mode = ssl.CERT_REQUIRED

    mutual = tls_client_context(
        Settings(tls_cert=str(pki.client.cert), tls_key=str(pki.client.key), tls_ca=str(pki.ca))
    )
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    assert mutual.verify_mode == ssl.CERT_REQUIRED and mutual.check_hostname
    assert [c["subject"] for c in mutual.get_ca_certs()] == [((("commonName", "dicomhub test CA"),),)]
    # Our certificate is presented: the peer sees it (mutual TLS).
    seen, error = _handshake(mutual, server)
    assert seen is not None and ((("commonName", "modality-1"),),) == seen["subject"], error

    # Without one configured, a peer that requires it refuses us.
    anonymous = tls_client_context(Settings(tls_ca=str(pki.ca)))
    seen, error = _handshake(anonymous, server)
    assert seen is None and "certificate" in error.lower()

    # A peer whose certificate another CA signed is refused by us.
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.load_cert_chain(str(pki.untrusted_server.cert), str(pki.untrusted_server.key))
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=lambda: _ignore_errors(other, theirs))
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        mutual.wrap_socket(ours, server_hostname="127.0.0.1")
    ours.close()
    thread.join(10)
    theirs.close()

    # No tls_ca: the system's trust store, not "trust anything".
    system = tls_client_context(Settings())
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname
    with pytest.raises(ConfigurationError, match="cannot load"):
        tls_client_context(Settings(tls_ca=str(tmp_path / "missing.pem")))


def _ignore_errors(context: ssl.SSLContext, sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        context.wrap_socket(sock, server_side=True).close()
    except (OSError, ssl.SSLError):
        pass


def test_conformance_statement_names_the_tls_port() -> None:
    md = render_markdown(build_statement(Settings(dimse_tls_port=2762, auth_required=True), []))
    assert "2762" in md and "BCP 195" in md and "0x0124" in md
    assert "No TLS" in render_markdown(build_statement(Settings(), []))


# ------------------------------------------------------------------ AE registry


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    archive = open_archive(Settings(data_dir=tmp_path / "data"))
    yield archive
    archive.close()


def test_ae_registry_and_authentication(archive: Archive) -> None:
    aes, cli = archive.aes, Caller.cli()
    aes.add(ApplicationEntity("MODALITY", "127.0.0.1", None, "ct-1"), cli)
    aes.add(ApplicationEntity("PACS", "localhost", 104, tls_subject="pacs.example"), cli)
    with pytest.raises(Exception, match="registered already"):
        aes.add(ApplicationEntity("PACS", "127.0.0.1", 104), cli)
    with pytest.raises(InvalidRequest):
        aes.add(ApplicationEntity("BAD\\AE", "127.0.0.1"), cli)
    with pytest.raises(InvalidRequest):
        aes.add(ApplicationEntity("NOHOST", " "), cli)
    assert [e.ae_title for e in aes.list()] == ["MODALITY", "PACS"]

    assert aes.authenticate("MODALITY", "127.0.0.1", None).principal_name == "ct-1"
    assert aes.authenticate("MODALITY", "::ffff:127.0.0.1", None).ae_title == "MODALITY"
    with pytest.raises(AssociationRefused, match="registered for host"):
        aes.authenticate("MODALITY", "127.0.0.2", None)
    with pytest.raises(AssociationRefused, match="not registered"):
        aes.authenticate("OTHER", "127.0.0.1", None)
    # A host name matches the addresses it resolves to; a TLS subject must match.
    with pytest.raises(AssociationRefused, match="no client certificate"):
        aes.authenticate("PACS", "127.0.0.1", None)
    with pytest.raises(AssociationRefused, match="CN"):
        aes.authenticate("PACS", "127.0.0.1", "someone.else")
    assert aes.authenticate("PACS", "127.0.0.1", "pacs.example").principal_name == "PACS"

    assert aes.destination("PACS") == ("localhost", 104, "PACS")
    assert aes.destination("MODALITY") is None  # calls only
    aes.remove("MODALITY", cli)
    with pytest.raises(NotFound):
        aes.remove("MODALITY", cli)
    changes = archive.audit.events(action=AuditAction.SECURITY_CHANGE)
    assert sorted(e.detail["change"] for e in changes) == ["ae-add", "ae-add", "ae-remove"]
    assert all(e.principal == Caller.cli().who for e in changes)


# ------------------------------------------------------------------ audit export

_CODED = ("csd-code", "codeSystemName", "originalText")
_ORDER = [
    "EventIdentification",
    "ActiveParticipant",
    "AuditSourceIdentification",
    "ParticipantObjectIdentification",
]


def _record(
    action: AuditAction, outcome: AuditOutcome = AuditOutcome.SUCCESS, **detail: object
) -> AuditRecord:
    return AuditRecord(
        id=7,
        at=dt.datetime(2026, 11, 27, 22, 0, tzinfo=dt.UTC),
        action=action,
        outcome=outcome,
        principal="reader-1",
        channel="dimse",
        ae_title="READER",
        address="192.0.2.5",
        studies=(AuditedStudy("1.2.3.4", "PID-1", ("1.2.3.4.1",), 3), AuditedStudy("1.2.3.5", "PID-1")),
        detail=detail,
    )


def _check_coded(element: ET.Element) -> None:
    for attribute in _CODED:
        assert element.get(attribute), f"{element.tag} lacks {attribute}"


def _check_audit_message(message: ET.Element) -> None:
    """The required structure of PS3.15 A.5.1 (the RELAX NG schema's mandatory parts)."""
    assert message.tag == "AuditMessage"
    tags = [child.tag for child in message]
    assert tags == sorted(tags, key=_ORDER.index), tags  # the schema's sequence
    assert tags.count("EventIdentification") == 1 and "ActiveParticipant" in tags
    assert "AuditSourceIdentification" in tags
    event = message.find("EventIdentification")
    assert event is not None
    assert event.get("EventActionCode") in ("C", "R", "U", "D", "E")
    assert event.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    dt.datetime.fromisoformat(event.get("EventDateTime", ""))
    assert [c.tag for c in event][0] == "EventID"
    for child in event:
        if child.tag in ("EventID", "EventTypeCode"):
            _check_coded(child)
    requestors = 0
    for participant in message.iter("ActiveParticipant"):
        assert participant.get("UserID")
        assert participant.get("UserIsRequestor") in ("true", "false")
        requestors += participant.get("UserIsRequestor") == "true"
        if participant.get("NetworkAccessPointID"):
            assert participant.get("NetworkAccessPointTypeCode") in ("1", "2", "3", "4", "5")
        role = participant.find("RoleIDCode")
        assert role is not None and role.get("csd-code") in ("110153", "110152")
        _check_coded(role)
    assert requestors == 1
    for source in message.iter("AuditSourceIdentification"):
        assert source.get("AuditSourceID")
        for code in source.iter("AuditSourceTypeCode"):
            _check_coded(code)
    for obj in message.iter("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID")
        assert obj.get("ParticipantObjectTypeCode") in ("1", "2", "3", "4")
        assert 1 <= int(obj.get("ParticipantObjectTypeCodeRole", "0")) <= 24
        children = list(obj)
        assert children and children[0].tag == "ParticipantObjectIDTypeCode"
        _check_coded(children[0])


@pytest.mark.parametrize("action", list(AuditAction))
def test_every_action_gives_a_valid_audit_message(action: AuditAction) -> None:
    message = dicom_audit_message(
        _record(action, destination="DESTA", sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1"), "HUB"
    )
    _check_audit_message(message)


def test_audit_message_content() -> None:
    message = dicom_audit_message(_record(AuditAction.STORE), "DICOMHUB")
    event_id = message.find("EventIdentification/EventID")
    assert event_id is not None and event_id.get("csd-code") == "110104"
    assert message.find("EventIdentification").get("EventActionCode") == "C"  # type: ignore[union-attr]
    requestor, archive = message.findall("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("reader-1", "192.0.2.5")
    assert requestor.get("AlternativeUserID") == "AETITLES=READER"
    assert requestor.find("RoleIDCode").get("csd-code") == "110153"  # type: ignore[union-attr]
    assert archive.find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]
    objects = message.findall("ParticipantObjectIdentification")
    ids = [
        (o.get("ParticipantObjectID"), o.find("ParticipantObjectIDTypeCode").get("csd-code")) for o in objects
    ]  # type: ignore[union-attr]
    # Two studies (110180), one patient (RFC 3881 type 2) for both.
    assert ids == [("1.2.3.4", "110180"), ("1.2.3.5", "110180"), ("PID-1", "2")]

    export = dicom_audit_message(
        _record(AuditAction.EXPORT, AuditOutcome.SERIOUS_FAILURE, destination="DESTB", reason="x"), "HUB"
    )
    _requestor, receiver = export.findall("ActiveParticipant")
    assert (
        receiver.get("UserID") == "DESTB"
        and export.findtext("EventIdentification/EventOutcomeDescription") == "x"
    )

    query = dicom_audit_message(
        _record(AuditAction.QUERY, sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1", keys={"PatientID": "PID-1"}),
        "HUB",
    )
    (sop,) = [
        o
        for o in query.findall("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCodeRole") == "24"
    ]
    assert sop.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    assert b"PID-1" in __import__("base64").b64decode(sop.findtext("ParticipantObjectQuery") or "")


def test_xml_stream_and_json_lines() -> None:
    records = [_record(AuditAction.LOGIN), _record(AuditAction.RETRIEVE, detail_value=dt.date(2026, 1, 1))]
    lines = list(dicom_audit_xml(records, "HUB"))
    assert len(lines) == 2 and all(line.endswith("\n") and "\n" not in line[:-1] for line in lines)
    for line in lines:
        _check_audit_message(ET.fromstring(line))
    parsed = json.loads(json_line(records[1]))
    assert parsed["action"] == "retrieve" and parsed["studies"][0]["number_of_instances"] == 3
    assert parsed["detail"] == {"detail_value": "2026-01-01"} and parsed["at"] == "2026-11-27T22:00:00+00:00"

"""HL7 v2 over MLLP end to end: ``dicomhub serve --hl7-port`` driven by real MLLP clients
(the ``hl7`` package's MLLPClient, and raw sockets for the bad input).

ORM new / status / discontinue / cancel, OMI, ADT A01/A04/A08/A40 are each answered AA and
visible through ``dicomhub order`` / ``dicomhub patient``; a message that is not HL7, an
unknown message type, an unknown MSH-18 character set, an oversized message and a
half frame that stalls each get a clear answer (or a closed connection after the idle
time), and the listener answers the next client with nothing stored lost.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import hl7.client
import pytest

from .helpers import HOST, DicomhubServer, ServerPool, free_port, run_cli

pytestmark = pytest.mark.e2e

SB, EB = b"\x0b", b"\x1c\x0d"
MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||{type}|{id}|P|2.5.1||||||UNICODE UTF-8"
PID = "PID|||{pid}^^^HOSP^MR||{name}||19700102|M"


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    port = free_port()
    srv = module_servers.start("hl7", args=["--hl7-port", str(port), "--network-timeout", "2"])
    srv.hl7_port = port  # type: ignore[attr-defined]
    return srv


def _send(srv: DicomhubServer, *segments: str) -> tuple[str, str]:
    client = hl7.client.MLLPClient(HOST, srv.hl7_port, encoding="utf-8")  # type: ignore[attr-defined]
    try:
        reply = client.send_message("\r".join(segments))
    finally:
        client.close()
    return _code(reply)


def _code(reply: bytes | str) -> tuple[str, str]:
    text = reply.decode("utf-8") if isinstance(reply, bytes) else reply
    segments = text.strip("\x0b\x1c\r").split("\r")
    msa = next(s for s in segments if s.startswith("MSA")).split("|")
    return msa[1], next((s for s in segments if s.startswith("ERR")), "")


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while not out.endswith(EB):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def _orm(control: str, msg_id: str, accession: str, pid: str = "P1", status: str = "") -> list[str]:
    return [
        MSH.format(type="ORM^O01", id=msg_id),
        PID.format(pid=pid, name="Doe^Jane"),
        f"ORC|{control}|PL{accession}|FL{accession}||{status}",
        f"OBR|1|PL{accession}|FL{accession}|CTHEAD^CT Head^LOCAL||||||||||||||{accession}|RP{accession}"
        f"|SPS{accession}|CTAE|||CT|||^^^20260301101500^^R",
    ]


def _order(srv: DicomhubServer, accession: str) -> dict[str, object]:
    code, out = run_cli("order", "show", accession, "--data-dir", str(srv.data_dir))
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_orders_and_patients_over_mllp(hub: DicomhubServer) -> None:
    assert _send(hub, *_orm("NW", "1", "A1")) == ("AA", "")
    order = _order(hub, "A1")
    assert order["status"] == "SCHEDULED" and order["patient_id"] == "P1"
    step = order["procedures"][0]["steps"][0]  # type: ignore[index]
    assert (step["modality"], step["station_ae_title"], step["start"]) == (
        "CT",
        "CTAE",
        "2026-03-01T10:15:00",
    )
    assert _send(hub, *_orm("SC", "2", "A1", status="IP")) == ("AA", "")
    assert _order(hub, "A1")["status"] == "IN PROGRESS"
    code, err = _send(hub, *_orm("CA", "3", "A1"))
    assert code == "AE" and "cannot be cancelled" in err
    assert _send(hub, *_orm("DC", "4", "A1")) == ("AA", "")
    assert _order(hub, "A1")["status"] == "DISCONTINUED"
    assert _send(hub, *_orm("NW", "5", "A2")) == ("AA", "")
    assert _send(hub, *_orm("CA", "6", "A2")) == ("AA", "")
    assert _order(hub, "A2")["status"] == "CANCELLED"
    omi = [
        MSH.format(type="OMI^O23^OMI_O23", id="7"),
        PID.format(pid="P1", name="Doe^Jane"),
        "ORC|NW|PLA3|FLA3",
        "TQ1|||||||20260302080000||S",
        "OBR|1|PLA3|FLA3|MRKNEE^MR Knee^LOCAL",
        "IPC|A3|RPA3|1.2.826.0.1.3680043.2.1143.77|SPSA3|MR||MR1||MRAE",
    ]
    assert _send(hub, *omi) == ("AA", "")
    rp = _order(hub, "A3")["procedures"][0]  # type: ignore[index]
    assert rp["study_instance_uid"] == "1.2.826.0.1.3680043.2.1143.77" and rp["priority"] == "STAT"
    assert rp["steps"][0]["station_ae_title"] == "MRAE" and rp["steps"][0]["station_name"] == "MR1"
    for event, name in (("A01", "Doe^Jane"), ("A04", "Doe^Jane"), ("A08", "Doe-Smith^Jane")):
        adt = (MSH.format(type=f"ADT^{event}", id=f"adt{event}"), PID.format(pid="P1", name=name))
        assert _send(hub, *adt) == ("AA", "")
    code, out = run_cli("patient", "show", "P1", "--issuer", "HOSP", "--data-dir", str(hub.data_dir))
    assert code == 0 and json.loads(out)["patient_name"] == "Doe-Smith^Jane", out
    merge = [MSH.format(type="ADT^A40", id="m1"), PID.format(pid="P9", name="Doe^Jane"), "MRG|P1^^^HOSP"]
    assert _send(hub, *merge) == ("AA", "")
    assert _order(hub, "A3")["patient_id"] == "P9"


def test_bad_input_gets_a_clear_answer_and_the_listener_stays(hub: DicomhubServer) -> None:
    port = hub.hl7_port  # type: ignore[attr-defined]
    assert _send(hub, *_orm("NW", "b0", "KEEP")) == ("AA", "")
    code, err = _code(_raw(port, SB + b"this is not HL7" + EB))
    assert code == "AR" and "does not start with an MSH" in err
    code, err = _code(_raw(port, SB + (MSH.format(type="ORU^R01", id="b1") + "\rPID|||X").encode() + EB))
    assert code == "AR" and "|200^" in err
    bad = MSH.replace("UNICODE UTF-8", "EBCDIC").format(type="ADT^A01", id="b2")
    code, err = _code(_raw(port, SB + (bad + "\r" + PID.format(pid="X", name="Y")).encode() + EB))
    assert code == "AR" and "EBCDIC" in err
    code, err = _code(_raw(port, SB + b"\xff\xfe" + EB))
    assert code == "AR"
    big = (MSH.format(type="ADT^A01", id="b3") + "\rNTE|" + "x" * (1024 * 1024 + 10)).encode()
    code, err = _code(_raw(port, SB + big + EB))
    assert code == "AR" and "larger than" in err
    code, err = _code(_raw(port, b"GET / HTTP/1.1\r\n\r\n"))
    assert code == "AR" and "not MLLP" in err
    # Half a frame, then silence: closed after the idle time (--network-timeout 2).
    with socket.create_connection((HOST, port), timeout=15) as sock:
        sock.sendall(SB + MSH.format(type="ADT^A01", id="b4").encode())
        began = time.monotonic()
        assert sock.recv(100) == b""
        assert 1.0 < time.monotonic() - began < 12
    assert _send(hub, MSH.format(type="ADT^A01", id="b5"), PID.format(pid="AFTER", name="Still^Up")) == (
        "AA",
        "",
    )
    assert _order(hub, "KEEP")["status"] == "SCHEDULED"


def test_serve_refuses_an_hl7_port_in_use(servers: ServerPool, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        srv = servers.create("busy", args=["--hl7-port", str(taken.getsockname()[1])])
        cmd, env = srv.command()
        import subprocess

        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 1 and b"for HL7" in proc.stderr

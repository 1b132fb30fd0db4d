"""Write the seed corpora of the fuzz targets (``fuzz/corpus/<target>/``, git-ignored).

Every seed is made here, at run time, from real sources:

* ``association`` and ``pdu``: the bytes real DICOM peers send, captured on
  127.0.0.1. pynetdicom's ``AE`` and, when installed, DCMTK's ``echoscu``,
  ``storescu`` and ``findscu`` (with ``TCP_NODELAY=1``) talk to dicomhub's
  association loop through a relay that records what the peer sends. ``pdu`` gets
  the A-ASSOCIATE-RQ bodies and the command sets found in those streams.
* ``part10``: pydicom's test files (``pydicom.data.get_testdata_file``),
  plus a truncated copy of one.
* ``multipart``: STOW-RS bodies encoded by dicomweb-client (the encoder its
  ``store_instances`` uses) around those files, and by the stdlib ``email``
  package (``MIMEMultipart("related")``, CRLF line ends).
* ``accept``, ``qido``, ``config``: Accept headers as DICOMweb clients send
  them, QIDO-RS query strings from PS3.18 examples and the README, and TOML
  files in the README's format.
* ``hl7``: ORM^O01 (NW, SC, DC, CA), OMI^O23, ADT^A01/A04/A08/A40 in the
  shapes the end-to-end tests send, in UTF-8 and ISO 8859-1.
* ``fhir``: Patient and ServiceRequest bodies as the end-to-end tests send
  them (first byte: 0 Patient, 1 ServiceRequest, 3 its update).

Usage: ``python fuzz/make_seeds.py [OUT_DIR]`` (default ``fuzz/corpus``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.policy import HTTP
from pathlib import Path

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomhub.dimse.association import serve_association
from dicomhub.dimse.requests import AssociationConfig, QueryRequest, StoreOutcome, StoreRequest

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent
# Small pydicom test files: several transfer syntaxes (explicit/implicit LE,
# big endian, deflated, RLE, JPEG 2000), no File Meta, sequences (RT).
PART10_FILES = (
    "rtplan.dcm",
    "rtstruct.dcm",
    "MR_small.dcm",
    "CT_small.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "no_meta.dcm",
    "SC_rgb.dcm",
)
# The ones sent over DIMSE and STOW-RS (small, so seeds stay short).
SENT_FILES = ("rtplan.dcm", "MR_small.dcm")

ACCEPT_HEADERS = (
    "application/dicom+json",
    "application/dicom+json, application/json;q=0.9, */*;q=0.1",
    'multipart/related; type="application/dicom+xml"',
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
    "image/jpeg, image/png;q=0.8, */*;q=0.5",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "application/dicom+xml;q=1, application/dicom+json;q=0.5",
    "*",
    "",
)
QIDO_QUERIES = (
    # first character: 0 studies, 1 series, 2 instances (see fuzz_qido.py)
    "0PatientID=11235813&StudyDate=20130509-&limit=10&offset=0",
    "0PatientName=Doe%5EJ*&fuzzymatching=false&includefield=00081030",
    "0includefield=all&ModalitiesInStudy=CT%5CMR",
    "000100020=1.2.3&0020000D=1.2.840.113619.2.1.1.322987881.621.736170080.681",
    "1Modality=CT&SeriesNumber=2&includefield=0020000E,00080021",
    "1StudyInstanceUID=1.2.3.4&SeriesDate=20000101-20201231&SeriesTime=120000-",
    "2SOPClassUID=1.2.840.10008.5.1.4.1.1.2&InstanceNumber=3&limit=1",
    "2StudyInstanceUID=1.2.3&SeriesInstanceUID=1.2.3.4&00200013=1",
    "0ReferencedStudySequence.ReferencedSOPInstanceUID=1.2.3&limit=abc",
)
CONFIG_FILES = (
    'aet = "ARCHIVE"\ndimse_port = 11112\nhttp_port = 8042\nhost = "127.0.0.1"\n',
    '[dicomhub]\nremote_ae = ["PACS=10.0.0.5:104", "VIEWER=127.0.0.1:11113"]\n'
    'duplicate_policy = "reject"\nmax_associations = 16\nqido_default_limit = 100\n',
    'compress = ["CT=jpeg-ls-lossless", "*=rle"]\nallow_lossy_compression = false\n'
    'decode_check = "sample"\nvalidation_policy = "warn"\nvalidation_ae = ["MOD1=reject"]\n',
    'oidc_issuer = "https://sso.example.org/realms/hospital"\noidc_audience = "dicomhub"\n'
    'oidc_role_claim = "realm_access.roles"\n\n[oidc_roles]\n"dicom-reader" = "reader"\n'
    '"cardio-staff" = ["reader@label:cardio", "uploader@label:cardio"]\n',
    'cors_origins = ["https://viewer.example.org"]\npublic_base_url = "https://pacs.example.org/dicomweb"\n'
    "acse_timeout = 30\ndimse_timeout = 60.5\nknown_aes_only = true\n",
)

_MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||{type}|{id}|P|2.5.1||||||{charset}"
_PID = "PID|||{pid}^^^HOSP^MR||{name}||19700102|M"


def _orm(control: str, accession: str, status: str = "") -> list[str]:
    return [
        _MSH.format(type="ORM^O01", id=f"orm{control}{accession}", charset="UNICODE UTF-8"),
        _PID.format(pid="P1", name="Doe^Jane"),
        "PV1||O|||||^Welby^Marcus",
        f"ORC|{control}|PL{accession}|FL{accession}||{status}",
        f"OBR|1|PL{accession}|FL{accession}|CTHEAD^CT Head^LOCAL||||||||||||||{accession}|RP{accession}"
        f"|SPS{accession}|CTAE|||CT|||^^^20260301101500^^S",
    ]


HL7_MESSAGES = (
    _orm("NW", "A1"),
    _orm("SC", "A1", "IP"),
    _orm("DC", "A1"),
    _orm("CA", "A2"),
    [
        _MSH.format(type="OMI^O23^OMI_O23", id="7", charset="UNICODE UTF-8"),
        _PID.format(pid="P1", name="Doe^Jane"),
        "ORC|NW|PLA3|FLA3",
        "TQ1|||||||20260302080000||S",
        "OBR|1|PLA3|FLA3|MRKNEE^MR Knee^LOCAL",
        "IPC|A3|RPA3|1.2.826.0.1.3680043.2.1143.77|SPSA3|MR||MR1||MRAE",
    ],
    *(
        [
            _MSH.format(type=f"ADT^{event}", id=f"adt{event}", charset="UNICODE UTF-8"),
            _PID.format(pid="P1", name=name),
        ]
        for event, name in (("A01", "Müller^Jürgen^K^^Dr"), ("A04", "Doe^Jane"), ("A08", "Doe^Jane^Q"))
    ),
    [
        _MSH.format(type="ADT^A40", id="m1", charset="UNICODE UTF-8"),
        _PID.format(pid="P9", name="Doe^Jane"),
        "MRG|P1^^^HOSP",
    ],
    [_MSH.format(type="ADT^A08", id="l1", charset="8859/1"), _PID.format(pid="P2", name="Ødegård^Åse")],
)

_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
FHIR_BODIES: tuple[tuple[int, dict[str, object]], ...] = (
    (
        0,
        {
            "resourceType": "Patient",
            "identifier": [{"system": "HOSP", "value": "P1"}],
            "name": [{"family": "Doe", "given": ["Jane", "Q"]}],
            "birthDate": "1970-01-02",
            "gender": "female",
        },
    ),
    (
        0,
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [
                {"use": "usual", "type": {"coding": [{"system": _V2_0203, "code": "MR"}]}, "value": "P2"},
                {"value": "OTHER7"},
            ],
            "name": [{"use": "official", "family": "Müller", "given": ["Jürgen"], "prefix": ["Dr"]}],
            "gender": "male",
        },
    ),
    *(
        (
            selector,
            {
                "resourceType": "ServiceRequest",
                "status": status,
                "intent": "order",
                "identifier": [
                    {"type": {"coding": [{"system": _V2_0203, "code": "ACSN"}]}, "value": "FA1"},
                    {"type": {"coding": [{"system": _V2_0203, "code": "PLAC"}]}, "value": "PLFA1"},
                ],
                "subject": {"reference": "Patient/p1"},
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]
                },
                "occurrenceDateTime": "2026-03-01T10:15:00+00:00",
                "performerType": {"coding": [{"system": _DCM, "code": "CT"}]},
                "priority": "stat",
                "reasonCode": [{"text": "follow-up"}],
                "requester": {"display": "Welby^Marcus"},
            },
        )
        for selector, status in ((1, "active"), (3, "active"), (3, "revoked"))
    ),
    (
        1,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "proposal",
            "identifier": [{"type": {"coding": [{"system": _V2_0203, "code": "ACSN"}]}, "value": "FB1"}],
            "subject": {"identifier": {"system": "HOSP", "value": "P1"}},
        },
    ),
)


# ------------------------------------------------------------------ DIMSE capture


class _Recorder:
    """A fast-path server on 127.0.0.1 behind a relay that records what peers send."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytes] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, address = self.listener.accept()
            except OSError:
                return
            self._relay(conn, address)

    def _relay(self, conn: socket.socket, address: tuple[str, int]) -> None:
        inner, outer = socket.socketpair()
        config = AssociationConfig(
            ae_title="DICOMHUB",
            storage_contexts={
                str(cx.abstract_syntax): ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
                for cx in StoragePresentationContexts
            },
            query_retrieve=True,
        )
        recorded = bytearray()

        def on_store(request: StoreRequest) -> StoreOutcome:
            return StoreOutcome(0x0000)

        def on_find(request: QueryRequest) -> Iterator[tuple[int, Dataset | None]]:
            return iter(())

        server = threading.Thread(
            target=serve_association, args=(inner, address, config, on_store), kwargs={"on_find": on_find}
        )
        server.start()

        def upstream() -> None:  # peer -> server, recorded
            try:
                while chunk := conn.recv(65536):
                    recorded.extend(chunk)
                    outer.sendall(chunk)
            except OSError:
                pass
            try:
                outer.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        up = threading.Thread(target=upstream)
        up.start()
        try:
            while chunk := outer.recv(65536):
                conn.sendall(chunk)
        except OSError:
            pass
        conn.close()
        up.join()
        server.join()
        outer.close()
        self.streams.append(bytes(recorded))

    def close(self) -> None:
        self.listener.close()


def _pynetdicom_sessions(port: int) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    files = [dcmread(str(get_testdata_file(name))) for name in SENT_FILES]
    for ds in files:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB", max_pdu=4096)
    if assoc.is_established:
        assoc.send_c_echo()
        for ds in files:
            assoc.send_c_store(ds)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "*"
        query.StudyInstanceUID = ""
        for _status in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            pass
        assoc.release()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    if assoc.is_established:
        assoc.send_c_echo()
        assoc.abort()


def _dcmtk_sessions(port: int) -> None:
    env = dict(os.environ, TCP_NODELAY="1")
    target = ["-aet", "DCMTK", "-aec", "DICOMHUB", "127.0.0.1", str(port)]
    commands = []
    if shutil.which("echoscu"):
        commands.append(["echoscu", *target])
    if shutil.which("storescu"):
        files = [str(get_testdata_file(name)) for name in SENT_FILES]
        commands.append(["storescu", *target, *files])
        commands.append(["storescu", "-pdu", "4096", *target, files[0]])
    if shutil.which("findscu"):
        commands.append(["findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=*", *target])
    for command in commands:
        subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)


def _pdus(stream: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 6 <= len(stream):
        pdu_type, _, length = struct.unpack_from(">BBI", stream, pos)
        yield pdu_type, stream[pos + 6 : pos + 6 + length]
        pos += 6 + length


def _pdu_seeds(streams: list[bytes]) -> Iterator[bytes]:
    """A-ASSOCIATE-RQ bodies (selector 1) and command sets (selector 0), see fuzz_pdu.py."""
    for stream in streams:
        command = bytearray()
        for pdu_type, body in _pdus(stream):
            if pdu_type == 0x01:
                yield b"\x01" + body
            elif pdu_type == 0x04:
                pos = 0
                while pos + 6 <= len(body):
                    (length,) = struct.unpack_from(">I", body, pos)
                    control = body[pos + 5]
                    if control & 0x01:
                        command += body[pos + 6 : pos + 4 + length]
                        if control & 0x02:
                            yield b"\x00" + bytes(command)
                            command.clear()
                    pos += 4 + length


def capture_streams() -> list[bytes]:
    """What pynetdicom and DCMTK peers send to a fast-path server, one stream per association."""
    recorder = _Recorder()
    try:
        _pynetdicom_sessions(recorder.port)
        _dcmtk_sessions(recorder.port)
    finally:
        recorder.close()
    return recorder.streams


# ------------------------------------------------------------------ the other seeds


def _part10_files() -> list[bytes]:
    out = []
    for name in PART10_FILES:
        path = get_testdata_file(name)
        if path is not None:
            out.append(Path(str(path)).read_bytes())
    return out


def _multipart_seeds() -> Iterator[bytes]:
    """``[len(boundary)] boundary [chunk size, 2 bytes BE] body``, see fuzz_multipart.py."""
    sent = [Path(str(get_testdata_file(name))).read_bytes() for name in SENT_FILES]
    boundary = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
    encode: Callable[[list[bytes], str], bytes] = DICOMwebClient._encode_multipart_message
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    for parts, chunk in ((sent[:1], 4096), (sent, 1000), (sent[1:], 7)):
        body = encode(parts, content_type)
        yield bytes([len(boundary)]) + boundary.encode() + struct.pack(">H", chunk) + body
    message = MIMEMultipart("related", type="application/dicom")
    for data in sent[:2]:
        message.attach(MIMEApplication(data, "dicom"))
    raw = message.as_bytes(policy=HTTP)
    _head, _, body = raw.partition(b"\r\n\r\n")
    email_boundary = (message.get_boundary() or "").encode()
    # With a preamble before the first delimiter, as RFC 2046 allows.
    yield bytes([len(email_boundary)]) + email_boundary + struct.pack(">H", 512) + b"preamble\r\n" + body


def _hl7_seeds() -> Iterator[bytes]:
    for segments in HL7_MESSAGES:
        codec = "latin-1" if segments[0].endswith("8859/1") else "utf-8"
        yield "\r".join(segments).encode(codec)


def _write(folder: Path, seeds: Iterator[bytes] | list[bytes]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


def main(out: Path) -> dict[str, int]:
    """Write every target's seeds under ``out`` and return how many each got."""
    streams = capture_streams()
    part10 = _part10_files()
    counts = {
        "association": _write(out / "association", streams),
        "pdu": _write(out / "pdu", _pdu_seeds(streams)),
        "part10": _write(out / "part10", part10 + [part10[2][: len(part10[2]) // 2]]),
        "multipart": _write(out / "multipart", _multipart_seeds()),
        "accept": _write(out / "accept", [h.encode() for h in ACCEPT_HEADERS]),
        "qido": _write(out / "qido", [q.encode() for q in QIDO_QUERIES]),
        "config": _write(out / "config", [c.encode() for c in CONFIG_FILES]),
        "hl7": _write(out / "hl7", _hl7_seeds()),
        "fhir": _write(out / "fhir", [bytes([k]) + json.dumps(b).encode() for k, b in FHIR_BODIES]),
    }
    return counts


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else _HERE / "corpus"
    print(main(target))

"""A minimal, blocking DICOM Upper Layer + C-FIND/C-ECHO client for latency measurements.

Why not pynetdicom here: pynetdicom's DUL runs in a separate reactor thread that polls the
socket and sleeps ``_run_loop_delay`` (1 ms by default) between polls, which adds up to a
millisecond or more per message round-trip.  With the delay set to 0 the reactor
busy-spins, burning one of the machine's two cores that the server under test needs.
This client does a plain blocking ``sendall``/``recv`` on a TCP_NODELAY socket from
the calling thread: no polling, no threads, so its overhead is tens of microseconds and
exactly the same for every server.  The identifier is encoded once per query (with
pydicom) and responses are only framed and counted, not decoded (see ``decode``).
"""

from __future__ import annotations

import io
import socket
import struct
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.99.1"
IMPLEMENTATION_VERSION = "MINIDIMSE_1"

PENDING = (0xFF00, 0xFF01)


class DimseError(Exception):
    pass


def _uid_bytes(uid: str) -> bytes:
    b = uid.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _ae(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def _elem(elem: int, value: bytes) -> bytes:
    """Implicit VR LE element of the command group (0000,eeee)."""
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _encode_command(fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_elem(e, v) for e, v in fields)
    return _elem(0x0000, struct.pack("<I", len(body))) + body


def _us(v: int) -> bytes:
    return struct.pack("<H", v)


def _parse_command(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    n = len(data)
    while pos + 8 <= n:
        _group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        out[elem] = data[pos : pos + length]
        pos += length
    return out


@dataclass
class FindResult:
    status: int
    matches: int
    seconds: float
    identifiers: list[bytes] = field(default_factory=list)


class MiniAssociation:
    """One association with a fixed set of presentation contexts (1: FIND, 3: ECHO)."""

    def __init__(
        self,
        host: str,
        port: int,
        called_aet: str,
        calling_aet: str = "BENCHSCU",
        timeout: float = 30.0,
        max_pdu: int = 16384,
        find_sop_class: str = STUDY_ROOT_FIND,
    ) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=65536)
        self.find_sop_class = find_sop_class
        self.peer_max_pdu = 0
        self.accepted: dict[int, str] = {}
        self._msg_id = 0
        self._associate(called_aet, calling_aet, max_pdu)

    # ------------------------------------------------------------------ framing
    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if data is None or len(data) != n:
            raise DimseError("connection closed by peer")
        return data

    def _read_pdu(self) -> tuple[int, bytes]:
        hdr = self._read_exact(6)
        pdu_type, _res, length = struct.unpack(">BBI", hdr)
        return pdu_type, self._read_exact(length)

    def _associate(self, called: str, calling: str, max_pdu: int) -> None:
        ctxs = [
            (1, self.find_sop_class, [EXPLICIT_LE, IMPLICIT_LE]),
            (3, VERIFICATION, [IMPLICIT_LE]),
        ]
        items = _item(0x10, APPLICATION_CONTEXT.encode())
        for cid, abstract, tss in ctxs:
            sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in tss)
            items += _item(0x20, struct.pack(">BBBB", cid, 0, 0, 0) + sub)
        user = (
            _item(0x51, struct.pack(">I", max_pdu))
            + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION.encode())
        )
        items += _item(0x50, user)
        body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\0" * 32 + items
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        pdu_type, data = self._read_pdu()
        if pdu_type == 0x03:
            raise DimseError(f"association rejected (result/source/reason={tuple(data[1:4])})")
        if pdu_type != 0x02:
            raise DimseError(f"unexpected PDU type 0x{pdu_type:02x} during association")
        pos = 68
        while pos + 4 <= len(data):
            itype, _r, ilen = struct.unpack_from(">BBH", data, pos)
            payload = data[pos + 4 : pos + 4 + ilen]
            pos += 4 + ilen
            if itype == 0x21:
                cid, _r1, result, _r2 = payload[:4]
                if result == 0:
                    sp = 4
                    while sp + 4 <= len(payload):
                        st, _s, sl = struct.unpack_from(">BBH", payload, sp)
                        if st == 0x40:
                            self.accepted[cid] = payload[sp + 4 : sp + 4 + sl].decode().rstrip("\0 ")
                        sp += 4 + sl
            elif itype == 0x50:
                sp = 0
                while sp + 4 <= len(payload):
                    st, _s, sl = struct.unpack_from(">BBH", payload, sp)
                    if st == 0x51 and sl == 4:
                        self.peer_max_pdu = struct.unpack_from(">I", payload, sp + 4)[0]
                    sp += 4 + sl

    def _pdata(self, cid: int, data: bytes, command: bool) -> bytes:
        """P-DATA-TF PDU(s) for one message part, fragmented to the peer's max PDU."""
        max_frag = (self.peer_max_pdu - 6) if self.peer_max_pdu else len(data) or 1
        out = []
        frags = [data[i : i + max_frag] for i in range(0, len(data), max_frag)] or [b""]
        for k, frag in enumerate(frags):
            mch = (1 if command else 0) | (2 if k == len(frags) - 1 else 0)
            pdv = struct.pack(">IBB", len(frag) + 2, cid, mch) + frag
            out.append(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
        return b"".join(out)

    def _receive_message(self) -> tuple[dict[int, bytes], bytes | None]:
        """Read one DIMSE message (command + optional data set)."""
        cmd = bytearray()
        data = bytearray()
        cmd_done = False
        need_data = False
        while True:
            pdu_type, pdu = self._read_pdu()
            if pdu_type == 0x07:
                raise DimseError("association aborted by peer")
            if pdu_type == 0x05:
                raise DimseError("peer requested release during operation")
            if pdu_type != 0x04:
                raise DimseError(f"unexpected PDU type 0x{pdu_type:02x}")
            pos = 0
            while pos < len(pdu):
                (plen,) = struct.unpack_from(">I", pdu, pos)
                mch = pdu[pos + 5]
                frag = pdu[pos + 6 : pos + 4 + plen]
                pos += 4 + plen
                if mch & 1:
                    cmd += frag
                    if mch & 2:
                        cmd_done = True
                        fields = _parse_command(bytes(cmd))
                        dstype = fields.get(0x0800)
                        need_data = dstype is not None and struct.unpack("<H", dstype[:2])[0] != 0x0101
                        if not need_data:
                            return fields, None
                else:
                    data += frag
                    if mch & 2 and cmd_done:
                        return fields, bytes(data)

    # ------------------------------------------------------------------ services
    def _next_id(self) -> int:
        self._msg_id = (self._msg_id % 65535) + 1
        return self._msg_id

    def echo(self) -> int:
        if 3 not in self.accepted:
            raise DimseError("Verification not accepted")
        cmd = _encode_command(
            [
                (0x0002, _uid_bytes(VERIFICATION)),
                (0x0100, _us(0x0030)),
                (0x0110, _us(self._next_id())),
                (0x0800, _us(0x0101)),
            ]
        )
        self.sock.sendall(self._pdata(3, cmd, True))
        fields, _ = self._receive_message()
        return struct.unpack("<H", fields[0x0900][:2])[0]

    def encode_identifier(self, ds: Dataset) -> bytes:
        if 1 not in self.accepted:
            raise DimseError("C-FIND presentation context not accepted")
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self.accepted[1] == IMPLICIT_LE
        write_dataset(fp, ds)
        return fp.getvalue()

    def find(self, identifier: bytes, keep: bool = False) -> FindResult:
        """Send one C-FIND-RQ (pre-encoded identifier), wait for the final response."""
        cmd = _encode_command(
            [
                (0x0002, _uid_bytes(self.find_sop_class)),
                (0x0100, _us(0x0020)),
                (0x0110, _us(self._next_id())),
                (0x0700, _us(0)),
                (0x0800, _us(0x0001)),
            ]
        )
        wire = self._pdata(1, cmd, True) + self._pdata(1, identifier, False)
        matches = 0
        kept: list[bytes] = []
        t0 = time.perf_counter()
        self.sock.sendall(wire)
        while True:
            fields, data = self._receive_message()
            status = struct.unpack("<H", fields[0x0900][:2])[0]
            if status in PENDING:
                matches += 1
                if keep and data is not None:
                    kept.append(data)
                continue
            return FindResult(status, matches, time.perf_counter() - t0, kept)

    def decode(self, data: bytes) -> Dataset:
        implicit = self.accepted.get(1) == IMPLICIT_LE
        return read_dataset(io.BytesIO(data), implicit, True)

    def release(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + b"\0\0\0\0")
            self.sock.settimeout(5)
            while True:
                pdu_type, _ = self._read_pdu()
                if pdu_type in (0x06, 0x07):
                    break
        except (OSError, DimseError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def __enter__(self) -> MiniAssociation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

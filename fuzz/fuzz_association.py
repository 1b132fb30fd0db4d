"""Fuzz target: one whole association fed from the input bytes.

The input is what a peer sends on a fresh connection: the A-ASSOCIATE-RQ,
then P-DATA-TF PDUs (command sets, data set fragments), A-RELEASE-RQ or
A-ABORT. It is written into a socket pair whose other end
:func:`dicomhub.dimse.association.serve_association` serves on this thread, so
PDU framing, the A-ASSOCIATE-RQ decoder and negotiation, command set
decoding, message reassembly and the providers' C-ECHO/C-STORE/C-FIND/C-GET/
C-MOVE and N-ACTION handling all see it, exactly as from the network.

Property (its docstring: "never raises because of anything the peer
sends"): no exception and no ERROR log record (its last line of defence
logs unexpected exceptions instead of raising); every C-STORE handed to the
archive carries its SOP Class and Instance UID, an accepted transfer syntax
and no more data set bytes than the input held; memory stays within a bound
set by the input's size and the configured maximum PDU, whatever the PDUs
announce.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from pydicom.dataset import Dataset

    from dicomhub.dimse.association import serve_association
    from dicomhub.dimse.requests import AssociationConfig, QueryRequest, StoreOutcome, StoreRequest

from fuzzing import MemoryBound, PropertyViolation, main

_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
# A few storage SOP classes (the ones the seeds use) plus Q/R, all served.
_STORAGE = {
    uid: _SYNTAXES
    for uid in (
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.4",  # MR
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    )
}
_MAX_PDU = 16384
CONFIG = AssociationConfig(
    ae_title="DICOMHUB",
    storage_contexts=_STORAGE,
    maximum_pdu_size=_MAX_PDU,
    acse_timeout=2.0,
    dimse_timeout=2.0,
    network_timeout=2.0,
    query_retrieve=True,
)


class _ErrorRecords(logging.Handler):
    """Collects ERROR records of the dicomhub loggers (unexpected exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_ERRORS = _ErrorRecords()
logging.getLogger("dicomhub").addHandler(_ERRORS)
logging.getLogger("dicomhub").propagate = False


def _feed(peer: socket.socket, data: bytes) -> None:
    try:
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server closed first (abort): the rest is not read


def _drain(peer: socket.socket) -> None:
    try:
        while peer.recv(65536):
            pass
    except OSError:
        pass


def test_one_input(data: bytes) -> None:
    """Serve one association whose peer sends ``data`` and then closes its side."""
    stores: list[StoreRequest] = []

    def on_store(request: StoreRequest) -> StoreOutcome:
        stores.append(request)
        return StoreOutcome(0x0000)

    def on_find(request: QueryRequest) -> Iterator[tuple[int, Dataset | None]]:
        return iter(())

    def on_retrieve(request: QueryRequest) -> tuple[int, str]:
        return 0xA801, "no destinations in the fuzz run"

    server, peer = socket.socketpair()
    feeder = threading.Thread(target=_feed, args=(peer, data))
    drainer = threading.Thread(target=_drain, args=(peer,))
    _ERRORS.records.clear()
    with MemoryBound(len(data), per_byte=8, fixed=(_MAX_PDU + (64 << 10)) * 4 + (4 << 20)):
        feeder.start()
        drainer.start()
        serve_association(
            server, ("127.0.0.1", 104), CONFIG, on_store, on_find=on_find, on_retrieve=on_retrieve
        )
        feeder.join()
        drainer.join()
    peer.close()
    if _ERRORS.records:
        record = _ERRORS.records[0]
        raise PropertyViolation(f"unexpected failure logged: {record.getMessage()}") from (
            record.exc_info[1] if record.exc_info else None
        )
    for request in stores:
        if not request.sop_class_uid or not request.sop_instance_uid:
            raise PropertyViolation("C-STORE handed on without its SOP Class/Instance UID")
        if request.transfer_syntax_uid not in _SYNTAXES:
            raise PropertyViolation(f"C-STORE in unaccepted syntax {request.transfer_syntax_uid}")
        if len(request.dataset) > len(data):
            raise PropertyViolation("C-STORE data set larger than everything received")


if __name__ == "__main__":
    main(test_one_input)

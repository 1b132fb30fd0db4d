"""Fuzz target: the HL7 v2 reader (``dicomhub.hl7.messages.handle``).

The input is what the MLLP listener hands to ``handle``: the bytes inside
one ``0x0B ... 0x1C 0x0D`` frame (the listener's framing itself is socket
code with no pure parsing function; ``nak`` of its rejects is reached here
too). The order service is the real one on a temporary SQLite index, so
that every field the fuzzer reaches goes through the real state rules.

Property: ``handle`` never raises and never takes its last-resort path
(an ERROR log record: an unexpected exception that cost the message an AE);
the answer is an HL7 ACK (``MSH`` with ``ACK`` in MSH-9, then ``MSA`` with
AA, AE or AR, and an ``ERR`` segment unless AA); nothing is committed to the
index unless the answer is AA; memory stays within :class:`MemoryBound`.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.hl7.messages import handle
    from dicomhub.index.engine import connect_engine, migrate
    from dicomhub.index.orders import OrderRepository
    from dicomhub.model.caller import Caller, Channel
    from dicomhub.services.orders import OrderService

from fuzzing import MemoryBound, PropertyViolation, main
from sqlalchemy import event

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-hl7-"))
atexit.register(shutil.rmtree, _DIR, True)
_ENGINE = connect_engine(f"sqlite:///{_DIR / 'index.db'}")
migrate(_ENGINE)
_ORDERS = OrderService(OrderRepository(_ENGINE))

# Writes of the open transaction, and whether any reached a commit.
_pending: list[str] = []
_committed: list[str] = []


@event.listens_for(_ENGINE, "before_cursor_execute")
def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        _pending.append(statement)


@event.listens_for(_ENGINE, "commit")
def _commit(conn: Any) -> None:
    _committed.extend(_pending)
    _pending.clear()


@event.listens_for(_ENGINE, "rollback")
def _rollback(conn: Any) -> None:
    _pending.clear()


class _Errors(logging.Handler):
    """The ERROR records of ``dicomhub.hl7`` (its last line of defence logs, not raises)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_ERRORS = _Errors()
_LOGGER = logging.getLogger("dicomhub.hl7")
_LOGGER.addHandler(_ERRORS)
_LOGGER.setLevel(logging.ERROR)  # every rejected message logs a warning: noise here
_LOGGER.propagate = False


def _caller(sending_application: str) -> Caller:
    return Caller(Channel.HL7, sending_application or "RIS")


def _check_ack(ack: bytes) -> str:
    """The MSA-1 code of ``ack`` after checking its shape; PropertyViolation otherwise."""
    # Every MSH-18 character set maps "|", "^", "\\" and the segment names to ASCII.
    segments = ack.decode("latin-1").split("\r")
    if segments[-1] != "" or len(segments) < 3:
        raise PropertyViolation(f"the ACK is not CR-terminated segments: {ack[:200]!r}")
    msh = segments[0].split("|")
    if msh[:2] != ["MSH", "^~\\&"] or len(msh) < 12 or not msh[8].startswith("ACK^") or not msh[9]:
        raise PropertyViolation(f"malformed MSH in the ACK: {segments[0][:200]!r}")
    msa = segments[1].split("|")
    if msa[0] != "MSA" or len(msa) < 2 or msa[1] not in ("AA", "AE", "AR") or len(msa) > 4:
        raise PropertyViolation(f"malformed MSA in the ACK: {segments[1][:200]!r}")
    rest = [s for s in segments[2:] if s]
    if msa[1] == "AA" and rest:
        raise PropertyViolation(f"an AA with more segments: {rest!r}")
    if msa[1] != "AA" and (len(rest) != 1 or not rest[0].startswith("ERR|")):
        raise PropertyViolation(f"an {msa[1]} without one ERR segment: {rest!r}")
    if any("\n" in s for s in segments):
        raise PropertyViolation("a line feed inside an ACK segment")
    return msa[1]


def test_one_input(data: bytes) -> None:
    """Answer ``data`` as the listener does and check the answer and the index."""
    _pending.clear()
    _committed.clear()
    _ERRORS.records.clear()
    with MemoryBound(len(data), per_byte=1024, fixed=1 << 20):
        ack = handle(data, _ORDERS, _caller)
    if _ERRORS.records:
        record = _ERRORS.records[0]
        raise PropertyViolation(f"handle's last resort: {record.getMessage()}") from (
            record.exc_info[1] if record.exc_info else None
        )
    code = _check_ack(ack)
    if _committed and code != "AA":
        raise PropertyViolation(f"answered {code} but committed {len(_committed)} writes: {_committed[:3]}")


if __name__ == "__main__":
    main(test_one_input)

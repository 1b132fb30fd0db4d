"""Fuzz target: the DIMSE command set decoder and the A-ASSOCIATE-RQ decoder.

The first byte selects the parser, the rest is its input:

* ``0``: :func:`dicomhub.dimse.messages.parse_command` (a reassembled command
  set); documented error :class:`~dicomhub.dimse.pdu.ProtocolError`.
* otherwise: :func:`dicomhub.dimse.acse.decode_associate_rq` (an
  A-ASSOCIATE-RQ after its 6-byte PDU header). Its caller (``Association.establish``)
  turns any :class:`Exception` into a refusal,
  since pynetdicom's decoder raises many types on garbage; so any
  ``Exception`` is allowed, but no hang, no memory past the bound, and a
  decoded request must carry its AE titles and contexts as ``str``/lists.

Both parsers only slice their input, so memory stays a small multiple of it.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["dicomhub", "pynetdicom.pdu", "pynetdicom.pdu_items"]):
    from dicomhub.dimse.acse import decode_associate_rq
    from dicomhub.dimse.messages import parse_command
    from dicomhub.dimse.pdu import ProtocolError

from fuzzing import MemoryBound, PropertyViolation, main


def test_one_input(data: bytes) -> None:
    """Decode ``data[1:]`` with the parser ``data[0]`` selects."""
    if not data:
        return
    body = data[1:]
    with MemoryBound(len(body), per_byte=16, fixed=1 << 20):
        if data[0] == 0:
            try:
                command = parse_command(body)
            except ProtocolError:
                return
            if not 0 <= command.command_field <= 0xFFFF:
                raise PropertyViolation("Command Field outside US")
            return
        try:
            rq, version = decode_associate_rq(memoryview(body))
        except Exception:  # noqa: BLE001 - documented: callers refuse on any Exception
            return
        if not isinstance(rq.calling_ae_title, str) or not isinstance(rq.called_ae_title, str):
            raise PropertyViolation("AE titles of a decoded A-ASSOCIATE-RQ are not text")
        if not 0 <= version <= 0xFFFF:
            raise PropertyViolation("protocol version outside 16 bits")
        for context in rq.presentation_context_definition_list:
            if not isinstance(context.transfer_syntax, list):
                raise PropertyViolation("presentation context without a transfer syntax list")


if __name__ == "__main__":
    main(test_one_input)

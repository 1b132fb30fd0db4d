"""Re-encoding between the uncompressed little-endian transfer syntaxes.

Every archive is expected to send an object stored in explicit VR little
endian to a peer that accepts only implicit VR little endian, and the other way
round: both carry the same values, only the element framing differs. Other
conversions (big endian, compressed syntaxes) belong to the codec layer.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

__all__ = ["EXPLICIT_VR_LITTLE_ENDIAN", "IMPLICIT_VR_LITTLE_ENDIAN", "little_endian_alternatives", "reencode"]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_LITTLE_ENDIAN = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def little_endian_alternatives(transfer_syntax_uid: str) -> tuple[str, ...]:
    """The other uncompressed little-endian syntax, when the stored one is one."""
    if transfer_syntax_uid in _LITTLE_ENDIAN:
        return tuple(ts for ts in _LITTLE_ENDIAN if ts != transfer_syntax_uid)
    return ()


def reencode(part10: bytes, transfer_syntax_uid: str) -> bytes:
    """The data set of ``part10`` (no File Meta) encoded in ``transfer_syntax_uid``.

    Raises
    ------
    ValueError
        When the target is not explicit or implicit VR little endian.
    """
    if transfer_syntax_uid not in _LITTLE_ENDIAN:
        raise ValueError(f"cannot re-encode to {transfer_syntax_uid}")
    ds = pydicom.dcmread(BytesIO(part10))
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(out, ds)
    return out.getvalue()

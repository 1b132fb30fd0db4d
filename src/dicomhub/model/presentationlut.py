"""The Presentation LUT of print management (PS3.4 H.4.9, PS3.3 C.11.4): P-values out.

A print SCU may create Presentation LUT instances on the association and
reference one from a film box or an image box (Referenced Presentation LUT
Sequence).  The LUT maps the preformatted image's values, after polarity, to
P-values, which are perceptually linear: the largest P-value is the least
density (clear film).

* Presentation LUT Shape ``IDENTITY``: the values are P-values already.
* ``LIN OD``: the values are linear in optical density.  dicomhub's films map
  density linearly onto gray levels (:func:`dicomhub.model.printing.density_level`),
  so this is the identity too.
* A Presentation LUT Sequence item: LUT Descriptor (entries, first input
  value mapped = 0, bits of an entry 10 to 16) and LUT Data.  An image whose
  value range differs from the number of entries is mapped proportionally
  (index = value x (entries - 1) / largest value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

from dicomhub.errors import InvalidRequest

__all__ = ["PRESENTATION_LUT", "InvalidPresentationLut", "PresentationLut", "presentation_lut_from"]

PRESENTATION_LUT: Final = "1.2.840.10008.5.1.1.23"

_SHAPES: Final = frozenset({"IDENTITY", "LIN OD"})
_SEQUENCE: Final = 0x20500010
_SHAPE: Final = 0x20500020


class InvalidPresentationLut(InvalidRequest):
    """A Presentation LUT not supported or malformed (0x0106); ``tags``: the attribute."""

    def __init__(self, message: str, tag: int) -> None:
        super().__init__(message)
        self.tags = (tag,)


@dataclass(frozen=True)
class PresentationLut:
    """A Presentation LUT instance: ``table`` None for a shape (identity here)."""

    sop_instance_uid: str
    shape: str
    table: tuple[int, ...] | None = None
    bits: int = 8

    def attributes(self) -> dict[str, str]:
        """As kept with a print job."""
        if self.table is None:
            return {"PresentationLUTShape": self.shape}
        return {"PresentationLUT": f"{len(self.table)} entries of {self.bits} bits"}


def presentation_lut_from(sop_instance_uid: str, attributes: Dataset) -> PresentationLut:
    """The Presentation LUT an N-CREATE Attribute List describes.

    Raises
    ------
    InvalidRequest
        With ``tags``: the shape is not IDENTITY or LIN OD, both or neither of
        shape and sequence are given, or the LUT is malformed (0x0106).
    """
    has_sequence = "PresentationLUTSequence" in attributes and len(attributes.PresentationLUTSequence) > 0
    shape = str(attributes.get("PresentationLUTShape", "") or "").strip().upper()
    if has_sequence == bool(shape):
        raise InvalidPresentationLut("give either Presentation LUT Shape or its Sequence", _SHAPE)
    if shape:
        if shape not in _SHAPES:
            raise InvalidPresentationLut(f"unsupported Presentation LUT Shape {shape[:16]!r}", _SHAPE)
        return PresentationLut(sop_instance_uid, shape)
    sequence = attributes.PresentationLUTSequence
    if len(sequence) != 1:
        raise InvalidPresentationLut("Presentation LUT Sequence needs exactly one item", _SEQUENCE)
    item = sequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
        data = [int(v) for v in raw] if not isinstance(raw, bytes) else _words(raw)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidPresentationLut(f"malformed Presentation LUT: {exc}"[:64], _SEQUENCE) from exc
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 stands for 2^16
    if first != 0 or not 10 <= bits <= 16 or len(data) < entries or entries < 2:
        raise InvalidPresentationLut("Presentation LUT: first mapped 0, 10-16 bits, all entries", _SEQUENCE)
    top = (1 << bits) - 1
    if any(not 0 <= v <= top for v in data[:entries]):
        raise InvalidPresentationLut("Presentation LUT: an entry outside its bits", _SEQUENCE)
    return PresentationLut(sop_instance_uid, "", tuple(data[:entries]), bits)


def _words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "little") for i in range(0, len(raw) - 1, 2)]

"""The transfer syntax catalogue: names, UIDs and what this install can do.

References
----------
PS3.5 Section 10 and Annex A (transfer syntaxes), PS3.6 Annex A (UID registry).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydicom.uid import UID

from dicomhub.errors import InvalidRequest

__all__ = [
    "NATIVE_UIDS",
    "TransferSyntax",
    "can_decode",
    "can_encode",
    "codec_table_markdown",
    "lossless_targets",
    "transfer_syntax",
    "transfer_syntaxes",
]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"

#: The syntaxes whose pixel data is not encapsulated (deflated compresses the whole data set).
NATIVE_UIDS = frozenset({EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED})
#: The JPEG (ISO 10918) family: its decoders apply the YCbCr -> RGB transform themselves.
JPEG_10918_UIDS = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1})

# (CLI name, UID, lossy): the order is the order of the catalogue and of the docs table.
_CATALOGUE: tuple[tuple[str, str, bool], ...] = (
    ("explicit-le", EXPLICIT_LE, False),
    ("implicit-le", IMPLICIT_LE, False),
    ("explicit-be", EXPLICIT_BE, False),
    ("deflated", DEFLATED, False),
    ("jpeg-baseline", JPEG_BASELINE, True),
    ("jpeg-extended", JPEG_EXTENDED, True),
    ("jpeg-lossless", JPEG_LOSSLESS, False),
    ("jpeg-lossless-sv1", JPEG_LOSSLESS_SV1, False),
    ("jpeg-ls-lossless", JPEG_LS_LOSSLESS, False),
    ("jpeg-ls-near-lossless", JPEG_LS_NEAR, True),
    ("j2k-lossless", J2K_LOSSLESS, False),
    ("j2k", J2K, True),
    ("htj2k-lossless", HTJ2K_LOSSLESS, False),
    ("htj2k-lossless-rpcl", HTJ2K_LOSSLESS_RPCL, False),
    ("htj2k", HTJ2K, True),
    ("rle", RLE, False),
)

# The lossless targets in order of preference (see lossless_targets).
_LOSSLESS_PREFERENCE = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED, RLE, JPEG_LS_LOSSLESS, J2K_LOSSLESS)


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One transfer syntax and what this install can do with it.

    Attributes
    ----------
    uid : str
        The Transfer Syntax UID.
    name : str
        Short CLI name, e.g. ``"jpeg-ls-lossless"``.
    title : str
        pydicom's UID name, e.g. ``"JPEG-LS Lossless Image Compression"``.
    lossy : bool
        Whether encoding in this syntax may lose information.
    encapsulated : bool
        Whether pixel data is encapsulated (compressed fragments).
    can_decode, can_encode : bool
        Whether this install can decode from / encode to this syntax.
    decoders : tuple of str
        The decoders tried, in order (pydicom plugin labels: the pylibjpeg family
        first, ``gdcm-fallback`` last; ``native`` for uncompressed syntaxes).
    encoders : tuple of str
        The encoders tried, in order (pydicom plugin labels, ``pillow``, ``imagecodecs``).
    """

    uid: str
    name: str
    title: str
    lossy: bool
    encapsulated: bool
    can_decode: bool
    can_encode: bool
    decoders: tuple[str, ...] = ()
    encoders: tuple[str, ...] = ()


def _decoders(uid: str) -> tuple[str, ...]:
    if uid in NATIVE_UIDS:
        return ("native",)
    from .pixels import decoding_plugins

    return decoding_plugins(uid)


def _encoders(uid: str) -> tuple[str, ...]:
    if uid in NATIVE_UIDS:
        return ("native",)
    if uid == JPEG_BASELINE:
        # pydicom has no JPEG baseline encoder; dicomhub uses Pillow (see jpeg_baseline.py).
        from PIL import features

        return ("pillow",) if features.check("jpg") else ()
    from .pixels import encoding_plugins

    return encoding_plugins(uid)


@functools.cache
def _catalogue() -> tuple[TransferSyntax, ...]:
    return tuple(
        TransferSyntax(
            uid=uid,
            name=name,
            title=UID(uid).name,
            lossy=lossy,
            encapsulated=uid not in NATIVE_UIDS,
            can_decode=bool(decoders := _decoders(uid)),
            can_encode=bool(encoders := _encoders(uid)),
            decoders=decoders,
            encoders=encoders,
        )
        for name, uid, lossy in _CATALOGUE
    )


def transfer_syntaxes() -> list[TransferSyntax]:
    """Return the catalogue of transfer syntaxes dicomhub knows.

    Computed once from the installed codec packages, then cached.

    Returns
    -------
    list of TransferSyntax
        In a fixed order: uncompressed, JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE.
    """
    return list(_catalogue())


def transfer_syntax(name_or_uid: str) -> TransferSyntax:
    """Look a transfer syntax up by CLI name (case-insensitive) or UID.

    Parameters
    ----------
    name_or_uid : str
        ``"jpeg-ls-lossless"`` or ``"1.2.840.10008.1.2.4.80"``.

    Returns
    -------
    TransferSyntax

    Raises
    ------
    dicomhub.errors.InvalidRequest
        For a name or UID that is not in the catalogue.
    """
    key = name_or_uid.strip()
    for ts in _catalogue():
        if key == ts.uid or key.lower() == ts.name:
            return ts
    names = ", ".join(ts.name for ts in _catalogue())
    raise InvalidRequest(f"unknown transfer syntax {name_or_uid!r} (known: {names}, or a UID)")


def _lookup(uid: str) -> TransferSyntax | None:
    for ts in _catalogue():
        if ts.uid == uid:
            return ts
    return None


def can_decode(uid: str) -> bool:
    """Return whether this install can decode pixel data in the syntax `uid`.

    Parameters
    ----------
    uid : str
        A Transfer Syntax UID; unknown UIDs give ``False``.

    Returns
    -------
    bool
    """
    ts = _lookup(uid)
    return ts is not None and ts.can_decode


def can_encode(uid: str) -> bool:
    """Return whether this install can encode pixel data in the syntax `uid`.

    Parameters
    ----------
    uid : str
        A Transfer Syntax UID; unknown UIDs give ``False``.

    Returns
    -------
    bool
    """
    ts = _lookup(uid)
    return ts is not None and ts.can_encode


def lossless_targets(source_uid: str) -> list[str]:
    """Return the syntaxes this install can produce from `source_uid` without loss.

    Parameters
    ----------
    source_uid : str
        The Transfer Syntax UID of the stored object.

    Returns
    -------
    list of str
        UIDs in order of preference: explicit-le, implicit-le, deflated, rle,
        jpeg-ls-lossless, j2k-lossless (those this install can encode).  Empty when
        `source_uid` is encapsulated and cannot be decoded here, or is unknown.
    """
    if not can_decode(source_uid):
        return []
    return [uid for uid in _LOSSLESS_PREFERENCE if can_encode(uid)]


def codec_table_markdown() -> str:
    """Return the codec table (name, UID, lossy, decode, encode, decoders, encoders) as Markdown.

    The docs (``docs/transcoding.md``) and the CLI both print this table, so they agree
    with what the running install can do.

    Returns
    -------
    str
        A Markdown table, one row per transfer syntax, ending with a newline.
    """

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    def order(names: tuple[str, ...]) -> str:
        return " → ".join(names) if names else "-"

    rows = [
        "| name | UID | title | lossy | decode | encode | decoders, in order | encoders |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ts in _catalogue():
        rows.append(
            f"| `{ts.name}` | {ts.uid} | {ts.title} | {yes(ts.lossy)} | "
            f"{yes(ts.can_decode)} | {yes(ts.can_encode)} | {order(ts.decoders)} | {order(ts.encoders)} |"
        )
    return "\n".join(rows) + "\n"

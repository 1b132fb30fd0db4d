"""Decode every pixel-bearing file of pydicom's test files and pydicom-data with
dicomhub and with the peers (GDCM's ``gdcmconv``, else DCMTK), and compare.

One loop serves the unit test (``tests/unit/test_decode_survey.py``), which
asserts its facts, and ``benchmarks/decode_table.py``, which writes the table in
``docs/transcoding.md``; the test also checks that the table there is this one.

The reference decode is an independent build: Debian's ``gdcmconv --raw``
(libgdcm-tools), not the ``python-gdcm`` wheel dicomhub falls back to; when it
cannot decode a file, DCMTK's ``dcmdjpeg`` / ``dcmdjpls`` / ``dcmdrle`` / ``dcmconv``
(by transfer syntax) are tried. Both write an uncompressed file that pydicom
reads without any plugin.

Comparison is like with like: when dicomhub and the peer hand back different
colour spaces (JPEG YBR_FULL_422 decoded to RGB by one and not the other,
uncompressed YBR_FULL kept as it is), both are converted to RGB with pydicom's
``convert_color_space`` first, which rounds, so such a file can only be *within
tolerance*. Lossless syntaxes otherwise must be *equal*; lossy ones
(JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K) may differ by
:data:`LOSSY_TOLERANCE` (the decoders' IDCT / wavelet arithmetic differs).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.data import get_testdata_files
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomhub.codec.pixels import decoded_frames
from dicomhub.codec.source import open_source
from dicomhub.errors import TranscodeError

__all__ = [
    "COLOUR_TOLERANCE",
    "KNOWN",
    "LOSSY_COLOUR_TOLERANCE",
    "LOSSY_TOLERANCE",
    "LOSSY_UIDS",
    "FileResult",
    "pixel_files",
    "survey",
    "survey_file",
    "table_markdown",
]

#: Max |difference| allowed between two lossy decodes of one greyscale codestream, in
#: units of the stored value (IDCT / inverse wavelet rounding; 1 is what is seen).
LOSSY_TOLERANCE = 2
#: The same for colour JPEG: pylibjpeg's libjpeg (Thomas Richter's) and the IJG
#: libjpeg of GDCM and DCMTK upsample subsampled chroma and convert YCbCr -> RGB
#: with different arithmetic; up to 5 is seen (examples_ybr_color 3, color3d 5).
LOSSY_COLOUR_TOLERANCE = 5
#: Max |difference| after a YBR_FULL -> RGB conversion on one side only (8-bit rounding).
COLOUR_TOLERANCE = 2
#: Files whose peer decode dicomhub does not reproduce, on purpose, and why.  The
#: test checks each still behaves as stated here, so the list stays true.
KNOWN: dict[str, str] = {
    "pydicom/MR_truncated.dcm": (
        "the pixel data is 4065 of 8192 bytes: GDCM pads it with zeros, dicomhub refuses "
        "to invent pixels (the decode check reports it)"
    ),
    "pydicom/SC_rgb_jpeg.dcm": (
        "malformed (a non-standard VR, a fragment where the Basic Offset Table item "
        "should be): DCMTK cannot parse it, GDCM salvages the JPEG, dicomhub refuses"
    ),
    "pydicom/rtdose_expb.dcm": (
        "32-bit samples written big endian in an OW element: the peers swap 16-bit "
        "words (as OW says), dicomhub (pydicom) 32-bit values, equal to rtdose.dcm, "
        "the file this one was made from"
    ),
    "pydicom/rtdose_expb_1frame.dcm": "as rtdose_expb.dcm",
    "pydicom/badVR.dcm": (
        "NumberOfFrames is '1A': dicomhub (like pydicom's Source) reads 1 frame, pydicom "
        "finds 15 frames' worth of bytes in GDCM's output; the first frame is equal"
    ),
}
LOSSY_UIDS = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.203",
    }
)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_DCMTK_BY_SYNTAX = {
    "1.2.840.10008.1.2.4.50": "dcmdjpeg",
    "1.2.840.10008.1.2.4.51": "dcmdjpeg",
    "1.2.840.10008.1.2.4.57": "dcmdjpeg",
    "1.2.840.10008.1.2.4.70": "dcmdjpeg",
    "1.2.840.10008.1.2.4.80": "dcmdjpls",
    "1.2.840.10008.1.2.4.81": "dcmdjpls",
    "1.2.840.10008.1.2.5": "dcmdrle",
}
_TOOL_TIMEOUT = 60.0

Array = NDArray[np.generic]


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file.

    Attributes
    ----------
    name : str
        ``pydicom/<path>`` or ``pydicom-data/<path>``, relative to the data folder.
    transfer_syntax_uid : str
        From the File Meta (``""`` for a file without one).
    reference : str
        ``gdcm`` or ``dcmtk``: the peer whose decode is the reference; ``""`` when
        neither decodes the file.
    reference_error : str
        Why the peers did not decode it.
    decoder : str
        dicomhub's decoding plugin(s), ``+``-joined; ``""`` when dicomhub failed.
    error : str
        Why dicomhub did not decode it.
    comparison : str
        ``equal``, ``within tolerance``, ``differs`` or ``-`` (nothing to compare).
    max_difference : int
        Max |dicomhub - reference| over all samples (-1 when not compared).
    note : str
        Colour conversion applied before comparing, shape mismatch, ...
    """

    name: str
    transfer_syntax_uid: str
    reference: str
    reference_error: str
    decoder: str
    error: str
    comparison: str
    max_difference: int
    note: str

    @property
    def lossy(self) -> bool:
        """Whether the stored syntax is a lossy one."""
        return self.transfer_syntax_uid in LOSSY_UIDS


@functools.cache
def _data_roots() -> list[tuple[str, Path]]:
    roots: list[tuple[str, Path]] = []
    pyd = Path(pydicom.__file__).parent / "data" / "test_files"
    roots.append(("pydicom", pyd))
    for path in get_testdata_files():
        if not Path(path).is_relative_to(pyd):
            roots.append(("pydicom-data", Path(path).parent))
            break
    return roots


def _label(path: Path) -> str:
    for prefix, root in _data_roots():
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root).as_posix()}"
    return path.name


def _has_pixels(path: Path) -> bool:
    try:
        with warnings.catch_warnings():  # odd files warn; under pytest a warning is an error
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, defer_size=256, specific_tags=list(_PIXEL_TAGS))
    except Exception:  # noqa: BLE001 - not a DICOM file at all: not pixel-bearing
        return False
    return any(tag in ds for tag in _PIXEL_TAGS)


def pixel_files() -> list[Path]:
    """Every file of ``get_testdata_files()`` that holds pixel data, sorted by label."""
    files = [Path(p) for p in get_testdata_files() if os.path.isfile(p)]
    return sorted((p for p in files if _has_pixels(p)), key=_label)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # house rule for every DCMTK process
    return env


def _run(args: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(args, capture_output=True, timeout=_TOOL_TIMEOUT, env=_env(), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    text = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
    return done.returncode == 0, (text[-1] if text else f"exit {done.returncode}")


def _read_native(path: Path) -> tuple[Array, str]:
    ds = pydicom.dcmread(path)
    if str(ds.file_meta.TransferSyntaxUID) not in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
    ):
        raise ValueError(f"the peer wrote {ds.file_meta.TransferSyntaxUID.name}, not an uncompressed file")
    arr = pixel_array(ds, as_rgb=False)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[np.newaxis, ...]
    return arr, str(ds.get("PhotometricInterpretation", "")).strip()


def _reference(
    path: Path, syntax: str, work: Path, peers: tuple[str, ...] = ("gdcm", "dcmtk")
) -> tuple[str, Array | None, str, str]:
    """(peer, frames, photometric interpretation, error) of the first of `peers` that decodes."""
    errors = []
    if "gdcm" in peers:
        out = work / "gdcm.dcm"
        ok, msg = _run(["gdcmconv", "--raw", str(path), str(out)])
        if ok:
            try:
                arr, pi = _read_native(out)
                return "gdcm", arr, pi, ""
            except Exception as exc:  # noqa: BLE001 - the peer's output is unreadable: try the next peer
                msg = f"{type(exc).__name__}: {exc}"
        errors.append(f"gdcmconv: {msg}")
    if "dcmtk" not in peers:
        return "", None, "", "; ".join(errors)
    tool = _DCMTK_BY_SYNTAX.get(syntax, "dcmconv")
    out = work / "dcmtk.dcm"
    args = [tool, str(path), str(out)] if tool != "dcmconv" else [tool, "+te", str(path), str(out)]
    ok, msg = _run(args)
    if ok:
        try:
            arr, pi = _read_native(out)
            return "dcmtk", arr, pi, ""
        except Exception as exc:  # noqa: BLE001
            msg = f"{type(exc).__name__}: {exc}"
    errors.append(f"{tool}: {msg}")
    return "", None, "", "; ".join(errors)


def _is_part10(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _as_received(path: Path, work: Path) -> Path:
    """A file without File Meta as dicomhub stores it after a C-STORE: with File Meta."""
    ds = pydicom.dcmread(path, force=True)
    implicit, little = ds.original_encoding
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )
    ds.file_meta = meta
    out = work / "part10.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _dicomhub(path: Path) -> tuple[Array | None, str, str, str]:
    """(frames, photometric interpretation, plugins, error) of dicomhub's decode."""
    if not _is_part10(path):
        with tempfile.TemporaryDirectory(prefix="dicomhub-survey-") as tmp:
            return _decode(_as_received(path, Path(tmp)))
    return _decode(path)


def _decode(path: Path) -> tuple[Array | None, str, str, str]:
    try:
        with open_source(path) as source:
            if source.pixel is None:
                return None, "", "", "no pixel data found"
            arrays, plugins, pi = [], [], ""
            for arr, props in decoded_frames(source):
                arrays.append(arr)
                pi = str(props["photometric_interpretation"])
                if props["decoding_plugin"] not in plugins:
                    plugins.append(str(props["decoding_plugin"]))
            return np.stack(arrays), pi, "+".join(plugins), ""
    except TranscodeError as exc:
        return None, "", "", str(exc)


def _to_rgb(arr: Array, pi: str) -> Array:
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        return np.asarray(convert_color_space(arr, "YBR_FULL", "RGB"))
    return arr


def _compare(syntax: str, ours: Array, our_pi: str, ref: Array, ref_pi: str) -> tuple[str, int, str]:
    note = ""
    if our_pi != ref_pi:
        note = f"dicomhub {our_pi}, peer {ref_pi}: both compared as RGB"
        ours, ref = _to_rgb(ours, our_pi), _to_rgb(ref, ref_pi)
    if ours.shape != ref.shape:
        if ours.shape[1:] == ref.shape[1:]:
            # Frame counts differ: say whether the frames both have agree.
            n = min(len(ours), len(ref))
            common = int(np.abs(ours[:n].astype(np.int64) - ref[:n].astype(np.int64)).max())
            return "differs", -1, f"{len(ours)} vs {len(ref)} frames, the first {n} differ by {common}"
        return "differs", -1, f"shape {ours.shape} vs {ref.shape}"
    diff = int(np.abs(ours.astype(np.int64) - ref.astype(np.int64)).max()) if ours.size else 0
    if diff == 0:
        return "equal", 0, note
    tolerance = 0
    if syntax in LOSSY_UIDS:
        tolerance = LOSSY_COLOUR_TOLERANCE if ours.ndim == 4 else LOSSY_TOLERANCE
    if note:
        tolerance = max(tolerance, COLOUR_TOLERANCE)
    return ("within tolerance" if diff <= tolerance else "differs"), diff, note


def survey_file(path: Path) -> FileResult:
    """Decode `path` with dicomhub and with the peers and compare the two.

    pydicom's warnings about these deliberately odd files (implicit VR where explicit
    was announced, excess padding, ...) are silenced: the test runs with warnings as
    errors, and a warning must not turn into a decode failure here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _survey_file(path)


def _survey_file(path: Path) -> FileResult:
    meta = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    syntax = str(getattr(getattr(meta, "file_meta", None), "TransferSyntaxUID", "") or "")
    with tempfile.TemporaryDirectory(prefix="dicomhub-survey-") as tmp:
        peer, ref, ref_pi, ref_error = _reference(path, syntax, Path(tmp))
        ours, our_pi, plugins, error = _dicomhub(path)
        comparison, diff, note = "-", -1, ""
        if ours is not None and ref is not None:
            comparison, diff, note = _compare(syntax, ours, our_pi, ref, ref_pi)
            if comparison == "differs" and peer == "gdcm" and syntax not in LOSSY_UIDS:
                # A second opinion: GDCM has bugs of its own (16- and 32-bit RGB RLE).
                second, ref2, ref2_pi, _ = _reference(path, syntax, Path(tmp), ("dcmtk",))
                if ref2 is not None:
                    again, diff2, note2 = _compare(syntax, ours, our_pi, ref2, ref2_pi)
                    if again != "differs":
                        gdcm_says = f"GDCM differs (max {diff})"
                        peer, comparison, diff = second, again, diff2
                        note = "; ".join(x for x in (note2, gdcm_says) if x)
    if not _is_part10(path):
        note = "; ".join(x for x in ("no File Meta: decoded as stored after a C-STORE", note) if x)
    name = _label(path)
    if name in KNOWN:
        note = "; ".join(x for x in (note, f"known: {KNOWN[name]}") if x)
    return FileResult(name, syntax, peer, ref_error, plugins, error, comparison, diff, note)


def survey(workers: int = 2) -> list[FileResult]:
    """:func:`survey_file` for each of :func:`pixel_files`, in their order.

    Two at a time by default: most of the time goes to the peers' processes.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(survey_file, pixel_files()))


def _short(text: str, limit: int = 90) -> str:
    for _, root in _data_roots():  # no install paths in the docs
        text = text.replace(f"{root}/", "")
    text = re.sub(r"^cannot decode the pixel data \(.*?\): ", "", text)  # the row names the syntax
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # object addresses change from run to run
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table_markdown(results: list[FileResult]) -> str:
    """The docs table: file, transfer syntax, peer, dicomhub's decoder, comparison."""
    rows = [
        "| file | transfer syntax | peer | dicomhub decoder | result |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        syntax = (
            pydicom.uid.UID(r.transfer_syntax_uid).name
            if r.transfer_syntax_uid
            else "(none in the File Meta)"
        )
        peer = r.reference or "none"
        decoder = r.decoder or "fails"
        if r.comparison == "-":
            if r.error and r.reference_error:
                result = f"neither decodes: {_short(r.error, 80)}"
            elif r.error:
                result = f"dicomhub fails: {_short(r.error, 80)}"
            else:
                result = f"peers fail: {_short(r.reference_error, 80)}"
        else:
            result = r.comparison if r.max_difference <= 0 else f"{r.comparison} (max {r.max_difference})"
        if r.note:
            result += f"; {r.note}"
        rows.append(f"| `{r.name}` | {syntax} | {peer} | {decoder} | {result} |")
    return "\n".join(rows) + "\n"

"""Issue 16: every pixel-bearing test file dicomhub decodes (which, per
``tests/unit/test_decode_survey.py``, is every one GDCM or DCMTK decodes, but for
the stated exceptions) can be retrieved with C-GET by a receiver that takes
uncompressed pixel data only.

The files of pydicom's test set and pydicom-data share UIDs and patients, so each
is copied (header changed, pixel data kept byte for byte) into one study under
one patient with its own series and instance UIDs, imported with
``dicomhub import`` into a running ``dicomhub serve``, and retrieved by:

* DCMTK's ``getscu +xi`` ("accept implicit VR LE only" for the storage contexts;
  DCMTK 3.6.7 proposes explicit VR LE alone with it, as
  ``test_transcoding.py`` notes: an uncompressed syntax either way), one process;
* pynetdicom as a C-GET SCU whose storage contexts offer Implicit VR Little
  Endian and nothing else: the receiver that accepts only implicit VR LE.

Each received object is compared with dicomhub's own decode of the original
(which the unit survey compares with GDCM's and DCMTK's).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomhub import codec
from dicomhub.codec.pixels import decoded_frames
from dicomhub.codec.source import open_source
from dicomhub.dimse.contexts import STORAGE_SOP_CLASSES
from dicomhub.errors import TranscodeError
from tests.decodesurvey import pixel_files

from .helpers import HOST, DicomhubServer, ServerPool, read_dir, run_cli, run_dcmtk

pytestmark = pytest.mark.e2e

PATIENT_ID = "I16-DECODE"
UNCOMPRESSED = {str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)}


@dataclass(frozen=True)
class Copy:
    """A test file rewritten into the retrieve study."""

    name: str
    path: Path
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    decoder: str
    pixels: tuple[tuple[int, ...], str, str]  # dicomhub's decode: shape, SHA-256, Photometric Interpretation


@dataclass(frozen=True)
class Archive:
    server: DicomhubServer
    study_uid: str
    copies: dict[str, Copy]  # by SOP Instance UID
    skipped: dict[str, str]  # file -> why it is not in the study (dicomhub does not decode it)


def _rewrite(path: Path, out: Path, study_uid: str) -> Dataset:
    ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    ds.PatientID = PATIENT_ID
    ds.PatientName = "Decode^Peers"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)
    return ds


def _is_part10(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _digest(arr: NDArray[np.generic]) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _decode(path: Path) -> tuple[tuple[int, ...], str, str, str]:
    """dicomhub's decode of every frame: shape, digest, Photometric Interpretation, decoders."""
    with open_source(path) as source:
        frames = list(decoded_frames(source))
    arr = np.stack([a for a, _ in frames])
    plugins = "+".join(dict.fromkeys(str(p["decoding_plugin"]) for _, p in frames))
    return arr.shape, _digest(arr), str(frames[-1][1]["photometric_interpretation"]), plugins


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    base = tmp_path_factory.mktemp("decode-peers")
    files = base / "files"
    files.mkdir()
    study_uid = generate_uid()
    copies: dict[str, Copy] = {}
    skipped: dict[str, str] = {}
    with warnings.catch_warnings():  # the odd files make pydicom warn; that is what they are for
        warnings.simplefilter("ignore")
        for index, path in enumerate(pixel_files()):
            name = f"{path.parent.name}/{path.name}"
            target = files / f"{index:03d}.dcm"
            if _is_part10(path) and (reason := codec.check_decodable(path, all_frames=True)) is not None:
                # As stored (the rewrite below may repair a malformed header, as pydicom reads it).
                skipped[name] = reason
                continue
            try:
                ds = _rewrite(path, target, study_uid)
            except Exception as exc:  # noqa: BLE001 - pydicom cannot even write it back
                skipped[name] = f"cannot be rewritten: {exc}"
                continue
            try:
                shape, digest, pi, plugins = _decode(target)
            except TranscodeError as exc:
                skipped[name] = str(exc)
                target.unlink()
                continue
            copies[str(ds.SOPInstanceUID)] = Copy(
                name,
                target,
                str(ds.SOPClassUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
                plugins,
                (shape, digest, pi),
            )
    pool = ServerPool(base / "servers")
    try:
        server = pool.start(args=["--decode-check", "off"])  # keep the CPU for the retrieves
        rc, out = run_cli("import", str(files), "--data-dir", str(server.data_dir), timeout=300)
        assert rc == 0, out[-3000:]
        yield Archive(server, study_uid, copies, skipped)
    finally:
        pool.close()
        shutil.rmtree(files, ignore_errors=True)


def _assert_same_pixels(archive: Archive, received: dict[str, Dataset]) -> None:
    wrong = []
    with warnings.catch_warnings():  # e.g. "excess padding" in objects that carry it
        warnings.simplefilter("ignore")
        for uid, ds in received.items():
            copy = archive.copies[uid]
            assert str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED, (copy.name, ds.file_meta)
            shape, digest, pi = copy.pixels
            if not str(ds.get("NumberOfFrames", "1")).strip().isdigit():
                # pydicom's badVR.dcm ("1A"): dicomhub reads it as one frame, and so does this check.
                ds.NumberOfFrames = shape[0]
            got = pixel_array(ds, as_rgb=False)
            if got.size > int(np.prod(shape)) and got.shape[1:] == shape[1:]:
                got = got[: shape[0]]  # pixel data longer than NumberOfFrames says (badVR.dcm again)
            got = got.reshape(shape) if got.size == int(np.prod(shape)) else got
            # Uncompressed YBR_FULL_422 is sent as stored (subsampled); pydicom expands it to
            # YBR_FULL samples when reading, as dicomhub's decode does.
            got_pi = str(ds.PhotometricInterpretation).replace("YBR_FULL_422", "YBR_FULL")
            if got_pi != pi or got.shape != shape:
                wrong.append(f"{copy.name}: {ds.PhotometricInterpretation} {got.shape} vs {pi} {shape}")
            elif _digest(got) != digest:
                wrong.append(f"{copy.name}: the pixels differ from dicomhub's decode of the original")
    assert not wrong, "\n".join(wrong)


def test_the_study_holds_every_file_dicomhub_decodes(archive: Archive) -> None:
    # The survey's exceptions (dicomhub refuses a truncated and a malformed file) and the
    # files no peer decodes are the only ones left out.
    assert len(archive.copies) >= 150, archive.skipped
    assert set(archive.skipped) <= {
        "test_files/MR_truncated.dcm",
        "test_files/SC_rgb_jpeg.dcm",
        "test_files/JPEG2000-embedded-sequence-delimiter.dcm",
        "test_files/meta_missing_tsyntax.dcm",
        "test_files/nested_priv_SQ.dcm",
    }, archive.skipped
    assert {c.decoder for c in archive.copies.values() if c.name.endswith("/JPEG-lossy.dcm")} == {
        "gdcm-fallback"
    }


def test_getscu_uncompressed_only_receives_every_file(archive: Archive, tmp_path: Path) -> None:
    started = time.monotonic()
    rc, output = run_dcmtk(
        "getscu", "-S", "-d", "+xi", "-od", tmp_path, "-aet", "GETI16", "-aec", archive.server.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study_uid}",
        HOST, str(archive.server.dimse_port), timeout=300,
    )  # fmt: skip
    received = read_dir(tmp_path)
    expected = archive.copies
    # getscu proposes storage contexts for DCMTK's own list of storage SOP classes: an
    # object of a class it did not propose cannot be sent to it (pynetdicom below offers all).
    proposed = _getscu_proposed_classes(output)
    missing = set(expected) - set(received)
    failures = sorted(archive.copies[u].name for u in missing if archive.copies[u].sop_class_uid in proposed)
    assert not failures, f"{failures}\n{output[-3000:]}"
    assert len(received) >= len(expected) - 3, sorted(archive.copies[u].sop_class_uid for u in missing)
    _assert_same_pixels(archive, received)
    assert time.monotonic() - started < 120


def _getscu_proposed_classes(output: str) -> set[str]:
    names = set(re.findall(r"Abstract Syntax: =(\S+)", output))
    return {str(pydicom.uid.UID(k)) for k in names if k.startswith("1.")} | {
        uid for uid, kw in _storage_keywords().items() if kw in names
    }


def _storage_keywords() -> dict[str, str]:
    from pydicom._uid_dict import UID_dictionary

    return {uid: entry[4] for uid, entry in UID_dictionary.items()}


def test_implicit_only_receiver_gets_every_file(archive: Archive) -> None:
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    received: dict[str, Dataset] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    expected = archive.copies
    # Every class is negotiated, the retired Ultrasound Image Storage of two
    # pydicom-data files (color-pl.dcm, color-px.dcm) included.
    assert {c.sop_class_uid for c in expected.values()} <= set(STORAGE_SOP_CLASSES)
    assert "1.2.840.10008.5.1.4.1.1.6" in {c.sop_class_uid for c in expected.values()}
    classes = sorted({c.sop_class_uid for c in expected.values()})
    assert len(classes) < 127  # one context each, plus the C-GET one
    ae = AE(ae_title="IMPLI16")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [str(ImplicitVRLittleEndian)])
    assoc = ae.associate(
        HOST, archive.server.dimse_port, ae_title=archive.server.aet,
        ext_neg=[build_role(c, scp_role=True) for c in classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        # One C-GET per series (one per file): each file's retrieve succeeds or fails on its own.
        failed = []
        for copy in expected.values():
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = archive.study_uid
            query.SeriesInstanceUID = copy.series_instance_uid
            query.SOPInstanceUID = copy.sop_instance_uid
            responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
            final = responses[-1][0]
            if final is None or int(final.Status) != 0x0000 or copy.sop_instance_uid not in received:
                failed.append(f"{copy.name}: {final}")
    finally:
        assoc.release()
        ae.shutdown()
    assert not failed, "\n".join(failed)
    assert set(received) == set(expected)
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in received.values()} == {str(ImplicitVRLittleEndian)}
    _assert_same_pixels(archive, received)


def test_rendered_and_thumbnail_of_the_12_bit_jpeg(archive: Archive) -> None:
    """Rendering goes through the same decoder chain: the file only GDCM decodes renders."""
    (copy,) = [c for c in archive.copies.values() if c.name.endswith("/JPEG-lossy.dcm")]
    url = (
        f"{archive.server.base_url}/dicomweb/studies/{archive.study_uid}"
        f"/series/{copy.series_instance_uid}/instances/{copy.sop_instance_uid}"
    )
    for suffix in ("/rendered", "/thumbnail"):
        r = httpx.get(url + suffix, headers={"Accept": "image/png"}, timeout=60)
        assert r.status_code == 200, (suffix, r.text[:300])
        image = Image.open(io.BytesIO(r.content))
        assert image.format == "PNG" and image.size[0] > 0
    rendered = np.asarray(Image.open(io.BytesIO(httpx.get(url + "/rendered", timeout=60).content)))
    assert rendered.shape[:2] == (1024, 256) and int(rendered.max()) > int(rendered.min())


def test_check_reports_the_decoders_used(tmp_path: Path) -> None:
    """The decode check of a running server records which decoder read each object, and
    ``dicomhub check --json`` reports it (the GDCM fallback for the 12-bit JPEG)."""
    names = ("JPEG-lossy.dcm", "MR_small_jp2klossless.dcm", "CT_small.dcm")
    files = tmp_path / "files"
    files.mkdir()
    for name in names:
        shutil.copy(get_testdata_file(name), files / name)  # type: ignore[arg-type]
    pool = ServerPool(tmp_path / "servers")
    try:
        server = pool.start(args=["--decode-check", "always"])
        rc, out = run_cli("import", str(files), "--data-dir", str(server.data_dir))
        assert rc == 0, out
        deadline = time.monotonic() + 60
        while True:
            rc, out = run_cli("check", "--json", "--data-dir", str(server.data_dir), "--sizes-only")
            report = json.loads(out[out.index("{") :])
            if sum(d["objects"] for d in report["decoders"]) == len(names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        pool.close()
    assert rc == 0 and report["decode_failures"] == [], out
    assert sorted((d["transfer_syntax_uid"], d["decoder"], d["objects"]) for d in report["decoders"]) == [
        ("1.2.840.10008.1.2.1", "native", 1),
        ("1.2.840.10008.1.2.4.51", "gdcm-fallback", 1),
        ("1.2.840.10008.1.2.4.90", "pylibjpeg", 1),
    ]

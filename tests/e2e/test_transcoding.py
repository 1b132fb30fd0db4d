"""Transfer syntaxes end to end (issue 4): objects stored compressed are handed
to DIMSE peers and DICOMweb clients in a syntax they accept, compressed at
rest on request, and checked for decodability after ingest.

The compressed test data is made with pydicom's own encoders (codec_data.py),
so every "equal pixels" assertion compares dicomhub against an independent
codec implementation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import datagen
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from . import codec_data as cd
from .helpers import (
    HOST,
    DicomhubServer,
    RetrieveResult,
    ServerPool,
    StoreSCP,
    assert_alive,
    get,
    move,
    read_dir,
    run_cli_split,
    run_dcmtk,
    split_multipart,
    store,
    store_ok,
    wait_until,
)

pytestmark = pytest.mark.e2e

DEST = "IMPLSCP"
DICOM_MT = 'multipart/related; type="application/dicom"'
J2K_STORE = ["-R", "-xv"]  # storescu: propose exactly what the files need, J2K lossless first


@dataclass
class Item:
    ds: Dataset  # as stored (file meta included)
    pixels: np.ndarray  # the decoded original
    path: Path


@dataclass
class Corpus:
    study_uid: str
    ct_series_uid: str
    ct: list[Item]  # 16-bit signed, J2K lossless
    rgb: Item  # 8-bit RGB, J2K lossless with MCT (YBR_RCT), own series
    mixed_series_uid: str
    mixed_good: list[Item]  # J2K lossless, decodable
    mixed_bad: list[Dataset] = field(default_factory=list)  # corrupt J2K, MPEG-2


def _by_uid(items: list[Item]) -> dict[str, Item]:
    return {str(i.ds.SOPInstanceUID): i for i in items}


@pytest.fixture(scope="module")
def implicit_scp(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    return storescp_factory(aet=DEST, implicit_only=True)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, implicit_scp: StoreSCP) -> DicomhubServer:
    return module_servers.start("tx", remote_aes={DEST: implicit_scp.address})


@pytest.fixture(scope="module")
def corpus(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("tx-data")
    study_uid, ct_series, mixed_series = datagen.uid(), datagen.uid(), datagen.uid()
    common = {"study_uid": study_uid, "patient_id": "TXPAT", "patient_name": "Codec^Carla"}

    ct: list[Item] = []
    for i in range(1, 5):
        plain, arr = cd.signed_ct(rows=64, cols=48, seed=i, series_uid=ct_series, instance_number=i, **common)
        ds = cd.compressed(plain, cd.J2K_LOSSLESS)
        ct.append(Item(ds, arr, cd.save(ds, root / "j2k" / f"ct{i}.dcm")))
    rgb_ds, rgb = cd.rgb_j2k_rct(series_number=2, **common)
    rgb_item = Item(rgb_ds, rgb, cd.save(rgb_ds, root / "j2k" / "rgb.dcm"))

    good: list[Item] = []
    for i in range(1, 3):
        plain, arr = cd.signed_ct(
            seed=10 + i, series_uid=mixed_series, series_number=3, instance_number=i, **common
        )
        ds = cd.compressed(plain, cd.J2K_LOSSLESS)
        good.append(Item(ds, arr, cd.save(ds, root / "mixed" / f"good{i}.dcm")))
    corrupt = cd.corrupt_j2k(series_uid=mixed_series, series_number=3, instance_number=3, **common)
    cd.save(corrupt, root / "mixed" / "corrupt.dcm")
    video = cd.mpeg2_video(series_uid=mixed_series, series_number=3, instance_number=4, **common)
    cd.save(video, root / "video" / "video.dcm")

    store_ok(hub, root / "j2k", root / "mixed", extra=J2K_STORE, expect=4 + 1 + 3)
    store_ok(hub, root / "video", extra=["-R", "-xm"], expect=1)
    return Corpus(study_uid, ct_series, ct, rgb_item, mixed_series, good, [corrupt, video])


def _assert_lossless(received: dict[str, Dataset], expected: list[Item], ts: str) -> None:
    want = _by_uid(expected)
    assert set(received) == set(want), f"received {sorted(received)} expected {sorted(want)}"
    for uid, item in want.items():
        got = received[uid]
        assert got.file_meta.TransferSyntaxUID == ts, (
            f"{uid}: received in {got.file_meta.TransferSyntaxUID}, expected {ts}"
        )
        arr = got.pixel_array
        assert arr.shape == item.pixels.shape, uid
        assert np.array_equal(arr, item.pixels), f"{uid}: pixels differ after transcoding to {ts}"
        expected_pi = "RGB" if item.pixels.ndim == 3 else "MONOCHROME2"
        assert got.PhotometricInterpretation == expected_pi, (
            f"{uid}: PhotometricInterpretation {got.PhotometricInterpretation} in {ts}"
        )
        assert got.SamplesPerPixel == (3 if item.pixels.ndim == 3 else 1)
        assert got.PixelRepresentation == item.ds.PixelRepresentation
        assert got.BitsStored == item.ds.BitsStored


# --------------------------------------------------------------------------- DIMSE retrieve


_DCMTK_TS = {"LittleEndianImplicit": cd.IMPLICIT_LE, "LittleEndianExplicit": cd.EXPLICIT_LE}


def _getscu_ct_storage_syntaxes(output: str) -> set[str]:
    """Transfer syntaxes getscu proposed for CT Image Storage (from its -d log)."""
    m = re.search(
        r"Abstract Syntax: =CTImageStorage\n(?:D: .*\n){0,3}?"
        r"D:\s+Proposed Transfer Syntax\(es\):\n((?:D:\s+=\S+\n)+)",
        output,
    )
    assert m, "no CT Image Storage proposal in getscu's debug output"
    return {_DCMTK_TS.get(name, name) for name in re.findall(r"=(\S+)", m.group(1))}


def _pyn_get(
    hub: DicomhubServer, keys: dict[str, str], syntaxes: list[str], calling: str
) -> tuple[Dataset, dict[str, Dataset]]:
    """C-GET with pynetdicom as the SCU whose CT Image Storage context offers
    exactly ``syntaxes``; returns the final response and what was received."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    received: dict[str, Dataset] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, syntaxes)
    assoc = ae.associate(
        HOST, hub.dimse_port, ae_title=hub.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    for k, v in keys.items():
        setattr(query, k, v)
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
        ae.shutdown()
    final = responses[-1][0]
    assert final is not None and "Status" in final, responses
    return final, received


def test_cget_getscu_uncompressed_only_receives_lossless_pixels(
    hub: DicomhubServer, corpus: Corpus, tmp_path: Path
) -> None:
    """getscu ``+xi`` ("accept implicit VR LE only"); DCMTK 3.6.7's getscu in
    fact proposes explicit VR LE alone for the storage contexts with it, which
    is checked from its log: either way an uncompressed syntax only."""
    out = tmp_path / "get"
    out.mkdir()
    rc, output = run_dcmtk(
        "getscu", "-S", "-d", "+xi", "+B", "-od", out, "-aet", "GETIMPL", "-aec", hub.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={corpus.study_uid}",
        HOST, str(hub.dimse_port),
    )  # fmt: skip
    proposed = _getscu_ct_storage_syntaxes(output)
    assert len(proposed) == 1 and proposed <= {cd.IMPLICIT_LE, cd.EXPLICIT_LE}, proposed
    ts = proposed.pop()
    got = read_dir(out)
    ct_and_rgb = {u: d for u, d in got.items() if d.SeriesInstanceUID != corpus.mixed_series_uid}
    _assert_lossless(ct_and_rgb, [*corpus.ct, corpus.rgb], ts)
    # the whole study was asked for: the two good mixed-series objects came too,
    # the corrupt J2K and the MPEG-2 could not be made uncompressed
    mixed = {u: d for u, d in got.items() if d.SeriesInstanceUID == corpus.mixed_series_uid}
    _assert_lossless(mixed, corpus.mixed_good, ts)
    res = RetrieveResult(rc, output)
    counts = res.final_counts()
    assert counts["completed"] == 7 and counts["failed"] == 2, f"{counts}\n{output[-3000:]}"
    assert res.statuses()[-1] == 0xB000, res.statuses()


def test_cget_implicit_only_receives_lossless_pixels(hub: DicomhubServer, corpus: Corpus) -> None:
    """Implicit VR LE as the only storage syntax (pynetdicom as the C-GET SCU)."""
    final, got = _pyn_get(
        hub,
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": corpus.study_uid},
        [cd.IMPLICIT_LE],
        "PYNGETIMPL",
    )
    ct_and_rgb = {u: d for u, d in got.items() if d.SeriesInstanceUID != corpus.mixed_series_uid}
    _assert_lossless(ct_and_rgb, [*corpus.ct, corpus.rgb], cd.IMPLICIT_LE)
    mixed = {u: d for u, d in got.items() if d.SeriesInstanceUID == corpus.mixed_series_uid}
    _assert_lossless(mixed, corpus.mixed_good, cd.IMPLICIT_LE)
    assert int(final.Status) == 0xB000, final
    assert int(final.NumberOfCompletedSuboperations) == 7, final
    assert int(final.NumberOfFailedSuboperations) == 2, final  # corrupt J2K, MPEG-2 (no context)


def test_cmove_to_implicit_only_scp(hub: DicomhubServer, corpus: Corpus, implicit_scp: StoreSCP) -> None:
    implicit_scp.clear()
    for series in (corpus.ct_series_uid, str(corpus.rgb.ds.SeriesInstanceUID)):
        res = move(hub, DEST, "SERIES", {"StudyInstanceUID": corpus.study_uid, "SeriesInstanceUID": series})
        assert res.returncode == 0, res.output[-3000:]
        counts = res.final_counts()
        assert counts["failed"] in (0, None) and counts["completed"], f"{counts}\n{res.output[-3000:]}"
        assert res.statuses()[-1] == 0x0000, res.output[-3000:]
    _assert_lossless(read_dir(implicit_scp.out_dir), [*corpus.ct, corpus.rgb], cd.IMPLICIT_LE)


def test_cmove_untranscodable_fails_only_its_suboperation(
    hub: DicomhubServer, corpus: Corpus, implicit_scp: StoreSCP
) -> None:
    implicit_scp.clear()
    res = move(
        hub,
        DEST,
        "SERIES",
        {"StudyInstanceUID": corpus.study_uid, "SeriesInstanceUID": corpus.mixed_series_uid},
    )
    counts = res.final_counts()
    assert counts["completed"] == 2, f"{counts}\n{res.output[-3000:]}"
    assert counts["failed"] == 2, f"corrupt J2K + MPEG-2 must fail: {counts}\n{res.output[-3000:]}"
    # PS3.4 C.4.2.1.5: sub-operations complete, one or more failures -> Warning B000
    assert res.statuses() and res.statuses()[-1] == 0xB000, res.output[-3000:]
    received = read_dir(implicit_scp.out_dir)
    _assert_lossless(received, corpus.mixed_good, cd.IMPLICIT_LE)
    assert_alive(hub)


def test_cget_offering_only_jpeg_ls(hub: DicomhubServer, corpus: Corpus) -> None:
    """getscu cannot offer JPEG-LS alone (``+xt`` adds the uncompressed syntaxes),
    so pynetdicom is the C-GET SCU here, with JPEG-LS Lossless as the only
    transfer syntax of its storage context."""
    keys = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": corpus.study_uid}
    for series, items in (
        (corpus.ct_series_uid, corpus.ct),
        (str(corpus.rgb.ds.SeriesInstanceUID), [corpus.rgb]),
    ):
        final, received = _pyn_get(
            hub, {**keys, "SeriesInstanceUID": series}, [cd.JPEG_LS_LOSSLESS], "PYNGETJLS"
        )
        assert int(final.Status) == 0x0000, final
        assert int(final.get("NumberOfFailedSuboperations", 0)) == 0
        _assert_lossless(received, items, cd.JPEG_LS_LOSSLESS)


# --------------------------------------------------------------------------- DICOMweb


def _client(srv: DicomhubServer) -> DICOMwebClient:
    return DICOMwebClient(url=srv.base_url + "/dicomweb")


def _instance_url(srv: DicomhubServer, ds: Dataset, suffix: str = "") -> str:
    return (
        f"{srv.base_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def _wado_parts(url: str, accept: str) -> list[tuple[dict[str, str], bytes]]:
    r = httpx.get(url, headers={"Accept": accept}, timeout=60)
    assert r.status_code == 200, f"{accept}: {r.status_code} {r.text[:500]}"
    return split_multipart(r.content, r.headers["content-type"])


def _part_dataset(content: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(content), force=True)


def _wado_datasets(url: str, accept: str = DICOM_MT) -> dict[str, Dataset]:
    out = {}
    for _, content in _wado_parts(url, accept):
        ds = _part_dataset(content)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_wado_rs_stored_syntax_is_byte_identical(hub: DicomhubServer, corpus: Corpus) -> None:
    item = corpus.ct[0]
    parts = _wado_parts(_instance_url(hub, item.ds), f"{DICOM_MT}; transfer-syntax=*")
    assert len(parts) == 1
    headers, content = parts[0]
    assert cd.J2K_LOSSLESS in headers.get("content-type", ""), headers
    ds = _part_dataset(content)
    assert ds.file_meta.TransferSyntaxUID == cd.J2K_LOSSLESS
    assert ds.PixelData == item.ds.PixelData, "the stored J2K codestream must come back unchanged"
    data = item.path.read_bytes()
    from dicomhub.model.structure import dataset_offset

    assert data[dataset_offset(data) :] in content
    # dicomweb-client too
    got = _client(hub).retrieve_instance(
        corpus.study_uid,
        corpus.ct_series_uid,
        str(item.ds.SOPInstanceUID),
        media_types=(("application/dicom", "*"),),
    )
    assert got.file_meta.TransferSyntaxUID == cd.J2K_LOSSLESS and got.PixelData == item.ds.PixelData


@pytest.mark.parametrize("target", [cd.EXPLICIT_LE, cd.JPEG_LS_LOSSLESS, cd.IMPLICIT_LE, cd.RLE])
def test_wado_rs_instance_transcoded(hub: DicomhubServer, corpus: Corpus, target: str) -> None:
    client = _client(hub)
    for item in (corpus.ct[1], corpus.rgb):
        if target == cd.IMPLICIT_LE:  # dicomweb-client does not ask for implicit VR LE
            got = _wado_datasets(_instance_url(hub, item.ds), f"{DICOM_MT}; transfer-syntax={target}")
        else:
            ds = client.retrieve_instance(
                corpus.study_uid, str(item.ds.SeriesInstanceUID), str(item.ds.SOPInstanceUID),
                media_types=(("application/dicom", target),),
            )  # fmt: skip
            got = {str(ds.SOPInstanceUID): ds}
        _assert_lossless(got, [item], target)


def test_wado_rs_series_transcoded(hub: DicomhubServer, corpus: Corpus) -> None:
    client = _client(hub)
    for ts in (cd.EXPLICIT_LE, cd.JPEG_LS_LOSSLESS):
        series = client.retrieve_series(
            corpus.study_uid, corpus.ct_series_uid, media_types=(("application/dicom", ts),)
        )
        _assert_lossless({str(d.SOPInstanceUID): d for d in series}, corpus.ct, ts)
    rgb_series = client.retrieve_series(
        corpus.study_uid, str(corpus.rgb.ds.SeriesInstanceUID), media_types=(("application/dicom", cd.RLE),)
    )
    _assert_lossless({str(d.SOPInstanceUID): d for d in rgb_series}, [corpus.rgb], cd.RLE)


def test_wado_rs_default_is_explicit_le(hub: DicomhubServer, corpus: Corpus) -> None:
    item = corpus.ct[2]
    parts = _wado_parts(_instance_url(hub, item.ds), DICOM_MT)
    assert len(parts) == 1
    assert cd.J2K_LOSSLESS not in parts[0][0].get("content-type", "")
    ds = _part_dataset(parts[0][1])
    _assert_lossless({str(ds.SOPInstanceUID): ds}, [item], cd.EXPLICIT_LE)
    series = _wado_datasets(
        f"{hub.base_url}/dicomweb/studies/{corpus.study_uid}/series/{corpus.ct_series_uid}"
    )
    _assert_lossless(series, corpus.ct, cd.EXPLICIT_LE)


@pytest.mark.parametrize(
    "ts",
    [
        "1.2.840.10008.1.2.4.100",  # MPEG-2 from a CT: cannot be produced
        "1.2.3.4.5.6.7.8",  # no such transfer syntax
    ],
)
def test_wado_rs_unproducible_syntax_is_406(hub: DicomhubServer, corpus: Corpus, ts: str) -> None:
    r = httpx.get(
        _instance_url(hub, corpus.ct[0].ds),
        headers={"Accept": f"{DICOM_MT}; transfer-syntax={ts}"},
        timeout=30,
    )
    assert r.status_code == 406, f"{ts}: {r.status_code} {r.text[:300]}"
    assert r.text.strip(), "a 406 must say why"


def test_wado_rs_corrupt_object_to_explicit_is_not_200_garbage(hub: DicomhubServer, corpus: Corpus) -> None:
    """The corrupt J2K object cannot be decoded: asking for explicit VR LE must
    not yield a 200 with made-up pixels; as stored it is still available."""
    bad = corpus.mixed_bad[0]
    r = httpx.get(
        _instance_url(hub, bad), headers={"Accept": f"{DICOM_MT}; transfer-syntax={cd.EXPLICIT_LE}"}
    )
    if r.status_code == 200:  # only acceptable if no part claims to be explicit LE
        parts = split_multipart(r.content, r.headers["content-type"])
        assert not parts, f"corrupt J2K 'transcoded' into {len(parts)} part(s)"
    else:
        assert r.status_code in (406, 500, 503), r.status_code
    stored = _wado_parts(_instance_url(hub, bad), f"{DICOM_MT}; transfer-syntax=*")
    assert _part_dataset(stored[0][1]).PixelData == bad.PixelData
    assert_alive(hub)


def test_wado_rs_frames_uncompressed(hub: DicomhubServer, corpus: Corpus) -> None:
    client = _client(hub)
    for item in (corpus.ct[0], corpus.rgb):
        expected = item.pixels.astype(item.pixels.dtype.newbyteorder("<")).tobytes()
        frames = client.retrieve_instance_frames(
            corpus.study_uid, str(item.ds.SeriesInstanceUID), str(item.ds.SOPInstanceUID), frame_numbers=[1],
            media_types=(("application/octet-stream", cd.EXPLICIT_LE),),
        )  # fmt: skip
        assert len(frames) == 1 and frames[0] == expected, (
            "frame 1 as octet-stream differs from the decoded pixels"
        )
        # without a transfer-syntax parameter
        r = httpx.get(
            _instance_url(hub, item.ds, "/frames/1"),
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert r.status_code == 200, r.text[:300]
        parts = split_multipart(r.content, r.headers["content-type"])
        assert [p[1] for p in parts] == [expected]


def test_wado_rs_frames_compressed(hub: DicomhubServer, corpus: Corpus) -> None:
    import jpeg_ls
    import openjpeg

    item = corpus.ct[3]
    client = _client(hub)
    jls = client.retrieve_instance_frames(
        corpus.study_uid, corpus.ct_series_uid, str(item.ds.SOPInstanceUID), frame_numbers=[1],
        media_types=(("image/jls",),),
    )  # fmt: skip
    assert len(jls) == 1
    assert jls[0][:2] == b"\xff\xd8", "a JPEG-LS codestream starts with SOI"
    raw, info = jpeg_ls.decode_buffer(jls[0])
    assert info["allowed_lossy_error"] == 0 and (info["height"], info["width"]) == item.pixels.shape, info
    assert bytes(raw) == item.pixels.astype("<i2").tobytes(), "JPEG-LS frame is not lossless"
    # with an explicit transfer-syntax parameter
    r = httpx.get(
        _instance_url(hub, item.ds, "/frames/1"),
        headers={"Accept": f'multipart/related; type="image/jls"; transfer-syntax={cd.JPEG_LS_LOSSLESS}'},
    )
    assert r.status_code == 200, r.text[:300]
    assert "image/jls" in r.headers["content-type"]
    parts = split_multipart(r.content, r.headers["content-type"])
    assert (
        len(parts) == 1
        and bytes(jpeg_ls.decode_buffer(parts[0][1])[0]) == item.pixels.astype("<i2").tobytes()
    )
    # image/jp2: the stored J2K frame (or an equivalent one)
    jp2 = client.retrieve_instance_frames(
        corpus.study_uid, corpus.ct_series_uid, str(item.ds.SOPInstanceUID), frame_numbers=[1],
        media_types=(("image/jp2",),),
    )  # fmt: skip
    arr = openjpeg.decode(jp2[0])
    assert arr.astype("<u2").tobytes() == item.pixels.astype("<i2").tobytes()


def test_wado_uri_transfer_syntax(hub: DicomhubServer, corpus: Corpus) -> None:
    item = corpus.ct[1]
    params = {
        "requestType": "WADO",
        "studyUID": corpus.study_uid,
        "seriesUID": corpus.ct_series_uid,
        "objectUID": str(item.ds.SOPInstanceUID),
        "contentType": "application/dicom",
    }
    for ts in (cd.JPEG_LS_LOSSLESS, cd.EXPLICIT_LE, cd.IMPLICIT_LE):
        r = httpx.get(f"{hub.base_url}/dicomweb/wado", params={**params, "transferSyntax": ts}, timeout=30)
        assert r.status_code == 200, f"{ts}: {r.status_code} {r.text[:300]}"
        ds = pydicom.dcmread(BytesIO(r.content))
        _assert_lossless({str(ds.SOPInstanceUID): ds}, [item], ts)
    # PS3.18 WADO-URI: without transferSyntax the object comes as explicit VR LE
    r = httpx.get(f"{hub.base_url}/dicomweb/wado", params=params, timeout=30)
    assert r.status_code == 200
    ds = pydicom.dcmread(BytesIO(r.content))
    _assert_lossless({str(ds.SOPInstanceUID): ds}, [item], cd.EXPLICIT_LE)
    r = httpx.get(
        f"{hub.base_url}/dicomweb/wado", params={**params, "transferSyntax": "1.2.840.10008.1.2.4.100"}
    )
    assert r.status_code == 406, r.status_code


def test_rendered_from_j2k(hub: DicomhubServer, corpus: Corpus) -> None:
    for item in (corpus.ct[0], corpus.rgb):
        r = httpx.get(_instance_url(hub, item.ds, "/rendered"), headers={"Accept": "image/png"}, timeout=30)
        assert r.status_code == 200, r.text[:300]
        assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(BytesIO(r.content))
        rows, cols = item.pixels.shape[:2]
        assert img.size == (cols, rows)
        px = np.asarray(img)
        assert px.std() > 0, "rendered image is flat"
        if item.pixels.ndim == 3:  # RGB is rendered as is
            assert np.array_equal(px[..., :3], item.pixels)


# --------------------------------------------------------------------------- compression at rest


def _stored_syntax(srv: DicomhubServer, ds: Dataset) -> str:
    parts = _wado_parts(_instance_url(srv, ds), f"{DICOM_MT}; transfer-syntax=*")
    return str(_part_dataset(parts[0][1]).file_meta.TransferSyntaxUID)


def _conflicts(data_dir: Path) -> list[object]:
    rc, out, err = run_cli_split("conflicts", "--data-dir", str(data_dir), "--json")
    assert rc == 0, f"{out}\n{err}"
    parsed = json.loads(out)
    assert isinstance(parsed, list)
    return parsed


def _plain_files(root: Path) -> tuple[list[Item], Item]:
    study = datagen.uid()
    cts = []
    for i in range(1, 3):
        ds, arr = cd.signed_ct(seed=100 + i, study_uid=study, instance_number=i, rows=80, cols=72)
        cts.append(Item(ds, arr, cd.save(ds, root / f"ct{i}.dcm")))
    mr = datagen.make_dataset(modality="MR", study_uid=study, rows=32, cols=32)
    mr_item = Item(mr, mr.pixel_array, cd.save(mr, root / "mr.dcm"))
    return cts, mr_item


@pytest.mark.parametrize(
    ("rule", "ct_syntax", "mr_syntax"),
    [
        ("CT=jpeg-ls-lossless", cd.JPEG_LS_LOSSLESS, cd.EXPLICIT_LE),
        ("*=j2k-lossless", cd.J2K_LOSSLESS, cd.J2K_LOSSLESS),
    ],
)
def test_compression_at_rest(
    servers: ServerPool, tmp_path: Path, rule: str, ct_syntax: str, mr_syntax: str
) -> None:
    srv = servers.start("rest", args=["--compress", rule])
    cts, mr = _plain_files(tmp_path / "plain")
    store_ok(srv, tmp_path / "plain", expect=3)
    for item in cts:
        assert _stored_syntax(srv, item.ds) == ct_syntax, (
            f"{rule}: CT stored as {_stored_syntax(srv, item.ds)}"
        )
    assert _stored_syntax(srv, mr.ds) == mr_syntax
    # default retrieval: explicit VR LE with the original pixels, bit for bit
    by_uid = _wado_datasets(f"{srv.base_url}/dicomweb/studies/{cts[0].ds.StudyInstanceUID}")
    _assert_lossless(by_uid, [*cts, mr], cd.EXPLICIT_LE)
    for item in [*cts, mr]:
        assert by_uid[str(item.ds.SOPInstanceUID)].PixelData == item.ds.PixelData
    # C-GET (uncompressed offered): the original bytes
    res = get(srv, "STUDY", {"StudyInstanceUID": str(cts[0].ds.StudyInstanceUID)}, tmp_path / "got")
    assert res.returncode == 0 and res.final_counts()["completed"] == 3, res.output[-3000:]
    for uid, ds in read_dir(tmp_path / "got").items():
        orig = next(i for i in [*cts, mr] if str(i.ds.SOPInstanceUID) == uid)
        assert ds.PixelData == orig.ds.PixelData, uid
    # the same originals again: recognised as the same objects, not conflicts
    again = store_ok(srv, tmp_path / "plain", expect=3)
    assert set(again.statuses.values()) == {0}
    assert _conflicts(srv.data_dir) == []
    assert _stored_syntax(srv, cts[0].ds) == ct_syntax


def _serve_until_exit(srv: DicomhubServer, timeout: float = 30.0) -> tuple[int | None, str]:
    cmd, env = srv.command()
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        return None, out.decode(errors="replace")


@pytest.mark.parametrize("rule", ["CT=jpeg-baseline", "*=1.2.840.10008.1.2.4.91"])
def test_lossy_compression_rule_needs_permission(servers: ServerPool, rule: str) -> None:
    srv = servers.create("lossy", args=["--compress", rule])
    rc, out = _serve_until_exit(srv)
    assert rc is not None, f"dicomhub serve with lossy rule {rule} did not exit:\n{out[-2000:]}"
    assert rc != 0, out
    assert rule in out or rule.split("=", 1)[1] in out, (
        f"the message must name the rule {rule}:\n{out[-2000:]}"
    )
    # allowed explicitly, the same rule starts
    ok = servers.start("lossy-ok", args=["--compress", rule, "--allow-lossy-compression"])
    assert ok.healthz() == 200


# --------------------------------------------------------------------------- decode checks


def _decode_failures(srv: DicomhubServer) -> list[dict[str, object]]:
    r = httpx.get(f"{srv.base_url}/admin/decode-failures", timeout=10)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert isinstance(body, list), body
    return body


def _check(data_dir: Path) -> tuple[int, dict[str, object]]:
    rc, out, err = run_cli_split("check", "--data-dir", str(data_dir), "--json")
    try:
        parsed = json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"dicomhub check --json printed no JSON ({rc}):\n{out}\n{err}") from exc
    assert isinstance(parsed, dict) and isinstance(parsed.get("decode_failures"), list), parsed
    return rc, parsed


@pytest.mark.parametrize("mode", ["always", "sample"])
def test_decode_check_flags_corrupt_object(servers: ServerPool, tmp_path: Path, mode: str) -> None:
    srv = servers.start("check", args=[] if mode == "sample" else ["--decode-check", mode])
    study = datagen.uid()
    # sample mode decodes the first objects of each new syntax/SOP class: the
    # corrupt one goes first
    bad = cd.corrupt_j2k(study_uid=study, instance_number=1)
    cd.save(bad, tmp_path / "in" / "a_corrupt.dcm")
    good = []
    for i in range(2, 4):
        plain, _ = cd.signed_ct(
            seed=i, study_uid=study, series_uid=str(bad.SeriesInstanceUID), instance_number=i
        )
        good.append(cd.compressed(plain, cd.J2K_LOSSLESS))
        cd.save(good[-1], tmp_path / "in" / f"b_good{i}.dcm")
    res = store(srv, tmp_path / "in" / "a_corrupt.dcm", extra=J2K_STORE)
    assert res.statuses.get(str(bad.SOPInstanceUID)) == 0, (
        f"a corrupt object is still stored:\n{res.output[-3000:]}"
    )
    store_ok(srv, *sorted((tmp_path / "in").glob("b_*.dcm")), extra=J2K_STORE, expect=2)

    def flagged() -> list[dict[str, object]]:
        return [f for f in _decode_failures(srv) if f.get("sop_instance_uid") == str(bad.SOPInstanceUID)]

    entry = wait_until(flagged, timeout=20, what="corrupt object in /admin/decode-failures")[0]  # type: ignore[index]
    assert entry["series_instance_uid"] == str(bad.SeriesInstanceUID)
    assert entry["study_instance_uid"] == study
    assert entry["transfer_syntax_uid"] == cd.J2K_LOSSLESS
    assert entry["reason"] and entry["checked_at"], entry
    flagged_uids = {f["sop_instance_uid"] for f in _decode_failures(srv)}
    assert not flagged_uids & {str(g.SOPInstanceUID) for g in good}, "decodable objects were flagged"

    rc, report = _check(srv.data_dir)
    assert rc == 1, f"dicomhub check must exit 1 when something is flagged: {report}"
    uids = {f["sop_instance_uid"] for f in report["decode_failures"]}  # type: ignore[union-attr]
    assert uids == {str(bad.SOPInstanceUID)}, report
    assert_alive(srv)


def test_check_clean_archive(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start("clean", args=["--decode-check", "always"])
    files = []
    for i in range(1, 4):
        plain, _ = cd.signed_ct(seed=i)
        files.append(cd.save(cd.compressed(plain, cd.J2K_LOSSLESS), tmp_path / "in" / f"g{i}.dcm"))
    store_ok(srv, *files, extra=J2K_STORE, expect=3)
    srv.stop()  # let the background checks finish or be abandoned; the archive is at rest
    rc, report = _check(srv.data_dir)
    assert report["decode_failures"] == [], report
    assert rc == 0


# --------------------------------------------------------------------------- codec table


def test_codecs_cli_and_http_agree(hub: DicomhubServer) -> None:
    rc, out, err = run_cli_split("codecs", "--json")
    assert rc == 0, f"{out}\n{err}"
    cli = json.loads(out)
    r = httpx.get(f"{hub.base_url}/admin/codecs", timeout=10)
    assert r.status_code == 200, r.text[:300]
    http = r.json()
    assert isinstance(cli, list) and cli
    assert sorted(cli, key=lambda e: e["uid"]) == sorted(http, key=lambda e: e["uid"])
    keys = {"uid", "name", "title", "lossy", "encapsulated", "can_decode", "can_encode"}
    keys |= {"decoders", "encoders"}
    for entry in cli:
        assert keys <= set(entry), entry
    by_name = {e["name"]: e for e in cli}
    for name, uid in [
        ("explicit-le", cd.EXPLICIT_LE),
        ("rle", cd.RLE),
        ("jpeg-ls-lossless", cd.JPEG_LS_LOSSLESS),
        ("j2k-lossless", cd.J2K_LOSSLESS),
    ]:
        assert name in by_name, f"{name} missing from {sorted(by_name)}"
        e = by_name[name]
        assert e["uid"] == uid and e["can_decode"] is True and e["can_encode"] is True, e
        assert e["lossy"] is False
    assert by_name["explicit-le"]["encapsulated"] is False and by_name["j2k-lossless"]["encapsulated"] is True
    assert by_name["jpeg-baseline"]["lossy"] is True
    # Issue 16: the order decoders are tried in, the GDCM fallback last.
    assert by_name["jpeg-extended"]["decoders"] == ["pylibjpeg", "pillow", "gdcm-fallback"]
    assert by_name["jpeg-extended"]["encoders"] == []
    assert by_name["htj2k-lossless"]["encoders"] == ["imagecodecs"]
    rc, text, _ = run_cli_split("codecs")
    assert rc == 0 and "explicit-le" in text and "j2k-lossless" in text, text
    assert "gdcm-fallback" in text, text

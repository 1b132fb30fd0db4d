"""The same object in another transfer syntax is the same object (issue 16).

Real sample files (pydicom's), stored once with DCMTK ``storescu``, then sent
again in another encoding: converted by ``storescu`` itself (``-xi``: Implicit
VR Little Endian only; ``-xe``: Explicit VR Little Endian first), decompressed
by ``dcmdrle`` / ``dcmdjpls`` / ``dcmdjpeg`` / ``gdcmconv --raw``, or
compressed losslessly by ``dcmcjpls`` / ``gdcmconv --j2k``. Every such resend
is answered with success and leaves one instance and no conflict; a resend
with a changed PatientName or one changed pixel is refused (0xC401) and kept
in quarantine under the default ``keep`` policy. One server for the module;
every test works on its own copies with fresh UIDs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from .helpers import (
    DicomhubServer,
    index_rows,
    run_cli,
    run_cli_split,
    run_dcmtk,
    store,
    study_instance_count,
)

pytestmark = pytest.mark.e2e

SUCCESS, DUPLICATE_REFUSED = 0x0000, 0xC401
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"

# Native originals: storescu converts them itself; lossless compressed copies are made too.
NATIVE = ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]
# Compressed originals and the tool that makes their decompressed copy.
COMPRESSED = {
    "MR_small_RLE.dcm": ["dcmdrle"],
    "MR_small_jpeg_ls_lossless.dcm": ["dcmdjpls"],
    "US1_J2KR.dcm": ["gdcmconv", "--raw"],  # JPEG 2000 lossless, YBR_RCT -> RGB
    "SC_rgb_jpeg_dcmtk.dcm": ["dcmdjpeg"],  # JPEG baseline (lossy), YBR_FULL -> RGB
    # JPEG baseline 4:2:2: DCMTK's decoder and ours differ by up to 2 (chroma upsampling).
    "SC_rgb_dcmtk_+eb+cy+np.dcm": ["dcmdjpeg"],
    "JPEG2000.dcm": ["gdcmconv", "--raw"],  # lossy JPEG 2000; GDCM drops NumberOfFrames 1
}
LOSSLESS_COMPRESSORS = {"jpeg-ls": ["dcmcjpls"], "j2k": ["gdcmconv", "--j2k"]}


def tool(*args: str | Path) -> None:
    """A DCMTK or GDCM command line tool (TCP_NODELAY=1 in its environment, as for all)."""
    rc, out = run_dcmtk(*map(str, args))  # type: ignore[arg-type]
    assert rc == 0, f"{' '.join(map(str, args))} failed ({rc}):\n{out[-3000:]}"


def fresh_copy(name: str, out: Path) -> Path:
    """The sample file, encoding unchanged (dcmodify rewrites it in its own syntax),
    under fresh Study/Series/SOP Instance UIDs and PatientID."""
    src = get_testdata_file(name)
    assert src is not None, f"pydicom test file {name} is not installed"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(Path(src).read_bytes())
    uid = lambda: f"2.25.{uuid.uuid4().int}"  # noqa: E731
    tool(
        "dcmodify", "-nb", "-gin",
        "-m", f"(0020,000D)={uid()}", "-m", f"(0020,000E)={uid()}", "-m", f"(0008,0018)={uid()}",
        "-m", f"(0010,0020)=SAME{uuid.uuid4().hex[:8]}",
        out,
    )  # fmt: skip
    return out


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def syntax_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def send(server: DicomhubServer, path: Path, *flags: str) -> int:
    """storescu one file; its C-STORE status."""
    res = store(server, path, extra=list(flags or as_is(path)))
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert uid in res.statuses, f"no C-STORE response for {path.name}:\n{res.output[-3000:]}"
    return res.statuses[uid]


# storescu's option that proposes a file's own syntax (first), for the syntaxes it
# does not propose by default.
OWN_SYNTAX = {
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def as_is(path: Path) -> tuple[str, ...]:
    """storescu flags that send ``path`` in its own syntax."""
    flag = OWN_SYNTAX.get(syntax_of(path))
    return ("-R",) if flag is None else ("-R", flag)


def stored_syntax(server: DicomhubServer, path: Path) -> str:
    rows = index_rows(
        server.data_dir,
        "SELECT transfer_syntax_uid FROM instance WHERE sop_instance_uid = :uid",
        uid=uid_of(path),
    )
    assert len(rows) == 1, rows
    return str(rows[0][0])


def send_ok(server: DicomhubServer, path: Path, *flags: str) -> None:
    """storescu one file, which must be answered with success. Without flags, in its
    own syntax (see :func:`as_is`)."""
    res = store(server, path, extra=list(flags or as_is(path)))
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert res.returncode == 0, f"storescu {' '.join(flags)} {path.name} failed:\n{res.output[-3000:]}"
    assert res.statuses.get(uid) == SUCCESS, (
        f"storescu {' '.join(flags)} {path.name} ({syntax_of(path)}): status "
        f"{res.statuses.get(uid)!r}\n{res.output[-3000:]}"
    )
    if flags == ("-xi",):
        # It really went over in Implicit VR Little Endian (the only syntax proposed),
        # and was judged by content: the server says so when the digests differ.
        assert_judged_by_content(server, uid, IMPLICIT_LE)


def assert_judged_by_content(server: DicomhubServer, uid: str, received_syntax: str) -> None:
    line = f"{uid} is already held"
    said = f"the copy received in {received_syntax} has the same content"
    found = [row for row in server.log_text().splitlines() if line in row and said in row]
    assert found, f"the server did not log {line!r} ... {said!r}:\n{server.log_tail(30)}"


def conflicts(server: DicomhubServer) -> list[dict[str, object]]:
    rc, out, err = run_cli_split("conflicts", "--data-dir", str(server.data_dir), "--json")
    assert rc == 0, f"{out}\n{err}"
    parsed = json.loads(out)
    assert isinstance(parsed, list)
    return parsed


def conflicts_of(server: DicomhubServer, path: Path) -> list[dict[str, object]]:
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return [c for c in conflicts(server) if c.get("sop_instance_uid") == uid]


def assert_held_once(server: DicomhubServer, path: Path) -> None:
    ds = dcmread(path, stop_before_pixels=True)
    assert study_instance_count(server.data_dir, str(ds.StudyInstanceUID)) == 1
    rows = index_rows(
        server.data_dir,
        "SELECT count(*) FROM instance WHERE sop_instance_uid = :uid",
        uid=str(ds.SOPInstanceUID),
    )
    assert rows == [(1,)], rows
    assert conflicts_of(server, path) == []


@pytest.mark.parametrize("name", NATIVE)
def test_native_original_resent_in_other_syntaxes(server: DicomhubServer, tmp_path: Path, name: str) -> None:
    original = fresh_copy(name, tmp_path / "original.dcm")
    send_ok(server, original)
    assert stored_syntax(server, original) == syntax_of(original)
    send_ok(server, original, "-xi")
    send_ok(server, original, "-xe")
    for label, command in LOSSLESS_COMPRESSORS.items():
        compressed = tmp_path / f"{label}.dcm"
        tool(*command, original, compressed)
        assert syntax_of(compressed) != syntax_of(original)
        send_ok(server, compressed)  # in the file's own (compressed) syntax
        assert_judged_by_content(server, uid_of(original), syntax_of(compressed))
    assert_held_once(server, original)


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_original_resent_decompressed(server: DicomhubServer, tmp_path: Path, name: str) -> None:
    original = fresh_copy(name, tmp_path / "original.dcm")
    send_ok(server, original)
    assert stored_syntax(server, original) == syntax_of(original)
    decompressed = tmp_path / "decompressed.dcm"
    tool(*COMPRESSED[name], original, decompressed)
    assert syntax_of(decompressed) in (EXPLICIT_LE, IMPLICIT_LE)
    send_ok(server, decompressed, "-xi")
    send_ok(server, decompressed, "-xe")
    # -xe proposes Explicit VR Little Endian first: the decompressed copy as it is.
    assert_judged_by_content(server, uid_of(original), EXPLICIT_LE)
    assert_held_once(server, original)


def test_changed_patient_name_goes_to_the_duplicate_policy(server: DicomhubServer, tmp_path: Path) -> None:
    original = fresh_copy("CT_small.dcm", tmp_path / "original.dcm")
    send_ok(server, original)
    renamed = tmp_path / "renamed.dcm"
    renamed.write_bytes(original.read_bytes())
    tool("dcmodify", "-nb", "-m", "PatientName=Someone^Else", renamed)
    status = send(server, renamed, "-xi")
    assert status == DUPLICATE_REFUSED, f"0x{status:04X}"
    (refused,) = conflicts_of(server, original)
    assert refused["kind"] == "duplicate-different-content"
    assert "PatientName" in json.dumps(refused)
    ds = dcmread(original, stop_before_pixels=True)
    assert study_instance_count(server.data_dir, str(ds.StudyInstanceUID)) == 1


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm"])
def test_one_changed_pixel_goes_to_the_duplicate_policy(
    server: DicomhubServer, tmp_path: Path, name: str
) -> None:
    original = fresh_copy(name, tmp_path / "original.dcm")
    send_ok(server, original)
    assert stored_syntax(server, original) == syntax_of(original)
    native = tmp_path / "native.dcm"
    if name in COMPRESSED:
        tool(*COMPRESSED[name], original, native)
    else:
        native.write_bytes(original.read_bytes())
    ds = dcmread(native)
    arr = ds.pixel_array.copy()
    arr[5, 7] = arr[5, 7] + 1 if arr[5, 7] < np.iinfo(arr.dtype).max else arr[5, 7] - 1
    ds.PixelData = arr.tobytes()
    ds.save_as(native)
    status = send(server, native, "-xi")
    assert status == DUPLICATE_REFUSED, f"0x{status:04X}"
    (refused,) = conflicts_of(server, original)
    assert "pixel values" in json.dumps(refused)


def test_stow_rs_resend_in_another_syntax_is_success(server: DicomhubServer, tmp_path: Path) -> None:
    original = fresh_copy("MR_small.dcm", tmp_path / "original.dcm")
    send_ok(server, original)
    implicit = tmp_path / "implicit.dcm"
    tool("dcmconv", "+ti", original, implicit)
    jpeg_ls = tmp_path / "jpeg-ls.dcm"
    tool("dcmcjpls", original, jpeg_ls)
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes()
            for p in (implicit, jpeg_ls)
        )
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "00081198" not in answer, answer  # no Failed SOP Sequence
    uid = str(dcmread(original, stop_before_pixels=True).SOPInstanceUID)
    referenced = [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]]
    assert referenced == [uid, uid]
    assert_held_once(server, original)


def test_import_of_another_syntax_is_already_present(server: DicomhubServer, tmp_path: Path) -> None:
    original = fresh_copy("MR_small_bigendian.dcm", tmp_path / "original.dcm")
    send_ok(server, original)
    copy = tmp_path / "in" / "j2k.dcm"
    copy.parent.mkdir()
    tool("gdcmconv", "--j2k", original, copy)
    rc, out = run_cli("import", "--data-dir", str(server.data_dir), str(copy.parent))
    assert rc == 0, out
    assert "already present" in out and "1" in out, out
    assert_held_once(server, original)

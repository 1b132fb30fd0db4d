"""dicomhub's requestor engine as the Storage SCU of DCMTK storescp (TCP_NODELAY=1):
instances sent from memory and straight from their files (sendfile) arrive whole,
a refused context is reported, and the association is released cleanly."""

from __future__ import annotations

from pathlib import Path

from datagen import write_instance
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from dicomhub.dimse.requestor import Association
from dicomhub.dimse.requests import FileRegion
from dicomhub.model.structure import dataset_offset

from .helpers import HOST, StoreSCP, read_dir

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_c_store_to_storescp_from_memory_and_from_files(storescp: StoreSCP, tmp_path: Path) -> None:
    storescp.clear()
    written = [write_instance(tmp_path / f"ct{n}.dcm", instance_number=n + 1) for n in range(6)]
    syntaxes = {str(dcmread(ds.filename).file_meta.TransferSyntaxUID) for ds in written}
    assert len(syntaxes) == 1
    ts = syntaxes.pop()
    with Association.open(
        HOST, storescp.port, storescp.aet, "DICOMHUB", [(CT, [ts])], maximum_pdu_size=16384
    ) as assoc:  # fmt: skip
        cid = assoc.accepted(CT, ts)
        assert cid is not None
        for n, ds in enumerate(written):
            path = Path(ds.filename)
            data = path.read_bytes()
            offset = dataset_offset(data)
            body: bytes | FileRegion = (
                memoryview(data)[offset:] if n % 2 else FileRegion(str(path), offset, len(data) - offset)
            )
            status, comment = assoc.send_c_store(cid, CT, ds.SOPInstanceUID, body, n + 1)
            assert (status, comment) == (0x0000, None)
    received = read_dir(storescp.out_dir)
    assert set(received) == {ds.SOPInstanceUID for ds in written}
    for ds in written:
        got = received[ds.SOPInstanceUID]
        assert got.PixelData == ds.PixelData and got.PatientID == ds.PatientID


def test_storescp_refuses_a_class_it_does_not_take(storescp: StoreSCP) -> None:
    with Association.open(
        HOST,
        storescp.port,
        storescp.aet,
        "DICOMHUB",
        [(CT, [ExplicitVRLittleEndian]), ("1.2.3.4.5", ["1.2.840.10008.1.2"])],
    ) as assoc:  # fmt: skip
        assert assoc.accepted("1.2.3.4.5", "1.2.840.10008.1.2") is None
        assert assoc.accepted(CT, ExplicitVRLittleEndian) is not None

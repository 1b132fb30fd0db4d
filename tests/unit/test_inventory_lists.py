"""The DIMSE inventory asks about a batch of studies by List of UID Matching (PS3.4
C.2.2.2.2) and falls back to study-by-study queries for a peer that matches no list
below the study level: both give the same content, the first in far fewer C-FINDs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomhub.migrate.sources import DimseSource
from dicomhub.model.migration import InventorySeries, RemoteArchive, RemoteKind

CT = "1.2.840.10008.5.1.4.1.1.2"
# study -> series -> SOP Instance UIDs: 40 studies of two or three series
HELD = {
    f"1.2.3.{s}": {
        f"1.2.3.{s}.{n}": [f"1.2.3.{s}.{n}.{i}" for i in range(n + 1)] for n in range(1, 3 + s % 2)
    }
    for s in range(40)
}


class _Peer:
    """A C-FIND SCP over ``HELD``; ``lists``: whether it applies List of UID Matching
    to the study UID of a SERIES or IMAGE query (a baseline peer compares the value whole)."""

    def __init__(self, lists: bool) -> None:
        self.lists = lists
        self.queries: list[str] = []
        ae = AE(ae_title="PEER")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server: ThreadedAssociationServer = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._find)]
        )
        self.port = int(self.server.server_address[1])

    def _studies(self, value: object, level: str) -> list[str]:
        if value in ("", None):
            return list(HELD)
        values = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]
        if level != "STUDY" and not self.lists and len(values) > 1:
            values = ["\\".join(values)]  # compared whole: no such study
        return [v for v in values if v in HELD]

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        q = event.identifier
        level = q.QueryRetrieveLevel
        self.queries.append(level)
        for study in self._studies(q.StudyInstanceUID, level):
            if level == "STUDY":
                ds = Dataset()
                ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", study
                ds.NumberOfStudyRelatedSeries = len(HELD[study])
                ds.NumberOfStudyRelatedInstances = sum(len(v) for v in HELD[study].values())
                yield 0xFF00, ds
                continue
            for series, sops in HELD[study].items():
                if level == "SERIES":
                    ds = Dataset()
                    ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = level, study, series
                    ds.Modality = "CT"
                    yield 0xFF00, ds
                    continue
                if q.get("SeriesInstanceUID") not in ("", None, series):
                    continue
                for sop in sops:
                    ds = Dataset()
                    ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = level, study, series
                    ds.SOPInstanceUID, ds.SOPClassUID = sop, CT
                    yield 0xFF00, ds
        yield 0x0000, None

    def source(self) -> DimseSource:
        remote = RemoteArchive("peer", RemoteKind.DIMSE, host="127.0.0.1", port=self.port, ae_title="PEER")
        return DimseSource(remote, "HUB", "HUB", timeout=10.0)


@pytest.fixture(params=[True, False], ids=["lists", "baseline"])
def peer(request: pytest.FixtureRequest) -> Iterator[_Peer]:
    peer = _Peer(lists=request.param)
    try:
        yield peer
    finally:
        peer.server.shutdown()


def _as_plain(found: dict[str, list[InventorySeries]]) -> dict[str, dict[str, list[str]]]:
    return {
        study: {s.series_instance_uid: sorted(s.instances) for s in content}
        for study, content in found.items()
    }


def test_batched_inventory_matches_the_study_by_study_one(peer: _Peer) -> None:
    source = peer.source()
    try:
        found = source.studies_content(list(HELD))
        batched = len(peer.queries)
        peer.queries.clear()
        one_by_one = {uid: source.study_content(uid) for uid in HELD}
        single = len(peer.queries)
    finally:
        source.close()
    assert (
        _as_plain(found)
        == _as_plain(one_by_one)
        == {
            study: {series: sorted(sops) for series, sops in content.items()}
            for study, content in HELD.items()
        }
    )
    assert all(i.sop_class_uid == CT for c in found.values() for s in c for i in s.instances.values())
    if peer.lists:
        # 40 studies: two batches of 32 and 8, three C-FINDs each
        assert batched == 6, peer.queries
    else:
        # The first batch shows that lists are not matched; then study by study.
        assert batched == 3 + single, (batched, single)

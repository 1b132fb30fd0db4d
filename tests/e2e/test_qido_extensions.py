"""dicomhub's QIDO-RS extensions and a study's findings, over HTTP against ``serve --auth``.

One server for the module, four studies stored over STOW-RS by an admin (stored
out of date order), two of them labelled ``teaching``; one study holds an object
lacking Type 1/2 attributes (a validation finding) and one whose JPEG 2000
codestream is garbage (a decode failure). Checked: ``orderby`` sorts across pages,
``count=true`` gives X-Total-Count, ``label`` narrows, all inside a reader's grants;
``/api/studies/{study}/findings`` lists what the checks found, for those who may
query the study only; the audit log answers per study for an admin only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import pytest
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e import codec_data as cd
from tests.e2e.helpers import DicomhubServer, ServerPool, add_user, stow, wait_until

pytestmark = pytest.mark.e2e

DATES = ["20200301", "20210101", "20190505", "20220202"]


@dataclass
class Hub:
    server: DicomhubServer
    admin: str = ""
    reader: str = ""
    studies: list[str] = field(default_factory=list)  # by index into DATES
    broken: Dataset | None = None
    corrupt: Dataset | None = None

    def user(self, name: str, role: str, scope: str) -> str:
        return add_user(self.server, name, role, scope)

    def get(self, path: str, token: str, **params: str) -> httpx.Response:
        return httpx.get(
            self.server.base_url + path,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Hub:
    h = Hub(module_servers.start(args=["--auth"]))
    h.admin = h.user("root", "admin", "archive")
    h.reader = h.user("student", "reader", "label:teaching")
    datasets = [
        datagen.make_dataset(patient_id=f"P{i}", patient_name=f"Name^{i}", study_date=date, accession=f"A{i}")
        for i, date in enumerate(DATES)
    ]
    h.studies = [str(ds.StudyInstanceUID) for ds in datasets]
    broken = datagen.make_dataset(patient_id="P0", study_uid=h.studies[0], study_date=DATES[0])
    del broken.PatientSex  # Type 2 of the Patient module: a validation finding
    h.broken = broken
    h.corrupt = cd.corrupt_j2k(study_uid=h.studies[1], patient_id="P1", patient_name="Name^1")
    h.corrupt.StudyDate = DATES[1]
    h.corrupt.AccessionNumber = "A1"
    stow(h.server.base_url, h.admin, [*datasets, broken, h.corrupt])
    for study in (h.studies[0], h.studies[1]):
        r = httpx.put(
            f"{h.server.base_url}/dicomweb/studies/{study}/labels/teaching",
            headers={"Authorization": f"Bearer {h.admin}"},
        )
        assert r.status_code == 201, r.text
    return h


def _sops(hub: Hub, index: int) -> list[str]:
    r = hub.get(f"/dicomweb/studies/{hub.studies[index]}/instances", hub.admin)
    assert r.status_code == 200, r.text
    return [item["00080018"]["Value"][0] for item in r.json()]


def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code in (200, 204), r.text
    return [item["00100020"]["Value"][0] for item in r.json()] if r.status_code == 200 else []


def test_orderby_sorts_across_pages_and_count_totals(hub: Hub) -> None:
    first = hub.get("/dicomweb/studies", hub.admin, orderby="-StudyDate", limit="2", count="true")
    second = hub.get(
        "/dicomweb/studies", hub.admin, orderby="-StudyDate", limit="2", offset="2", count="true"
    )
    assert _ids(first) + _ids(second) == ["P3", "P1", "P0", "P2"]
    assert first.headers["X-Total-Count"] == second.headers["X-Total-Count"] == "4"
    ascending = hub.get("/dicomweb/studies", hub.admin, orderby="StudyDate")
    assert _ids(ascending) == ["P2", "P0", "P1", "P3"]
    assert "X-Total-Count" not in ascending.headers  # only when asked for
    # Counted by the same query as the matches: a filter narrows both.
    narrowed = hub.get("/dicomweb/studies", hub.admin, StudyDate="20200101-", count="true", limit="1")
    assert narrowed.headers["X-Total-Count"] == "3" and len(_ids(narrowed)) == 1
    refused = hub.get("/dicomweb/studies", hub.admin, orderby="StudyDescription")
    assert refused.status_code == 400 and "cannot sort by" in refused.text


def test_label_filter_stays_inside_the_readers_grants(hub: Hub) -> None:
    labelled = hub.get("/dicomweb/studies", hub.admin, label="teaching", orderby="StudyDate", count="true")
    assert _ids(labelled) == ["P0", "P1"] and labelled.headers["X-Total-Count"] == "2"
    # The reader sees the teaching studies only, whatever it asks for, and counts no others.
    everything = hub.get("/dicomweb/studies", hub.reader, count="true")
    assert sorted(_ids(everything)) == ["P0", "P1"] and everything.headers["X-Total-Count"] == "2"
    hub_admin_only = hub.get("/dicomweb/studies", hub.admin, label="nothere", count="true")
    assert hub_admin_only.status_code == 204 and hub_admin_only.headers["X-Total-Count"] == "0"
    assert hub.get("/dicomweb/studies", hub.reader, label="bad label").status_code == 400


def test_study_findings_for_those_who_may_query_the_study(hub: Hub) -> None:
    assert hub.broken is not None and hub.corrupt is not None

    def findings(study: str) -> dict[str, list[dict[str, object]]]:
        r = hub.get(f"/api/studies/{study}/findings", hub.admin)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    # Validation and the decode check run in the background after the store.
    broken, corrupt = str(hub.broken.SOPInstanceUID), str(hub.corrupt.SOPInstanceUID)

    def patient_sex_finding() -> list[dict[str, object]] | None:
        found = findings(hub.studies[0])["validation"]
        return found if any(f["attribute"] == "PatientSex" for f in found) else None

    found = wait_until(patient_sex_finding, timeout=60, what="validation findings")
    assert {f["sop_instance_uid"] for f in found if f["attribute"] == "PatientSex"} == {broken}  # type: ignore[union-attr]
    # Only the study's own objects (the broken one and the first stored).
    assert {f["sop_instance_uid"] for f in found} <= {broken, *_sops(hub, 0)}  # type: ignore[union-attr]
    failed = wait_until(
        lambda: findings(hub.studies[1])["decode_failures"] or None, timeout=60, what="decode failure"
    )
    assert [f["sop_instance_uid"] for f in failed] == [corrupt]  # type: ignore[union-attr]
    # Another study's lists hold none of them.
    other = findings(hub.studies[2])
    assert other["decode_failures"] == []
    assert {f["sop_instance_uid"] for f in other["validation"]} <= set(_sops(hub, 2))
    # The reader may query the teaching studies only: another study is not there for it.
    assert hub.get(f"/api/studies/{hub.studies[0]}/findings", hub.reader).status_code == 200
    assert hub.get(f"/api/studies/{hub.studies[2]}/findings", hub.reader).status_code == 404
    assert hub.get("/api/studies/not-a-uid/findings", hub.admin).status_code == 400
    # Who accessed a study: the audit log, per study, for an admin; a reader gets 403.
    audit = hub.get("/audit", hub.admin, study=hub.studies[0])
    assert audit.status_code == 200 and audit.json(), audit.text
    assert hub.get("/audit", hub.reader, study=hub.studies[0]).status_code == 403


def test_hanging_layout_with_a_prior_found_through_the_callers_searches(hub: Hub) -> None:
    # An earlier CT of P3 (stored last: the tests above count four studies).
    prior = datagen.make_dataset(
        patient_id="P3", patient_name="Name^3", study_date="20200101", accession="A9"
    )
    stow(hub.server.base_url, hub.admin, [prior])
    r = hub.get(f"/api/studies/{hub.studies[3]}/hanging", hub.admin)
    assert r.status_code == 200, r.text
    layout = r.json()
    assert (layout["protocol"], layout["rows"], layout["columns"]) == ("ct", 1, 2)
    current, earlier = layout["viewports"]
    assert current["study"] == hub.studies[3] and not current["prior"]
    assert earlier["study"] == str(prior.StudyInstanceUID) and earlier["prior"]
    assert earlier["series"] == str(prior.SeriesInstanceUID)
    # A study the reader may not query has no layout for it.
    assert hub.get(f"/api/studies/{hub.studies[3]}/hanging", hub.reader).status_code == 404
    mine = hub.get(f"/api/studies/{hub.studies[0]}/hanging", hub.reader)
    assert mine.status_code == 200 and all(v is None or not v["prior"] for v in mine.json()["viewports"])

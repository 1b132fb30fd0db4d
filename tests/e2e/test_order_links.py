"""Studies linked to their orders, end to end: ``dicomhub serve --auth`` with orders
placed over REST, studies sent with DCMTK ``storescu``, read back over REST, the CLI
and FHIR (httpx as the client, answers parsed with the ``fhir.resources`` models).

- order first, then the study with its Accession Number: linked, and the order's
  state does not change;
- studies first, then their orders: one by Accession Number, one by the Requested
  Procedure ID of its Request Attributes Sequence;
- a study that matches nothing is in the reconciliation list (paged) until an
  operator links it by hand (a reader may list but not link; unknown study or
  order, bad bodies: clear errors);
- FHIR ImagingStudy: read by id, search by patient, patient.identifier and
  identifier; unknown ids 404 and bad parameters 400 with an OperationOutcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datagen
import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome

from .helpers import DicomhubServer, ServerPool, ls_json, run_cli, store_ok

pytestmark = pytest.mark.e2e

FHIR = "application/fhir+json"


@dataclass
class Hub:
    server: DicomhubServer
    tokens: dict[str, str]
    src: Path
    tag: str  # makes this run's accession numbers and ids unique

    def client(self, who: str = "ris", accept: str = "application/json") -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {self.tokens[who]}", "Accept": accept},
            timeout=30.0,
        )

    def cli(self, *args: str) -> tuple[int, str]:
        return run_cli(*args, "--data-dir", str(self.server.data_dir))

    def send(self, name: str, count: int = 1, **kwargs: Any) -> str:
        """Store a study of ``count`` instances with storescu; its Study Instance UID."""
        study_uid, series_uid = datagen.uid(), datagen.uid()
        folder = self.src / name
        folder.mkdir()
        for n in range(1, count + 1):
            datagen.write_instance(
                folder / f"{n}.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=n, **kwargs
            )
        store_ok(self.server, folder, expect=count)
        return study_uid

    def order(self, accession: str, patient_id: str, **extra: str) -> dict[str, Any]:
        with self.client() as c:
            body = {"accession_number": accession, "patient_id": patient_id, "modality": "CT", **extra}
            r = c.post("/api/orders", json=body)
            assert r.status_code == 201, r.text
            return r.json()  # type: ignore[no-any-return]

    def show(self, accession: str) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/api/orders/{accession}")
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    server = module_servers.start("links", args=["--auth"])
    tokens = {}
    for name, role in (("ris", "scheduler"), ("viewer", "reader"), ("modality", "uploader")):
        rc, out = run_cli(
            "user", "add", name, "--role", role, "--scope", "archive", "--data-dir", str(server.data_dir)
        )
        assert rc == 0, out
        tokens[name] = out.strip().splitlines()[-1]
    # With --auth, DIMSE peers are known AEs acting as a principal.
    rc, out = run_cli("ae", "add", "STORESCU", "--host", "127.0.0.1", "--principal", "modality",
                      "--data-dir", str(server.data_dir))  # fmt: skip
    assert rc == 0, out
    return Hub(server, tokens, tmp_path_factory.mktemp("links"), datagen.uid()[-5:])


def _studies(order: dict[str, Any]) -> dict[str, str]:
    return {s["study_instance_uid"]: s["matched_by"] for s in order["studies"]}


def test_order_first_then_study_links_by_accession_number(hub: Hub) -> None:
    acc = f"L1{hub.tag}"
    hub.order(acc, f"P1{hub.tag}", patient_name="Doe^Jane")
    uid = hub.send("order-first", count=3, accession=acc, patient_id=f"P1{hub.tag}")
    order = hub.show(acc)
    assert _studies(order) == {uid: "accession"}, order
    # Linking is not performing: MPPS and the order system move the state.
    assert order["status"] == "SCHEDULED"
    code, out = hub.cli("order", "show", acc)
    assert code == 0 and [s["study_instance_uid"] for s in json.loads(out)["studies"]] == [uid], out


def test_study_first_then_order_links_by_accession_number_or_procedure_id(hub: Hub) -> None:
    acc, other_acc, rp = f"L2{hub.tag}", f"L3{hub.tag}", f"RP3{hub.tag}"
    by_acc = hub.send(
        "study-first-acc", accession=acc, patient_id=f"P2{hub.tag}", requested_procedure_id=None
    )
    by_rp = hub.send("study-first-rp", accession=f"XX{hub.tag}", patient_id=f"P3{hub.tag}",
                     requested_procedure_id=rp)  # fmt: skip
    hub.order(acc, f"P2{hub.tag}")
    assert _studies(hub.show(acc)) == {by_acc: "accession"}
    hub.order(other_acc, f"P3{hub.tag}", procedure_id=rp)
    assert _studies(hub.show(other_acc)) == {by_rp: "procedure"}


def _unmatched_uids(hub: Hub, who: str = "ris") -> set[str]:
    found: set[str] = set()
    offset = 0
    with hub.client(who) as c:
        while True:
            r = c.get("/api/orders/unmatched", params={"offset": offset, "limit": 2})
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["studies"]) <= 2 and page["total"] >= len(found)
            found |= {s["study_instance_uid"] for s in page["studies"]}
            offset += 2
            if offset >= page["total"]:
                return found


def test_unmatched_study_is_listed_and_linked_by_hand(hub: Hub) -> None:
    acc = f"L4{hub.tag}"
    stray = hub.send("stray", accession=f"NONE{hub.tag}", patient_id=f"P4{hub.tag}",
                     requested_procedure_id=f"RPX{hub.tag}")  # fmt: skip
    hub.order(acc, f"P4{hub.tag}")
    assert stray in _unmatched_uids(hub)
    assert stray in _unmatched_uids(hub, "viewer")  # reading takes query at the archive scope
    code, out = hub.cli("order", "unmatched", "--json", "--limit", "1000")
    assert code == 0 and stray in {s["study_instance_uid"] for s in json.loads(out)["studies"]}, out

    with hub.client("viewer") as c:
        r = c.post(f"/api/orders/{acc}/studies", json={"study_instance_uid": stray})
        assert r.status_code == 403, r.text
    with hub.client() as c:
        r = c.post(f"/api/orders/{acc}/studies", json={"study_instance_uid": "1.2.3.999"})
        assert r.status_code == 404 and "no study" in r.text, r.text
        r = c.post(f"/api/orders/NOSUCH{hub.tag}/studies", json={"study_instance_uid": stray})
        assert r.status_code == 404, r.text
        r = c.post(f"/api/orders/{acc}/studies", json={"study": stray})
        assert r.status_code == 400 and "study_instance_uid" in r.text, r.text
        r = c.get("/api/orders/unmatched", params={"limit": "many"})
        assert r.status_code == 400 and "limit" in r.text, r.text
        r = c.post(f"/api/orders/{acc}/studies", json={"study_instance_uid": stray})
        assert r.status_code == 200, r.text
        assert _studies(r.json()) == {stray: "manual"}
    assert stray not in _unmatched_uids(hub)
    # The CLI: a clear message and a non-zero exit for an unknown study.
    code, out = hub.cli("order", "link", "1.2.3.998", acc)
    assert code != 0 and "no study 1.2.3.998" in out, out


def _fhir(hub: Hub, path: str, who: str = "ris", **params: str) -> httpx.Response:
    with hub.client(who, accept=FHIR) as c:
        r = c.get(f"/fhir/{path}", params=params)
    assert r.headers["content-type"].startswith(FHIR), r.text
    return r


def _outcome(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    outcome = OperationOutcome.model_validate(r.json())
    assert words in (outcome.issue[0].diagnostics or ""), r.text


def _entries(r: httpx.Response) -> list[ImagingStudy]:
    assert r.status_code == 200, r.text
    bundle = Bundle.model_validate(r.json())
    assert bundle.type == "searchset"
    studies = [e.resource for e in bundle.entry or []]
    assert all(isinstance(s, ImagingStudy) for s in studies)
    return studies  # type: ignore[return-value]


def test_fhir_imaging_study_read_and_search(hub: Hub) -> None:
    pid, acc = f"P5{hub.tag}", f"L5{hub.tag}"
    with hub.client() as c:
        r = c.post("/api/patients", json={"patient_id": pid, "patient_name": "Roe^Ann"})
        assert r.status_code == 201, r.text
        patient_resource = r.json()["id"]
    order_id = hub.order(acc, pid)["id"]
    uid = hub.send("fhir", count=2, accession=acc, patient_id=pid, patient_name="Roe^Ann",
                   study_description="Chest CT", study_date="20240102", study_time="093000")  # fmt: skip
    unlinked = hub.send("fhir-unlinked", accession=f"UN{hub.tag}", patient_id=f"P6{hub.tag}",
                        patient_name="Poe^Ed", requested_procedure_id=None)  # fmt: skip

    raw = _fhir(hub, f"ImagingStudy/{uid}").json()
    study = ImagingStudy.model_validate(raw)
    assert study.id == uid and study.status == "available"
    assert study.numberOfSeries == 1 and study.numberOfInstances == 2
    # Study Date and Time in the server's zone (the test's: same machine), with its offset.
    assert raw["started"].startswith("2024-01-02T09:30:00") and study.description == "Chest CT"
    assert study.subject.reference == f"Patient/{patient_resource}"
    assert [b.reference for b in study.basedOn or []] == [f"ServiceRequest/{order_id}"]
    assert {(i.system, i.value) for i in study.identifier or []} >= {("urn:dicom:uid", f"urn:oid:{uid}")}
    series = (study.series or [])[0]
    assert series.modality.code == "CT" and series.numberOfInstances == 2
    assert [i.number for i in series.instance or []] == [1, 2]
    assert all(i.sopClass.code == "urn:oid:1.2.840.10008.5.1.4.1.1.2" for i in series.instance or [])
    endpoint = (study.contained or [])[0]
    assert study.endpoint[0].reference == f"#{endpoint.id}"
    assert endpoint.connectionType.code == "dicom-wado-rs"
    assert endpoint.address == f"{hub.server.base_url}/dicomweb"
    # The DICOMweb address serves the study.
    with hub.client() as c:
        r = c.get(f"{endpoint.address}/studies/{uid}/series", headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200 and len(r.json()) == 1, r.text

    # A study of no patient of record names its patient by identifier.
    other = ImagingStudy.model_validate(_fhir(hub, f"ImagingStudy/{unlinked}").json())
    assert other.subject.reference is None and other.subject.identifier.value == f"P6{hub.tag}"
    assert not other.basedOn

    def ids(**params: str) -> list[str]:
        return [str(s.id) for s in _entries(_fhir(hub, "ImagingStudy", **params))]

    assert ids(patient=f"Patient/{patient_resource}") == [uid]
    assert ids(**{"patient.identifier": f"P6{hub.tag}"}) == [unlinked]
    assert ids(identifier=f"urn:dicom:uid|urn:oid:{uid}") == [uid]
    assert ids(identifier=acc) == [uid]
    assert ids(basedon=f"ServiceRequest/{order_id}") == [uid]
    assert _entries(_fhir(hub, "ImagingStudy", identifier="NO-SUCH-ACC")) == []


def test_fhir_imaging_study_paging(hub: Hub) -> None:
    # Every study in the archive (at least the two of the test above), one per page,
    # following the next links.
    seen: list[str] = []
    r = _fhir(hub, "ImagingStudy", _count="1")
    while True:
        page = _entries(r)
        assert len(page) <= 1
        seen += [str(s.id) for s in page]
        links = {link.relation: link.url for link in Bundle.model_validate(r.json()).link or []}
        if "next" not in links:
            break
        with hub.client(accept=FHIR) as c:
            r = c.get(str(links["next"]))
    stored = {str(s["StudyInstanceUID"]) for s in ls_json(hub.server.data_dir)}
    assert len(seen) == len(set(seen)) and set(seen) == stored and len(seen) >= 2


def test_fhir_imaging_study_errors(hub: Hub) -> None:
    _outcome(_fhir(hub, "ImagingStudy/1.2.3.4.404"), 404, "1.2.3.4.404")
    _outcome(_fhir(hub, "ImagingStudy/not_an_id!"), 400, "not a FHIR id")
    _outcome(_fhir(hub, "ImagingStudy", colour="red"), 400, "unknown search parameter")
    _outcome(_fhir(hub, "ImagingStudy", _count="0"), 400, "_count")
    _outcome(_fhir(hub, "ImagingStudy", identifier="urn:other|x"), 400, "identifier system")
    _outcome(_fhir(hub, "ImagingStudy", **{"patient.identifier": "P*"}), 400, "not a value to match exactly")
    _outcome(_fhir(hub, "ImagingStudy", patient="Patient/nosuchpatient"), 404, "nosuchpatient")

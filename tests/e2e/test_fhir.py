"""FHIR R4 and the order REST API end to end: ``dicomhub serve --auth`` driven by httpx
as the FHIR client.

Patient and ServiceRequest are created, updated and read back; the order a
ServiceRequest places is the one ``dicomhub order show`` shows, and the life
cycle moves through FHIR updates (revoked = cancelled before any step started,
then refused: 409). Invalid resources (wrong resourceType, bad field types, a
missing subject) get 400 with an OperationOutcome carrying the models' message,
unknown ids 404, a reader without ``schedule`` 403; nothing of a refused request
is stored. ``/api/orders`` and ``/api/patients`` list, show, add, cancel and
discontinue under the same rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .helpers import DicomhubServer, ServerPool, run_cli

pytestmark = pytest.mark.e2e

FHIR = "application/fhir+json"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@dataclass
class Hub:
    server: DicomhubServer
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {self.tokens[who]}", "Accept": FHIR},
            timeout=30.0,
        )

    def cli(self, *args: str) -> tuple[int, str]:
        return run_cli(*args, "--data-dir", str(self.server.data_dir))


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Hub:
    server = module_servers.start("fhir", args=["--auth"])
    tokens = {}
    for name, role in (("root", "admin"), ("ris", "scheduler"), ("viewer", "reader")):
        rc, out = run_cli(
            "user", "add", name, "--role", role, "--scope", "archive", "--data-dir", str(server.data_dir)
        )
        assert rc == 0, out
        tokens[name] = out.strip().splitlines()[-1]
    return Hub(server, tokens)


def _patient(pid: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "HOSP", "value": pid}],
        "name": [{"family": family, "given": ["Jane", "Q"]}],
        "birthDate": "1970-01-02",
        "gender": "female",
        **extra,
    }


def _request(accession: str, patient_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": accession},
            {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": f"PL{accession}"},
        ],
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
        "occurrenceDateTime": "2026-03-01T10:15:00+00:00",
        "performerType": {"coding": [{"system": DCM, "code": "CT"}]},
        "priority": "stat",
        **extra,
    }


def _outcome(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert words in body["issue"][0]["diagnostics"], body


def _order(hub: Hub, accession: str) -> dict[str, Any]:
    code, out = hub.cli("order", "show", accession)
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_patient_and_service_request_create_update_read(hub: Hub) -> None:
    with hub.client("ris") as c:
        r = c.post("/fhir/Patient", json=_patient("F1"), headers={"Content-Type": FHIR})
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith(FHIR)
        patient = r.json()
        pid = patient["id"]
        assert r.headers["location"] == f"/fhir/Patient/{pid}"
        assert patient["name"][0]["family"] == "Doe" and patient["birthDate"] == "1970-01-02"
        # Update: the demographics change, the id stays.
        r = c.put(f"/fhir/Patient/{pid}", json={**_patient("F1", "Doe-Smith"), "id": pid},
                  headers={"Content-Type": FHIR})  # fmt: skip
        assert r.status_code == 200, r.text
        r = c.get(f"/fhir/Patient/{pid}")
        assert r.status_code == 200 and r.json()["name"][0]["family"] == "Doe-Smith", r.text
        code, out = hub.cli("patient", "show", "F1", "--issuer", "HOSP")
        assert code == 0 and json.loads(out)["patient_name"] == "Doe-Smith^Jane^Q", out

        r = c.post("/fhir/ServiceRequest", json=_request("FA1", pid), headers={"Content-Type": FHIR})
        assert r.status_code == 201, r.text
        order = r.json()
        rid = order["id"]
        assert order["status"] == "active" and order["subject"] == {"reference": f"Patient/{pid}"}
        shown = _order(hub, "FA1")
        assert shown["id"] == rid and shown["status"] == "SCHEDULED" and shown["source"] == "fhir"
        assert (shown["patient_id"], shown["issuer_of_patient_id"]) == ("F1", "HOSP")
        assert shown["patient_name"] == "Doe-Smith^Jane^Q" and shown["placer_order_number"] == "PLFA1"
        procedure = shown["procedures"][0]
        assert procedure["code"] == {"value": "24627-2", "scheme": "LN", "meaning": "CT Chest"}
        assert procedure["priority"] == "STAT"
        step = procedure["steps"][0]
        assert step["modality"] == "CT" and step["status"] == "SCHEDULED"

        # Update: another modality; read back through FHIR and the CLI.
        changed = _request("FA1", pid, id=rid, performerType={"coding": [{"system": DCM, "code": "MR"}]})
        r = c.put(f"/fhir/ServiceRequest/{rid}", json=changed, headers={"Content-Type": FHIR})
        assert r.status_code == 200, r.text
        r = c.get(f"/fhir/ServiceRequest/{rid}")
        assert r.status_code == 200, r.text
        assert r.json()["performerType"]["coding"][0]["code"] == "MR"
        assert r.json()["identifier"][0]["value"] == "FA1"
        assert _order(hub, "FA1")["procedures"][0]["steps"][0]["modality"] == "MR"

        # revoked before any step started: cancelled; after that the order is over (409).
        r = c.put(
            f"/fhir/ServiceRequest/{rid}",
            json={**changed, "status": "revoked"},
            headers={"Content-Type": FHIR},
        )
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
        assert _order(hub, "FA1")["status"] == "CANCELLED"
        r = c.put(f"/fhir/ServiceRequest/{rid}", json=changed, headers={"Content-Type": FHIR})
        _outcome(r, 409, "CANCELLED")
        # completed needs a step in progress
        r = c.post("/fhir/ServiceRequest", json=_request("FA2", pid), headers={"Content-Type": FHIR})
        assert r.status_code == 201, r.text
        second = r.json()["id"]
        r = c.put(f"/fhir/ServiceRequest/{second}", json=_request("FA2", pid, id=second, status="completed"),
                  headers={"Content-Type": FHIR})  # fmt: skip
        _outcome(r, 409, "no step that can become COMPLETED")
        assert _order(hub, "FA2")["status"] == "SCHEDULED"

        # Update-as-create at a client-chosen id.
        r = c.put("/fhir/ServiceRequest/ris-77", json=_request("FA3", pid, id="ris-77"),
                  headers={"Content-Type": FHIR})  # fmt: skip
        assert r.status_code == 201, r.text
        assert _order(hub, "FA3")["id"] == "ris-77"


def test_invalid_resources_get_400_with_an_operation_outcome(hub: Hub) -> None:
    with hub.client("ris") as c:
        r = c.post("/fhir/Patient", json=_patient("F2"), headers={"Content-Type": FHIR})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        headers = {"Content-Type": FHIR}
        observation = {**_patient("F3"), "resourceType": "Observation"}
        _outcome(c.post("/fhir/Patient", json=observation, headers=headers), 400, "must be 'Patient'")
        _outcome(c.post("/fhir/Patient", json=_patient("F3", birthDate="yesterday"), headers=headers),
                 400, "birthDate")  # fmt: skip
        _outcome(
            c.post("/fhir/Patient", json=_patient("F3", gender=["female"]), headers=headers), 400, "gender"
        )
        _outcome(
            c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=headers), 400, "identifier"
        )
        _outcome(c.post("/fhir/Patient", content=b"{not json", headers=headers), 400, "not JSON")
        _outcome(c.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"}),
                 415, "application/fhir+json")  # fmt: skip
        request = _request("FB1", pid)
        del request["subject"]
        _outcome(c.post("/fhir/ServiceRequest", json=request, headers=headers), 400, "subject")
        _outcome(c.post("/fhir/ServiceRequest", json=_request("FB1", pid, subject=None), headers=headers),
                 400, "subject")  # fmt: skip
        _outcome(c.post("/fhir/ServiceRequest", json=_request("FB1", "nobody"), headers=headers), 400,
                 "not a known Patient")  # fmt: skip
        when = _request("FB1", pid, occurrenceDateTime="2026-13-45T99:00:00")
        _outcome(c.post("/fhir/ServiceRequest", json=when, headers=headers), 400, "occurrenceDateTime")
        _outcome(c.post("/fhir/ServiceRequest", json=_request("FB1", pid, identifier=[]), headers=headers),
                 400, "ACSN")  # fmt: skip
        proposal = _request("FB1", pid, intent="proposal")
        _outcome(c.post("/fhir/ServiceRequest", json=proposal, headers=headers), 422, "not an order")
        _outcome(c.post("/fhir/ServiceRequest", json=_request("X" * 17, pid), headers=headers),
                 400, "Accession Number")  # fmt: skip
        # PUT with another id in the body than in the URL
        _outcome(
            c.put(f"/fhir/Patient/{pid}", json={**_patient("F2"), "id": "other"}, headers=headers), 400, "id"
        )
        # Nothing of it was stored.
        code, out = hub.cli("order", "list", "--json")
        assert code == 0 and not any(
            o["accession_number"].startswith(("FB1", "XXX")) for o in json.loads(out)
        )
        # unknown ids
        _outcome(c.get("/fhir/Patient/no-such-patient"), 404, "no-such-patient")
        _outcome(c.get("/fhir/ServiceRequest/no-such-order"), 404, "no-such-order")
        _outcome(c.get("/fhir/ServiceRequest/bad$id"), 400, "not a FHIR id")
        # the server answers on
        assert c.get("/fhir/metadata").json()["resourceType"] == "CapabilityStatement"


def test_a_reader_without_schedule_gets_403(hub: Hub) -> None:
    with hub.client("ris") as c:
        r = c.post("/fhir/Patient", json=_patient("F4"), headers={"Content-Type": FHIR})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
    with hub.client("viewer") as c:
        # reader has query at the archive scope: may read, may not write
        assert c.get(f"/fhir/Patient/{pid}").status_code == 200
        _outcome(
            c.post("/fhir/Patient", json=_patient("F5"), headers={"Content-Type": FHIR}), 403, "schedule"
        )
        _outcome(c.post("/fhir/ServiceRequest", json=_request("FC1", pid), headers={"Content-Type": FHIR}),
                 403, "schedule")  # fmt: skip
        r = c.post("/api/orders", json={"accession_number": "FC2", "patient_id": "F5", "modality": "CT"})
        assert r.status_code == 403, r.text
    code, out = hub.cli("patient", "show", "F5", "--issuer", "HOSP")
    assert code != 0, out
    # no token at all: 401
    assert httpx.get(f"{hub.server.base_url}/fhir/Patient/{pid}", timeout=30).status_code == 401


def test_rest_orders_and_patients(hub: Hub) -> None:
    with hub.client("ris") as c:
        body = {"accession_number": "R1", "patient_id": "RP1", "issuer_of_patient_id": "HOSP",
                "patient_name": "Roe^Richard", "modality": "MR", "station_ae_title": "MRAE",
                "start": "2026-03-02T08:00",
                "code": {"value": "MRKNEE", "scheme": "LOCAL", "meaning": "MR Knee"}}  # fmt: skip
        r = c.post("/api/orders", json=body)
        assert r.status_code == 201, r.text
        order = r.json()
        assert order["status"] == "SCHEDULED" and order["source"] == "rest"
        assert _order(hub, "R1")["id"] == order["id"]
        r = c.post("/api/orders", json=body)
        assert r.status_code == 409 and "exists already" in r.json()["error"], r.text
        r = c.post("/api/orders", json={**body, "accession_number": "R2", "start": "tomorrow"})
        assert r.status_code == 400 and "ISO 8601" in r.json()["error"], r.text
        r = c.post("/api/orders", json={**body, "accession_number": "R2", "colour": "red"})
        assert r.status_code == 400 and "colour" in r.json()["error"], r.text
        r = c.get("/api/orders/R1")  # by Accession Number
        assert r.status_code == 200 and r.json()["id"] == order["id"], r.text
        r = c.get(f"/api/orders/{order['id']}")
        assert r.json()["procedures"][0]["steps"][0]["station_ae_title"] == "MRAE"
        r = c.get("/api/orders", params={"patient_id": "RP1", "issuer": "HOSP"})
        assert [o["accession_number"] for o in r.json()] == ["R1"], r.text
        r = c.post("/api/orders/R1/discontinue")
        assert r.status_code == 200 and r.json()["status"] == "DISCONTINUED", r.text
        r = c.post("/api/orders/R1/cancel")
        assert r.status_code == 409, r.text
        assert _order(hub, "R1")["status"] == "DISCONTINUED"
        assert c.post("/api/orders", json={**body, "accession_number": "R3"}).status_code == 201
        r = c.post("/api/orders/R3/cancel")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
        r = c.get("/api/orders", params=[("status", "cancelled"), ("patient_id", "RP1"), ("issuer", "HOSP")])
        assert [o["accession_number"] for o in r.json()] == ["R3"], r.text
        r = c.get("/api/orders", params={"status": "sleeping"})
        assert r.status_code == 400, r.text
        assert c.get("/api/orders/NOPE").status_code == 404

        r = c.post(
            "/api/patients", json={"patient_id": "RP2", "patient_name": "Poe^Edgar", "patient_sex": "M"}
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        r = c.post("/api/patients", json={"patient_id": "RP2", "patient_name": "Poe^Edgar^Allan"})
        assert r.status_code == 200 and r.json()["id"] == rid, r.text
        r = c.get(f"/api/patients/{rid}")
        assert r.json()["patient_name"] == "Poe^Edgar^Allan", r.text
        assert "RP2" in [p["patient_id"] for p in c.get("/api/patients").json()]
        r = c.post("/api/patients", json={"patient_id": "RP3", "patient_sex": "X"})
        assert r.status_code == 400 and "Patient's Sex" in r.json()["error"], r.text
        # The same patient through FHIR
        r = c.get(f"/fhir/Patient/{rid}")
        assert r.status_code == 200 and r.json()["name"][0]["given"] == ["Edgar", "Allan"], r.text
    with hub.client("viewer") as c:
        assert c.get("/api/orders").status_code == 200
        assert c.post("/api/orders/R3/discontinue").status_code == 403
        assert c.post("/api/patients", json={"patient_id": "RP4"}).status_code == 403

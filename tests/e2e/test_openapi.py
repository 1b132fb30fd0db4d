"""``GET /openapi.json``: a valid OpenAPI 3.1 document that matches the routes and the live server.

- the document is served and passes openapi-spec-validator;
- its operations are exactly the app's routes (built in-process on a temporary
  archive), less the multipart-only ones listed in ``MULTIPART_ONLY``;
- every documented GET, filled in with the UIDs of an instance stored with
  storescu, answers one of its documented statuses in a documented media type,
  and JSON bodies validate against the documented schema; so do a few error
  cases (404, 304, 206, 416, 406), the delete routes and STOW-RS.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datagen
import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from pydicom.dataset import Dataset
from starlette.routing import BaseRoute, Mount, Route

from dicomhub.bootstrap import open_archive
from dicomhub.config import Settings
from dicomhub.web.app import create_app
from dicomhub.web.openapi import openapi_document

from .helpers import DicomhubServer, ServerPool, run_cli, store_ok
from .test_mpps import Modality, attribute_list
from .test_print import FILM_BOX, FILM_SESSION, PrintScu, film_box, session_attributes

pytestmark = pytest.mark.e2e

_STUDY = "/dicomweb/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

#: Routes of the app that the document leaves out on purpose, and why.
MULTIPART_ONLY: dict[tuple[str, str], str] = {
    ("GET", _STUDY): 'WADO-RS retrieve study: multipart/related; type="application/dicom" only',
    ("GET", _SERIES): 'WADO-RS retrieve series: multipart/related; type="application/dicom" only',
    ("GET", _INSTANCE): 'WADO-RS retrieve instance: multipart/related; type="application/dicom" only',
    ("GET", _INSTANCE + "/frames/{frames}"): (
        "WADO-RS retrieve frames: multipart/related of frames (PS3.18 10.4.1.1.3); a bare single "
        "part exists only for one frame with an exact Accept, a convenience not worth documenting"
    ),
}

_OCTET = "application/octet-stream"
# Documented GETs that answer their documented 404 on a server without the setting they need.
NOT_CONFIGURED = frozenset({"/ui/login/oidc", "/ui/login/callback"})
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# ---------------------------------------------------------------- helpers


def _app_operations(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path template) of every route, HEAD (implied by GET) left out."""
    out: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            out |= _app_operations(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    out.add((method, prefix + route.path))
        else:  # pragma: no cover - no other route kinds are used
            raise AssertionError(f"unexpected route {route!r}")
    return out


def _doc_operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, item in doc["paths"].items() for method in item if method in _METHODS
    }


def _resolve(doc: Mapping[str, Any], obj: Any) -> Any:
    while isinstance(obj, dict) and "$ref" in obj:
        node: Any = doc
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def _parameters(doc: Mapping[str, Any], operation: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [_resolve(doc, p) for p in operation.get("parameters", [])]


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _check_response(
    doc: Mapping[str, Any], operation: Mapping[str, Any], r: httpx.Response, where: str
) -> dict[str, Any]:
    """Assert ``r`` is a documented status in a documented media type; return that response object."""
    responses = operation["responses"]
    assert str(r.status_code) in responses, (
        f"{where}: status {r.status_code} is not documented ({sorted(responses)}): {r.text[:300]}"
    )
    documented: dict[str, Any] = _resolve(doc, responses[str(r.status_code)])
    content = documented.get("content")
    if not content:
        assert not r.content, f"{where}: {r.status_code} documents no body but got {r.content[:100]!r}"
        return documented
    media = _media(r.headers.get("content-type"))
    assert media in content, f"{where}: {r.status_code} answered {media!r}, documented {sorted(content)}"
    schema = content[media].get("schema")
    if schema is not None and media.endswith("json"):
        # Resolve "#/components/..." against the whole document.
        validator = Draft202012Validator({**schema, "components": doc["components"]})
        errors = sorted(validator.iter_errors(r.json()), key=str)
        assert not errors, f"{where}: body does not match the documented schema: {errors[0]}"
    return documented


@dataclass
class Stored:
    ds: Dataset
    victim: Dataset  # deleted by test_delete_routes
    job_id: str  # a migration job
    order: str = ""  # an order's id (REST and FHIR ServiceRequest)
    patient: str = ""  # a patient of record's id (REST and FHIR Patient)
    mpps: str = ""  # a performed procedure step's SOP Instance UID
    print_job: str = ""  # a print job's id


def _values(
    ds: Dataset, job_id: str = "1", order: str = "", patient: str = "", mpps: str = "", print_job: str = ""
) -> dict[str, str]:
    """Values for the path and required query parameters of the document."""
    return {
        "job_id": job_id,
        "job": print_job,
        "film": "1.png",
        "mpps": mpps,
        "order": order,
        "patient": patient,
        "name": "nobody",
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        "frames": "1",
        "tag": "7FE00010",
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
    }


def _request_for(
    doc: Mapping[str, Any], path: str, operation: Mapping[str, Any], values: Mapping[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """URL path, required query parameters and headers of a documented GET."""
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    url = path
    for p in _parameters(doc, operation):
        if p["in"] == "path":
            url = url.replace("{" + p["name"] + "}", values[p["name"]])
        elif p["in"] == "query" and p.get("required"):
            params[p["name"]] = values[p["name"]]
        elif p["in"] == "header" and p.get("required"):
            headers[p["name"]] = p["schema"]["const"]
    if "Accept" not in headers:
        ok = _resolve(doc, operation["responses"].get("200", {}))
        headers["Accept"] = ", ".join(ok.get("content", {})) or "*/*"
    assert "{" not in url, f"{path}: unfilled path parameter"
    return url, params, headers


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document()


@pytest.fixture(scope="module")
def server(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> DicomhubServer:
    """The default server with a webhook named as every {name} parameter is (its receiver
    is not there: the deliveries fail, which the delivery log route shows as well)."""
    config = tmp_path_factory.mktemp("openapi-config") / "dicomhub.toml"
    config.write_text(
        '[[webhook]]\nname = "nobody"\nurl = "http://127.0.0.1:9/"\nsecret = "env:OPENAPI_HOOK"\n'
    )
    return module_servers.start(args=["--config", str(config)], env={"OPENAPI_HOOK": "k"})


@pytest.fixture(scope="module")
def stored(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    root = tmp_path_factory.mktemp("openapi")
    study = datagen.uid()
    ds = datagen.write_instance(
        root / "a.dcm", study_uid=study, rows=32, cols=32, extra={"WindowCenter": "40", "WindowWidth": "400"}
    )
    victim = datagen.write_instance(root / "b.dcm")
    store_ok(server, root, expect=2)
    # A migration job (from an empty folder) for the /migrations/{job_id} routes.
    (root / "empty").mkdir()
    rc, out = run_cli(
        "remote", "add", "empty", "--folder", str(root / "empty"), "--data-dir", str(server.data_dir)
    )
    assert rc == 0, out
    r = httpx.post(f"{server.base_url}/migrations", json={"remote": "empty"}, timeout=30)
    assert r.status_code == 201, r.text
    job = str(r.json()["id"])
    # A peer for /admin/peers/{name} (the name every {name} parameter is given).
    r = httpx.put(
        f"{server.base_url}/admin/peers/nobody", json={"ae_title": "NOBODY", "host": "127.0.0.1"}, timeout=30
    )
    assert r.status_code == 201, r.text
    # An order (and so its patient of record) for the /api and /fhir routes.
    r = httpx.post(
        f"{server.base_url}/api/orders",
        json={"accession_number": "OPENAPI1", "patient_id": "OPENAPI-P", "modality": "CT"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    order = r.json()["id"]
    r = httpx.get(f"{server.base_url}/api/patients", timeout=30)
    patient = next(p["id"] for p in r.json() if p["patient_id"] == "OPENAPI-P")
    # A performed procedure step (MPPS N-CREATE) for /api/mpps/{mpps}.
    modality = Modality(server)
    try:
        status, command = modality.create(attribute_list("OPENAPI1"), None)
    finally:
        modality.close()
    assert status == 0x0000
    # A print job (one empty film) for the /print routes.
    printer = PrintScu(server)
    try:
        assert printer.create(session_attributes(), FILM_SESSION, datagen.uid())[0] == 0x0000
        _status, _reply, box = printer.create(film_box("STANDARD\\1,1"), FILM_BOX)
        printed, reply = printer.action(FILM_BOX, box)
    finally:
        printer.release()
    assert printed == 0xB603 and reply is not None  # an empty film prints with a warning
    print_job = str(reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)
    return Stored(ds, victim, job, order, patient, str(command.AffectedSOPInstanceUID), print_job)


@pytest.fixture
def client(server: DicomhubServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        yield c


# ---------------------------------------------------------------- the document


def test_served_and_valid(client: httpx.Client, doc: dict[str, Any]) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert _media(r.headers.get("content-type")) == "application/json"
    served = r.json()
    assert served["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(served).validate()
    assert served == doc


def test_paths_match_the_routes(tmp_path: Path, doc: dict[str, Any]) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    archive = open_archive(settings)
    try:
        app = create_app(archive, settings)
        routes = _app_operations(list(app.routes))
    finally:
        archive.close()
    documented = _doc_operations(doc)
    assert documented - routes == set(), "documented but not served"
    assert set(MULTIPART_ONLY) <= routes, "MULTIPART_ONLY names routes that do not exist"
    assert set(MULTIPART_ONLY).isdisjoint(documented), "a MULTIPART_ONLY route is documented"
    assert routes - documented == set(MULTIPART_ONLY), "served but neither documented nor excluded"


def test_path_parameters_match_templates(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        # A template may be part of a segment (OpenAPI 3.1 4.8.2: /print/jobs/{job}.pdf).
        names = set(re.findall(r"\{([^}/]+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in _parameters(doc, operation) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters {declared} != {names}"


# ---------------------------------------------------------------- the live server


def test_every_documented_get_answers_as_documented(
    client: httpx.Client, doc: dict[str, Any], stored: Stored
) -> None:
    values = _values(stored.ds, stored.job_id, stored.order, stored.patient, stored.mpps, stored.print_job)
    checked = 0
    secured = 0
    for path, item in doc["paths"].items():
        operation = item.get("get")
        if operation is None:
            continue
        if "security" in operation:
            # Needs a principal's token: without one, the documented 401.
            url = path.replace("{id}", "1")
            r = client.get(url)
            _check_response(doc, operation, r, f"GET {path}")
            assert r.status_code == 401, f"GET {path} without a token: {r.status_code}"
            secured += 1
            continue
        url, params, headers = _request_for(doc, path, operation, values)
        if headers["Accept"] == "text/event-stream":
            # An event stream stays open: its status and media type are what can be checked.
            with client.stream("GET", url, params=params, headers=headers) as r:
                assert _media(r.headers.get("content-type")) == "text/event-stream", f"GET {path}"
                assert str(r.status_code) in operation["responses"], f"GET {path}: {r.status_code}"
        else:
            r = client.get(url, params=params, headers=headers)
            _check_response(doc, operation, r, f"GET {path}")
        # The log-in through an OpenID Connect provider is not configured on this server.
        expected = 404 if path in NOT_CONFIGURED else 200
        assert r.status_code == expected, f"GET {path}: {r.status_code} {r.text[:300]}"
        checked += 1
    # 22 DICOMweb and server routes (/conformance, /metrics), 8 admin routes (6 + the two peer routes),
    # 2 migration routes,
    # 2 label routes, 4 access-control routes (users, tokens, grants, audit), the audit export,
    # 4 order and patient routes, the unmatched studies, 3 FHIR routes (metadata, Patient,
    # ServiceRequest), the 2 of ImagingStudy (search, read), 2 MPPS routes, 4 print routes
    # (with a job's PDF), the 2 of the change feed (a page, the event stream), the 2 of webhooks,
    # the 3 of routing (rules, queue, a study's routing), the web UI's 4 (3 pages and the
    # data dictionary), the trash and the corrections, the caller (/api/me) and the 5 admin
    # pages, a study's ZIP, its sends and rights, the caller's rights, a study's findings,
    # the study viewer and its hanging protocol, the 3 of the UI's log-in (its options, and
    # the OIDC start and callback answering 404 here), the patient-level QIDO-RS search and
    # the patients page
    assert checked == 86
    assert secured == 2  # de-identification runs: the list and one run


@pytest.mark.parametrize(
    ("path", "params", "headers", "status"),
    [
        (_STUDY + "/metadata", {}, {}, 404),
        (_INSTANCE + "/metadata", {}, {"Accept": "image/png"}, 406),
        (_SERIES + "/rendered", {}, {"Accept": "text/html"}, 406),
        (_INSTANCE + "/rendered", {"quality": "0"}, {}, 400),
        (_INSTANCE + "/frames/{frames}/thumbnail", {}, {}, 404),
        (_INSTANCE + "/bulk/{tag}", {}, {"Accept": _OCTET, "Range": "bytes=0-9"}, 206),
        (_INSTANCE + "/bulk/{tag}", {}, {"Accept": _OCTET, "Range": "bytes=999999-"}, 416),
        (_INSTANCE + "/bulk/{tag}", {}, {"Accept": "text/plain"}, 406),
        ("/dicomweb/studies", {"limit": "x"}, {}, 400),
        ("/dicomweb/studies", {"PatientID": "no-such-patient"}, {}, 204),
        ("/dicomweb/studies", {}, {"Accept": "image/png"}, 406),
        ("/dicomweb/wado", {"requestType": "WADO", "contentType": "text/html"}, {}, 406),
    ],
)
def test_documented_error_statuses(
    client: httpx.Client,
    doc: dict[str, Any],
    stored: Stored,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    values = _values(stored.ds)
    if status == 404:  # a resource that is not held
        values = {**values, "study": datagen.uid(), "frames": "99"}
    url = path
    for name in ("study", "series", "instance", "frames", "tag"):
        url = url.replace("{" + name + "}", values[name])
    if path == "/dicomweb/wado":
        params = {**params, **{k: values[k] for k in ("studyUID", "seriesUID", "objectUID")}}
    r = client.get(url, params=params, headers=headers)
    assert r.status_code == status, r.text[:300]
    _check_response(doc, doc["paths"][path]["get"], r, f"GET {path} {params} {headers}")


def test_metadata_etag_gives_304(client: httpx.Client, doc: dict[str, Any], stored: Stored) -> None:
    path = _SERIES + "/metadata"
    url = path.replace("{study}", stored.ds.StudyInstanceUID).replace("{series}", stored.ds.SeriesInstanceUID)
    first = client.get(url, headers={"Accept": "application/dicom+json"})
    documented = _check_response(doc, doc["paths"][path]["get"], first, "metadata")
    assert "ETag" in documented["headers"] and first.headers.get("etag")
    etag = first.headers["etag"]
    again = client.get(url, headers={"Accept": "application/dicom+json", "If-None-Match": etag})
    assert again.status_code == 304
    _check_response(doc, doc["paths"][path]["get"], again, "metadata If-None-Match")


def test_delete_routes(client: httpx.Client, doc: dict[str, Any], stored: Stored) -> None:
    v = stored.victim
    for path, url in (
        (_INSTANCE, f"/dicomweb/studies/{v.StudyInstanceUID}/series/{v.SeriesInstanceUID}"
                    f"/instances/{v.SOPInstanceUID}"),
        (_SERIES, f"/dicomweb/studies/{v.StudyInstanceUID}/series/{v.SeriesInstanceUID}"),
        (_STUDY, f"/dicomweb/studies/{v.StudyInstanceUID}"),
    ):  # fmt: skip
        r = client.delete(url)
        _check_response(doc, doc["paths"][path]["delete"], r, f"DELETE {path}")
        # The instance goes first, which takes its (only) series and study with it.
        assert r.status_code == (204 if path == _INSTANCE else 404), r.text


def test_peer_routes_answer_as_documented(client: httpx.Client, doc: dict[str, Any], stored: Stored) -> None:
    path = "/admin/peers/{name}"
    for method, body, status in (
        ("put", {"ae_title": "DOC", "host": "127.0.0.1", "port": 104, "roles": ["move-destination"]}, 201),
        ("put", {"ae_title": "DOC", "host": "127.0.0.1"}, 200),
        ("put", {"port": 0}, 400),
        ("delete", None, 200),
        ("delete", None, 404),
    ):
        r = client.request(method.upper(), "/admin/peers/doc", json=body)
        assert r.status_code == status, r.text
        _check_response(doc, doc["paths"][path][method], r, f"{method.upper()} {path}")


def test_order_and_fhir_writes_answer_as_documented(client: httpx.Client, doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    r = client.post("/api/orders", json={"accession_number": "DOC1", "patient_id": "DOC-P", "modality": "MR"})
    assert r.status_code == 201, r.text
    _check_response(doc, paths["/api/orders"]["post"], r, "POST /api/orders")
    order = r.json()["id"]
    for path, status in (("/api/orders/{order}/discontinue", 200), ("/api/orders/{order}/cancel", 409)):
        r = client.post(path.replace("{order}", order))
        assert r.status_code == status, r.text
        _check_response(doc, paths[path]["post"], r, f"POST {path}")
    r = client.post("/api/orders", json={"accession_number": "DOC2", "patient_id": 7, "modality": "MR"})
    assert r.status_code == 400, r.text
    _check_response(doc, paths["/api/orders"]["post"], r, "POST /api/orders bad")
    for body, status in (({"patient_id": "DOC-P", "patient_sex": "F"}, 200), ({"patient_id": "DOC-Q"}, 201)):
        r = client.post("/api/patients", json=body)
        assert r.status_code == status, r.text
        _check_response(doc, paths["/api/patients"]["post"], r, "POST /api/patients")
    fhir = {"Content-Type": "application/fhir+json"}
    patient = {"resourceType": "Patient", "identifier": [{"value": "DOC-F"}], "gender": "male"}
    for body, status in ((patient, 201), (patient, 200), ({**patient, "gender": 3}, 400)):
        r = client.post("/fhir/Patient", json=body, headers=fhir)
        assert r.status_code == status, r.text
        _check_response(doc, paths["/fhir/Patient"]["post"], r, "POST /fhir/Patient")
    r = client.post("/fhir/Patient", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    _check_response(doc, paths["/fhir/Patient"]["post"], r, "POST /fhir/Patient text")
    created = {**patient, "id": "doc-new", "identifier": [{"value": "DOC-N"}]}
    r = client.put("/fhir/Patient/doc-new", json=created, headers=fhir)
    assert r.status_code == 201, r.text
    _check_response(doc, paths["/fhir/Patient/{patient}"]["put"], r, "PUT /fhir/Patient")
    request = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/doc-new"},
        "identifier": [{"type": {"coding": [{"code": "ACSN"}]}, "value": "DOC3"}],
    }  # fmt: skip
    r = client.post("/fhir/ServiceRequest", json=request, headers=fhir)
    assert r.status_code == 201, r.text
    _check_response(doc, paths["/fhir/ServiceRequest"]["post"], r, "POST /fhir/ServiceRequest")
    rid = r.json()["id"]
    path = "/fhir/ServiceRequest/{order}"
    for body, status in (({**request, "id": rid, "intent": "plan"}, 422), ({**request, "id": rid}, 200)):
        r = client.put(path.replace("{order}", rid), json=body, headers=fhir)
        assert r.status_code == status, r.text
        _check_response(doc, paths[path]["put"], r, f"PUT {path}")
    r = client.get(path.replace("{order}", "no-such-order"))
    assert r.status_code == 404, r.text
    _check_response(doc, paths[path]["get"], r, f"GET {path} unknown")


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stow_responses(client: httpx.Client, doc: dict[str, Any]) -> None:
    boundary = "openapi-test-boundary"
    ds = datagen.make_dataset()
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + _part10(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    operation = doc["paths"]["/dicomweb/studies"]["post"]
    r = client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert r.status_code == 200, r.text
    _check_response(doc, operation, r, "STOW-RS")
    assert "00081199" in r.json()

    # The same instance again into another study: refused, 409 with FailedSOPSequence.
    other = f"/dicomweb/studies/{datagen.uid()}"
    r = client.post(
        other,
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert r.status_code == 409, r.text
    _check_response(doc, doc["paths"][_STUDY]["post"], r, "STOW-RS study mismatch")
    assert "00081198" in r.json()

    r = client.post("/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415, r.text
    _check_response(doc, operation, r, "STOW-RS wrong media type")

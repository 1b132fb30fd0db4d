"""Access control over HTTP on a real ``dicomhub serve --auth``: API tokens and OIDC
JWTs (a JWKS file made here), roles and scopes on QIDO-RS (results, counts, paging),
WADO-RS/WADO-URI (refused as not found), STOW-RS (0x0124 per refused instance),
DELETE, labels, users and grants, and one audit record per operation.

Data is loaded over STOW-RS with an admin token; the DIMSE side is not used here.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import DicomhubServer, ServerPool, run_cli

ISSUER = "https://issuer.example.test"
AUDIENCE = "dicomhub-test"
NOT_AUTHORIZED = 0x0124


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        jwt.algorithms.get_default_algorithms()[
            "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        ].to_jwk(key.public_key())
    )
    data.update(kid=kid, use="sig", alg="RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    return data


@dataclass
class Hub:
    server: DicomhubServer
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    admin: str = ""
    studies: dict[str, Dataset] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.base_url

    def cli(self, *args: str) -> tuple[int, str]:
        return run_cli(*args, "--data-dir", str(self.server.data_dir))

    def user(self, name: str, *grants: str, expires: float | None = None) -> str:
        """A user with ``role@scope`` grants; its token."""
        args = ["user", "add", name]
        for g in grants:
            role, scope = g.split("@", 1)
            args += ["--role", role, "--scope", scope]
        if expires is not None:
            args += ["--expires", str(expires)]
        rc, out = self.cli(*args)
        assert rc == 0, out
        token = out.strip().splitlines()[-1]
        assert token.startswith("dh_")
        return token

    def jwt(self, sub: str, key: Any = None, kid: str = "rsa1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 300}
        body.update(claims)
        return jwt.encode(body, key or self.rsa_key, algorithm=alg, headers={"kid": kid})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _part10(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def stow(hub: Hub, token: str, *datasets: Dataset) -> httpx.Response:
    boundary = "access-test-boundary"
    body = b""
    for ds in datasets:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _part10(ds) + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return httpx.post(
        f"{hub.url}/dicomweb/studies",
        content=body,
        headers={
            **bearer(token),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )


def audit(hub: Hub, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/audit", params={**params, "limit": "100000"}, headers=bearer(hub.admin))
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()
    return events


def study_uids(r: httpx.Response) -> list[str]:
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    return [item["0020000D"]["Value"][0] for item in r.json()]


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("access")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(rsa_key, "rsa1"), _jwk(ec_key, "ec1")]}))
    server = module_servers.start(
        args=[
            "--auth",
            "--oidc-issuer", ISSUER,
            "--oidc-jwks", str(jwks),
            "--oidc-audience", AUDIENCE,
            "--label-rule", "MRI=Modality:MR",
        ],
    )  # fmt: skip
    h = Hub(server, rsa_key, ec_key)
    h.admin = h.user("root", "admin@archive")
    # A (P1, labelled alpha), B (P1), C (P2, MR: labelled MRI by the ingest rule).
    for name, pid, modality in (("A", "P1", "CT"), ("B", "P1", "CT"), ("C", "P2", "MR")):
        ds = datagen.make_dataset(patient_id=pid, modality=modality, rows=8, cols=8)
        h.studies[name] = ds
        r = stow(h, h.admin, ds)
        assert r.status_code == 200, r.text
    r = httpx.put(
        f"{h.url}/dicomweb/studies/{h.studies['A'].StudyInstanceUID}/labels/alpha", headers=bearer(h.admin)
    )
    assert r.status_code == 201, r.text
    yield h


def uid(hub: Hub, name: str) -> str:
    return str(hub.studies[name].StudyInstanceUID)


# ---------------------------------------------------------------- authentication


def test_public_routes_answer_and_every_other_needs_a_valid_token(hub: Hub) -> None:
    assert httpx.get(f"{hub.url}/healthz").status_code == 200
    assert httpx.get(f"{hub.url}/openapi.json").status_code == 200
    before = len(audit(hub, action="login"))
    for path in ("/dicomweb/studies", "/admin/codecs", "/users", "/metrics", "/dicomweb/labels"):
        r = httpx.get(hub.url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["reason"] == "missing"
    for header, reason in (("Bearer dh_forged", "invalid"), ("Basic cm9vdDpyb290", "invalid")):
        r = httpx.get(f"{hub.url}/dicomweb/studies", headers={"Authorization": header})
        assert (r.status_code, r.json()["reason"]) == (401, reason)
    logins = audit(hub, action="login")
    assert len(logins) == before + 7
    assert {e["outcome"] for e in logins[:7]} == {"8"} and logins[0]["principal"] == "anonymous"


def test_expired_and_revoked_tokens_are_refused(hub: Hub) -> None:
    short = hub.user("shortlived", "reader@archive", expires=0.00002)  # ~1.7 s
    assert httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(short)).status_code == 200
    time.sleep(2.0)
    r = httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(short))
    assert (r.status_code, r.json()["reason"]) == (401, "expired")
    token = hub.user("leaver", "reader@archive")
    rc, out = hub.cli("user", "revoke", "leaver")
    assert rc == 0, out
    r = httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token))
    assert (r.status_code, r.json()["reason"]) == (401, "revoked")


def test_oidc_tokens_are_validated_strictly(hub: Hub) -> None:
    rc, out = hub.cli("grant", "add", "jwt-reader", "reader", "archive")
    assert rc == 0, out
    url = f"{hub.url}/dicomweb/studies"
    assert httpx.get(url, headers=bearer(hub.jwt("jwt-reader"))).status_code == 200
    es = hub.jwt("jwt-reader", key=hub.ec_key, kid="ec1", alg="ES256")
    assert httpx.get(url, headers=bearer(es)).status_code == 200
    # Access tokens often carry no nbf (Keycloak's never do): checked only when present.
    without_nbf = {"iss": ISSUER, "aud": AUDIENCE, "sub": "jwt-reader", "exp": int(time.time()) + 300}
    no_nbf = jwt.encode(without_nbf, hub.rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    assert httpx.get(url, headers=bearer(no_nbf)).status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = hub.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"rsa1"}').rstrip(b"=").decode()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "jwt-reader", "nbf": 0, "exp": int(time.time()) + 300}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused = {
        "expired": hub.jwt("jwt-reader", exp=int(time.time()) - 600),
        "forged": hub.jwt("jwt-reader", key=other),
        "wrong issuer": hub.jwt("jwt-reader", iss="https://evil.example.test"),
        "wrong audience": hub.jwt("jwt-reader", aud="someone-else"),
        "nbf in the future": hub.jwt("jwt-reader", nbf=int(time.time()) + 600),
        "no exp": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"},
            hub.rsa_key,
            algorithm="RS256",
            headers={"kid": "rsa1"},
        ),
        "alg none": f"{header}.{payload}.",
        "HS256 with the public key": _hs256(claims, public_pem),
        "unknown kid": hub.jwt("jwt-reader", kid="nope"),
    }
    for what, token in refused.items():
        r = httpx.get(url, headers=bearer(token))
        assert r.status_code == 401, what
    unknown = hub.jwt("nobody-granted")
    assert study_uids(httpx.get(url, headers=bearer(unknown))) == []  # authenticated, no grants


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT","kid":"rsa1"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(signature)


# ---------------------------------------------------------------- query and retrieve


def test_queries_see_only_permitted_studies_counts_and_pages(hub: Hub) -> None:
    a, b, c = uid(hub, "A"), uid(hub, "B"), uid(hub, "C")
    alpha = hub.user("alpha-reader", "reader@label:alpha")
    url = f"{hub.url}/dicomweb/studies"
    assert study_uids(httpx.get(url, headers=bearer(alpha))) == [a]
    assert study_uids(httpx.get(url, params={"PatientID": "P1"}, headers=bearer(alpha))) == [a]

    p1 = hub.user("p1-reader", "reader@patient:P1", "reader@study:" + c)
    pages = [
        study_uids(httpx.get(url, params={"limit": "1", "offset": str(o)}, headers=bearer(p1)))
        for o in range(4)
    ]
    assert pages == [[a], [b], [c], []]
    # A third-party client with the bearer header.
    client = DICOMwebClient(url=f"{hub.url}/dicomweb", headers=bearer(alpha))
    series = client.search_for_series(search_filters={"StudyInstanceUID": b})
    assert series == []
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [a]
    r = httpx.get(f"{url}", params={"includefield": "NumberOfStudyRelatedInstances"}, headers=bearer(alpha))
    assert r.json()[0]["00201208"]["Value"] == [1]


def test_a_token_for_one_study_cannot_fetch_another(hub: Hub) -> None:
    a, c = hub.studies["A"], hub.studies["C"]
    alpha = hub.user("alpha-viewer", "reader@label:alpha")
    query_only = hub.user("alpha-lister", "uploader@label:alpha")  # no RETRIEVE
    missing = datagen.uid()

    def paths(ds: Dataset, study: str | None = None) -> list[str]:
        base = f"/dicomweb/studies/{study or ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        inst = f"{base}/instances/{ds.SOPInstanceUID}"
        return [
            f"/dicomweb/studies/{study or ds.StudyInstanceUID}/metadata",
            f"{base}/metadata",
            f"{inst}/metadata",
            f"{inst}/frames/1",
            f"{inst}/rendered",
            f"{inst}/thumbnail",
            f"{inst}/bulk/7FE00010",
            f"/dicomweb/wado?requestType=WADO&studyUID={study or ds.StudyInstanceUID}"
            f"&seriesUID={ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}&contentType=application/dicom",
        ]

    for path in paths(a):
        r = httpx.get(hub.url + path, headers=bearer(alpha))
        assert r.status_code in (200, 206), (path, r.status_code, r.text[:200])
    for forbidden, nowhere in zip(paths(c), paths(c, missing), strict=True):
        r = httpx.get(hub.url + forbidden, headers=bearer(alpha))
        r2 = httpx.get(hub.url + nowhere, headers=bearer(alpha))
        assert r.status_code == r2.status_code == 404, (forbidden, r.status_code, r2.status_code)
        assert r.json()["error"].replace(str(c.StudyInstanceUID), "X") == r2.json()["error"].replace(
            missing, "X"
        )
    r = httpx.get(hub.url + paths(a)[0], headers=bearer(query_only))
    assert r.status_code == 404


# ---------------------------------------------------------------- store, delete, labels


def test_stow_needs_store_on_the_study(hub: Hub) -> None:
    reader = hub.user("just-reader", "reader@archive")
    mri = hub.user("mri-uploader", "uploader@label:MRI")
    new_mr = datagen.make_dataset(modality="MR", patient_id="P7", rows=8, cols=8)
    new_ct = datagen.make_dataset(modality="CT", patient_id="P7", rows=8, cols=8)
    into_a = datagen.make_dataset(study_uid=uid(hub, "A"), patient_id="P1", rows=8, cols=8)

    assert stow(hub, reader, new_mr).status_code == 403
    r = stow(hub, mri, new_mr, new_ct, into_a)
    assert r.status_code == 202, r.text
    failed = r.json()["00081198"]["Value"]
    assert sorted(f["00081155"]["Value"][0] for f in failed) == sorted(
        [str(new_ct.SOPInstanceUID), str(into_a.SOPInstanceUID)]
    )
    assert {f["00081197"]["Value"][0] for f in failed} == {NOT_AUTHORIZED}
    (event,) = audit(hub, principal="mri-uploader", action="store")[:1]
    assert event["outcome"] == "4" and event["detail"]["refused_not_authorized"] == 2
    assert [(s["study_instance_uid"], s["number_of_instances"]) for s in event["studies"]] == [
        (str(new_mr.StudyInstanceUID), 1)
    ]
    assert len(audit(hub, principal="mri-uploader", action="store")) == 1
    (refusal,) = audit(hub, principal="just-reader", action="store")  # the 403 too
    assert refusal["outcome"] == "8" and refusal["studies"] == []


def test_delete_needs_delete(hub: Hub) -> None:
    doomed = datagen.make_dataset(patient_id="P9", rows=8, cols=8)
    assert stow(hub, hub.admin, doomed).status_code == 200
    study = str(doomed.StudyInstanceUID)
    assert (
        httpx.put(f"{hub.url}/dicomweb/studies/{study}/labels/doomed", headers=bearer(hub.admin)).status_code
        == 201
    )
    reader = hub.user("doomed-reader", "reader@label:doomed")
    curator = hub.user("doomed-curator", "curator@label:doomed")
    stranger = hub.user("stranger-curator", "curator@label:elsewhere")
    url = f"{hub.url}/dicomweb/studies/{study}"
    assert httpx.delete(url, headers=bearer(reader)).status_code == 403
    assert httpx.delete(url, headers=bearer(stranger)).status_code == 404
    assert httpx.delete(url, headers=bearer(curator)).status_code == 204
    (event,) = audit(hub, principal="doomed-curator", action="delete")
    assert event["outcome"] == "0" and event["studies"][0]["study_instance_uid"] == study
    assert event["studies"][0]["number_of_instances"] == 1


def test_labels_over_http_and_cli(hub: Hub) -> None:
    b = uid(hub, "B")
    curator = hub.user("b-curator", "curator@patient:P1")
    reader = hub.user("b-reader", "reader@label:beta")
    assert study_uids(httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(reader))) == []
    r = httpx.put(f"{hub.url}/dicomweb/studies/{b}/labels/beta", headers=bearer(curator))
    assert r.status_code == 201, r.text
    assert study_uids(httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(reader))) == [b]
    assert httpx.get(f"{hub.url}/dicomweb/studies/{b}/labels", headers=bearer(reader)).json() == ["beta"]
    assert httpx.get(f"{hub.url}/dicomweb/labels", headers=bearer(reader)).json() == [
        {"label": "beta", "studies": 1}
    ]
    assert (
        httpx.put(
            f"{hub.url}/dicomweb/studies/{uid(hub, 'C')}/labels/beta", headers=bearer(curator)
        ).status_code
        == 404
    )
    assert httpx.put(f"{hub.url}/dicomweb/studies/{b}/labels/beta", headers=bearer(reader)).status_code == 403
    assert [e["action"] for e in audit(hub, principal="b-curator", action="label")] == ["label", "label"]
    rc, out = hub.cli("label", "remove", b, "beta")
    assert rc == 0, out
    assert study_uids(httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(reader))) == []
    rc, out = hub.cli("label", "list", uid(hub, "C"))
    assert (rc, out.split()) == (0, ["MRI"])


# ---------------------------------------------------------------- administration and audit


def test_users_and_grants_over_http_need_administer(hub: Hub) -> None:
    reader = hub.user("nosy-reader", "reader@archive")
    for method, path in (("GET", "/users"), ("POST", "/grants"), ("GET", "/audit"), ("GET", "/admin/codecs")):
        assert httpx.request(method, hub.url + path, headers=bearer(reader), json={}).status_code == 403, path
    before = len(audit(hub, action="security-change"))
    r = httpx.post(
        f"{hub.url}/users",
        json={"name": "api-made", "grants": [{"role": "reader", "scope": "label:alpha"}]},
        headers=bearer(hub.admin),
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert study_uids(httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token))) == [uid(hub, "A")]
    r = httpx.post(
        f"{hub.url}/grants",
        json={"principal": "api-made", "role": "reader", "scope": "patient:P2"},
        headers=bearer(hub.admin),
    )
    assert r.status_code == 201, r.text
    assert len(study_uids(httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token)))) == 2
    r = httpx.post(
        f"{hub.url}/grants",
        json={"principal": "x", "role": "god", "scope": "archive"},
        headers=bearer(hub.admin),
    )
    assert r.status_code == 400
    r = httpx.delete(
        f"{hub.url}/grants",
        params={"principal": "api-made", "role": "reader", "scope": "patient:P2"},
        headers=bearer(hub.admin),
    )
    assert r.status_code == 200, r.text
    r = httpx.delete(f"{hub.url}/users/api-made/tokens", headers=bearer(hub.admin))
    assert r.json() == {"revoked": 1}
    assert httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token)).status_code == 401
    users = {u["name"]: u for u in httpx.get(f"{hub.url}/users", headers=bearer(hub.admin)).json()}
    assert users["api-made"]["grants"] == ["reader@label:alpha"] and users["api-made"]["active_tokens"] == 0
    changes = audit(hub, action="security-change")
    assert len(changes) == before + 4  # user, grant, (refused grant: not written), grant removed, revoke
    assert changes[0]["principal"] == "root" and changes[0]["detail"]["change"] == "token-revoke"


def test_every_operation_leaves_exactly_one_audit_record(hub: Hub) -> None:
    token = hub.user("audited", "reader@archive")
    a = hub.studies["A"]
    study = str(a.StudyInstanceUID)
    httpx.get(f"{hub.url}/dicomweb/studies", params={"PatientID": "P1"}, headers=bearer(token))
    httpx.get(f"{hub.url}/dicomweb/studies/{study}/series", headers=bearer(token))
    httpx.get(f"{hub.url}/dicomweb/studies/{study}/metadata", headers=bearer(token))
    httpx.get(
        f"{hub.url}/dicomweb/studies/{study}",
        headers={**bearer(token), "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    events = audit(hub, principal="audited")
    assert [e["action"] for e in events] == ["retrieve", "retrieve", "query", "query"]
    assert events[2]["studies"][0]["study_instance_uid"] == study and events[3]["studies"] == []
    assert events[0]["studies"][0]["number_of_instances"] == 1
    assert events[0]["studies"][0]["patient_id"] == "P1"  # filled in from the index
    assert events[0]["studies"][0]["series_instance_uids"] == [str(a.SeriesInstanceUID)]
    assert all(e["channel"] == "http" and e["address"] == "127.0.0.1" for e in events)
    by_study = audit(hub, study=study)
    assert {"retrieve", "query", "label"} <= {e["action"] for e in by_study}
    rc, out = hub.cli("audit", "--principal", "audited", "--json")
    assert rc == 0 and len(json.loads(out)) == 4

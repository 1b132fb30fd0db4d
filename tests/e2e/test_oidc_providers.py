"""OpenID Connect as identity providers issue it, on a real ``dicomhub serve --auth``.

A local identity provider (tests/oidc_idp.py: HTTPS on 127.0.0.1 with a test CA)
publishes a Keycloak realm's discovery document and keys. The server is given
only the issuer (``--oidc-issuer``, no JWKS): it finds the keys by discovery,
trusting ``--oidc-ca-file``. Its role mapping comes from a TOML ``[oidc_roles]``
table over Keycloak's ``realm_access.roles``. Tokens are shaped as Keycloak's
access tokens (no ``nbf``, ``aud: account``, the client in ``azp``), and the
callers holding mapped roles are driven over DICOMweb: each may do what its role
allows and nothing more.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import DicomhubServer, ServerPool, free_port, run_cli
from tests.oidc_idp import IdentityProvider

# Authentication and the role mapping do not depend on the index and blob store; the SQL
# filters of grants are covered on both back ends by test_access_http.py.
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

AUDIENCE = "dicomhub"  # the Keycloak client: in azp
NOT_AUTHORIZED = 0x0124
ROLES_TOML = """\
[oidc_roles]
"dicom-reader" = "reader"
"cardio-curator" = ["curator@label:cardio"]
"cardio-uploader" = "uploader@label:cardio"
"deid-team" = "deidentifier@project:TRIAL"
"""


@dataclass
class Site:
    server: DicomhubServer
    idp: IdentityProvider
    admin: str = ""
    studies: dict[str, Dataset] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.base_url

    def token(self, username: str, *realm_roles: str, **claims: Any) -> str:
        return self.idp.keycloak.access_token(username, realm_roles=list(realm_roles), **claims)

    def uid(self, name: str) -> str:
        return str(self.studies[name].StudyInstanceUID)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stow(site: Site, token: str, *datasets: Dataset) -> httpx.Response:
    boundary = "oidc-test-boundary"
    body = b""
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return httpx.post(
        f"{site.url}/dicomweb/studies",
        content=body,
        headers={
            **bearer(token),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )


def study_uids(r: httpx.Response) -> list[str]:
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    return sorted(item["0020000D"]["Value"][0] for item in r.json())


@pytest.fixture(scope="module")
def site(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("oidc")
    with IdentityProvider(root / "pki") as idp:
        config = root / "dicomhub.toml"
        config.write_text(ROLES_TOML)
        server = module_servers.start(
            args=[
                "--config", str(config),
                "--auth",
                "--oidc-issuer", idp.keycloak.issuer,
                "--oidc-audience", AUDIENCE,
                "--oidc-accept-azp",
                "--oidc-principal-claim", "preferred_username",
                "--oidc-ca-file", str(idp.ca_file),
                "--oidc-role-claim", "realm_access.roles",
                "--label-rule", "cardio=Modality:MR",
            ],
            env={"DICOMHUB_DEID_SECRET": "a-test-secret-of-enough-length-0123456789"},
        )  # fmt: skip
        s = Site(server, idp)
        rc, out = run_cli(
            "user", "add", "root", "--role", "admin", "--scope", "archive", "--data-dir", str(server.data_dir)
        )
        assert rc == 0, out
        s.admin = out.strip().splitlines()[-1]
        # CT (P1) and MR (P2, labelled cardio by the ingest rule).
        for name, pid, modality in (("CT", "P1", "CT"), ("MR", "P2", "MR")):
            s.studies[name] = datagen.make_dataset(patient_id=pid, modality=modality, rows=8, cols=8)
            r = stow(s, s.admin, s.studies[name])
            assert r.status_code == 200, r.text
        yield s


def test_a_keycloak_reader_role_reads_everything_and_does_nothing_else(site: Site) -> None:
    discovery, jwks = site.idp.keycloak.discovery_path, site.idp.keycloak.jwks_path
    token = site.token("alice", "dicom-reader")  # no nbf, aud "account", azp "dicomhub"
    studies = httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(token))
    assert study_uids(studies) == sorted([site.uid("CT"), site.uid("MR")])
    # The keys came by discovery: one document, one JWKS.
    assert (site.idp.count(discovery), site.idp.count(jwks)) == (1, 1)
    metadata = httpx.get(f"{site.url}/dicomweb/studies/{site.uid('CT')}/metadata", headers=bearer(token))
    assert metadata.status_code == 200 and len(metadata.json()) == 1
    new = datagen.make_dataset(modality="MR", patient_id="P2", rows=8, cols=8)
    assert stow(site, token, new).status_code == 403
    study = f"{site.url}/dicomweb/studies/{site.uid('CT')}"
    assert httpx.delete(study, headers=bearer(token)).status_code == 403
    assert httpx.put(f"{study}/labels/seen", headers=bearer(token)).status_code == 403
    assert httpx.get(f"{site.url}/users", headers=bearer(token)).status_code == 403
    # The principal is the token's preferred_username, in the audit log as elsewhere.
    events = httpx.get(
        f"{site.url}/audit", params={"principal": "alice", "action": "query"}, headers=bearer(site.admin)
    )
    assert events.status_code == 200 and len(events.json()) == 1


def test_a_scoped_role_reaches_its_label_only(site: Site) -> None:
    token = site.token("bob", "cardio-curator", "offline_access")
    headers = bearer(token)
    assert study_uids(httpx.get(f"{site.url}/dicomweb/studies", headers=headers)) == [site.uid("MR")]
    ct, mr = (f"{site.url}/dicomweb/studies/{site.uid(name)}" for name in ("CT", "MR"))
    assert httpx.get(f"{ct}/metadata", headers=headers).status_code == 404  # as if it did not exist
    assert httpx.put(f"{ct}/labels/reviewed", headers=headers).status_code == 404
    assert httpx.put(f"{mr}/labels/reviewed", headers=headers).status_code == 201  # curator: label
    assert httpx.get(f"{mr}/metadata", headers=headers).status_code == 200
    new = datagen.make_dataset(modality="MR", patient_id="P2", rows=8, cols=8)
    assert stow(site, token, new).status_code == 403  # curator: no store


def test_a_mapped_uploader_stores_into_its_label_only(site: Site) -> None:
    token = site.token("carol", "cardio-uploader")
    mr = datagen.make_dataset(modality="MR", patient_id="P5", rows=8, cols=8)  # labelled cardio on ingest
    ct = datagen.make_dataset(modality="CT", patient_id="P5", rows=8, cols=8)
    r = stow(site, token, mr, ct)
    assert r.status_code == 202, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [str(ct.SOPInstanceUID)]
    assert failed["00081197"]["Value"] == [NOT_AUTHORIZED]
    # No query right: nothing matches (as for any caller without a query grant).
    assert study_uids(httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(token))) == []


def test_grants_add_up_and_unmapped_tokens_hold_nothing(site: Site) -> None:
    url = f"{site.url}/dicomweb/studies"
    nobody = site.token("dave", "offline_access", "uma_authorization")
    assert study_uids(httpx.get(url, headers=bearer(nobody))) == []  # authenticated, no grant
    rc, out = run_cli("grant", "add", "dave", "reader", "patient:P1", "--data-dir", str(site.server.data_dir))
    assert rc == 0, out
    assert study_uids(httpx.get(url, headers=bearer(nobody))) == [site.uid("CT")]
    both = site.token("dave", "cardio-curator")  # a stored grant and a mapped one
    cardio = study_uids(httpx.get(url, headers=bearer(site.token("erin", "cardio-curator"))))
    assert site.uid("MR") in cardio and site.uid("CT") not in cardio
    assert study_uids(httpx.get(url, headers=bearer(both))) == sorted([site.uid("CT"), *cardio])


def test_a_mapped_deidentifier_works_on_its_project_only(site: Site) -> None:
    instance = str(site.studies["CT"].SOPInstanceUID)
    url = f"{site.url}/deid/preview"
    team = bearer(site.token("erin", "deid-team"))
    r = httpx.post(url, json={"project": "TRIAL", "instance": instance}, headers=team)
    assert r.status_code == 200, r.text
    assert r.json()["study_instance_uid"] != site.uid("CT")
    assert httpx.post(url, json={"project": "OTHER", "instance": instance}, headers=team).status_code == 403
    reader = bearer(site.token("alice", "dicom-reader"))
    assert httpx.post(url, json={"project": "TRIAL", "instance": instance}, headers=reader).status_code == 403


def test_tokens_are_refused_for_their_times_issuer_audience_and_type(site: Site) -> None:
    now = int(time.time())
    refused = {
        "expired": ("expired", site.token("alice", "dicom-reader", exp=now - 120)),
        "nbf in the future": ("invalid", site.token("alice", "dicom-reader", nbf=now + 600)),
        "another client": ("invalid", site.token("alice", "dicom-reader", azp="other-app")),
        "another realm": ("invalid", site.token("alice", "dicom-reader", iss=site.idp.keycloak.issuer + "2")),
        "an ID token": ("invalid", site.token("alice", "dicom-reader", typ="ID", aud=AUDIENCE)),
    }
    for what, (reason, token) in refused.items():
        r = httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(token))
        assert (r.status_code, r.json()["reason"]) == (401, reason), what
    within_skew = site.token("alice", "dicom-reader", exp=now - 5)
    assert httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(within_skew)).status_code == 200


def test_a_rotated_key_is_fetched_once_on_first_use(site: Site) -> None:
    realm = site.idp.keycloak
    # The realm's first key is in use already (the data was read with it).
    assert (
        httpx.get(
            f"{site.url}/dicomweb/studies", headers=bearer(site.token("alice", "dicom-reader"))
        ).status_code
        == 200
    )
    discovered, fetched = site.idp.count(realm.discovery_path), site.idp.count(realm.jwks_path)
    realm.add_key("kc-rsa-2")  # Keycloak rotates: the new key is published, then used
    token = site.token("alice", "dicom-reader", kid="kc-rsa-2")
    assert httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(token)).status_code == 200
    assert site.idp.count(realm.jwks_path) == fetched + 1
    for kid in ("made-up-1", "made-up-2"):  # within the minute: no further fetch
        realm.add_key(kid, published=False)
        r = httpx.get(f"{site.url}/dicomweb/studies", headers=bearer(site.token("alice", kid=kid)))
        assert r.status_code == 401
    assert site.idp.count(realm.jwks_path) == fetched + 1
    assert site.idp.count(realm.discovery_path) == discovered


def test_an_http_issuer_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    rc, out = run_cli(
        "serve",
        "--data-dir", str(tmp_path / "data"),
        "--dimse-port", str(free_port()),
        "--http-port", str(free_port()),
        "--auth",
        "--oidc-issuer", "http://127.0.0.1:8080/realms/hospital",
        "--oidc-audience", AUDIENCE,
        timeout=60,
    )  # fmt: skip
    assert rc != 0
    assert "oidc_issuer 'http://127.0.0.1:8080/realms/hospital'" in out and "https" in out, out

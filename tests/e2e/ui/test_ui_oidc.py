"""Log-in to the web UI through an OpenID Connect provider, in a real browser.

The local identity provider (tests/oidc_idp.py, HTTPS on 127.0.0.1) plays a
Keycloak realm whose authorization endpoint approves ``alice`` at once; the
server (``--auth``, ``--oidc-ui-client-id``) runs the authorization code flow
with PKCE. The browser clicks "Log in with Hospital SSO", comes back to ``/``
logged in as alice and sees the one study her mapped role (reader of the
``cardio`` label) allows. A callback whose state this browser did not start is
refused with a 400 page.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import DicomhubServer, ServerPool, run_cli
from tests.e2e.ui.conftest import LAPTOP
from tests.oidc_idp import IdentityProvider

# The flow runs in the web layer and the access service; the index only answers the search.
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]


@dataclass
class Site:
    server: DicomhubServer
    idp: IdentityProvider
    mr: str
    ct: str

    @property
    def url(self) -> str:
        return self.server.base_url


def stow(url: str, token: str, ds: Dataset) -> None:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    boundary = "oidc-ui-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buf.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = httpx.post(
        f"{url}/dicomweb/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def site(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui-oidc")
    with IdentityProvider(root / "pki") as idp:
        idp.keycloak.login_user = "alice"
        idp.keycloak.login_roles = ("cardio-reader",)
        server = module_servers.start(
            args=[
                "--auth",
                "--oidc-issuer", idp.keycloak.issuer,
                "--oidc-audience", idp.keycloak.client,
                "--oidc-accept-azp",
                "--oidc-principal-claim", "preferred_username",
                "--oidc-ca-file", str(idp.ca_file),
                "--oidc-role-claim", "realm_access.roles",
                "--oidc-role", "cardio-reader=reader@label:cardio",
                "--label-rule", "cardio=Modality:MR",
                "--oidc-ui-client-id", idp.keycloak.client,
                "--oidc-ui-provider-name", "Hospital SSO",
            ]
        )  # fmt: skip
        rc, out = run_cli(
            "user", "add", "root", "--role", "admin", "--scope", "archive", "--data-dir", str(server.data_dir)
        )
        assert rc == 0, out
        admin = out.strip().splitlines()[-1]
        mr = datagen.make_dataset(patient_name="Sso^Mary", modality="MR", rows=8, cols=8)
        ct = datagen.make_dataset(patient_name="Sso^Carl", modality="CT", rows=8, cols=8)
        for ds in (mr, ct):
            stow(server.base_url, admin, ds)
        yield Site(server, idp, str(mr.StudyInstanceUID), str(ct.StudyInstanceUID))


def test_log_in_with_the_provider_and_see_what_the_role_allows(browser: Browser, site: Site) -> None:
    # The test CA is not the browser's: the provider's certificate errors are ignored here only.
    context = browser.new_context(viewport=LAPTOP, ignore_https_errors=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(site.url + "/")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        page.get_by_role("link", name="Log in with Hospital SSO").click()
        page.wait_for_url(site.url + "/")
        expect(page.locator("#who")).to_have_text("Logged in as alice")
        expect(page.locator("#studies tbody tr")).to_have_count(1)
        expect(page.locator("#studies tbody tr td:first-child")).to_have_text(["Sso^Mary"])
        assert site.idp.count(site.idp.keycloak.token_path) == 1
        token = page.evaluate("sessionStorage.getItem('dicomhub.token')")
        me = httpx.get(f"{site.url}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["name"] == "alice"
        # The callback (its code) was replaced in the history: "back" is the page before the log-in.
        page.go_back()
        assert page.url == site.url + "/"
    finally:
        context.close()
    assert errors == []


def test_a_callback_this_browser_did_not_start_is_refused(site: Site) -> None:
    with httpx.Client(base_url=site.url) as client:
        options = client.get("/ui/login/options")
        assert options.json() == {"oidc": {"name": "Hospital SSO", "url": "/ui/login/oidc"}}
        start = client.get("/ui/login/oidc")
        assert start.status_code == 302
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [
            f"{site.url}/ui/login/callback"
        ]
        state = query["state"][0]
        # The provider's answer, but with a state other than the one this browser's cookie holds.
        bad = client.get("/ui/login/callback", params={"state": state + "x", "code": "any"})
        assert bad.status_code == 400
        assert "the state does not match" in bad.text
        assert "Traceback" not in bad.text
        # Without the cookie (another browser) even the right state is refused.
        stranger = httpx.get(f"{site.url}/ui/login/callback", params={"state": state, "code": "any"})
        assert stranger.status_code == 400 and "not started in this browser" in stranger.text
        # With the cookie, a code the provider never issued: its refusal, said as it is.
        unknown = client.get("/ui/login/callback", params={"state": state, "code": "forged"})
        assert unknown.status_code == 400
        assert re.search(r"refused the code: invalid_grant", unknown.text)

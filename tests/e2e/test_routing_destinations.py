"""Routing to the destinations test_routing.py does not cover, on one server for the
module, each rule fed by its own calling AE title (storescu, TCP_NODELAY=1):

* a STOW-RS destination: the real Orthanc with its DICOMweb plugin receives exactly the
  instances of its rule;
* a ``transfer_syntax`` rule (RLE Lossless) to DCMTK storescp accepting every syntax
  (``+xa``): the files it receives are in RLE Lossless and their decoded pixels equal
  the original's;
* a ``deidentify`` rule to storescp: the received objects have none of the original
  patient's name and ID nor the original SOP Instance UIDs, but the replacement UIDs
  the project's export run recorded for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests import datagen
from tests.e2e.helpers import HOST, DicomhubServer, ServerPool, StoreSCP, read_dir, run_cli, store_ok
from tests.e2e.orthanc import OrthancServer, orthanc

pytestmark = pytest.mark.e2e

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
PROJECT = "route-e2e"
SECRET = {"DICOMHUB_DEID_SECRET": "route-e2e-secret-0123456789abcdef"}


class Setup:
    def __init__(
        self, server: DicomhubServer, config: Path, web: OrthancServer, rle: StoreSCP, anon: StoreSCP
    ) -> None:
        self.server, self.config, self.web, self.rle, self.anon = server, config, web, rle, anon

    def cli(self, *args: str) -> tuple[int, str]:
        return run_cli(
            *args, "--config", str(self.config), "--data-dir", str(self.server.data_dir), env=SECRET
        )


@pytest.fixture(scope="module")
def routed(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("destinations")
    rle = StoreSCP(root / "rle", root / "rle.log", aet="RLESCP", extra=("+xa",)).start()
    anon = StoreSCP(root / "anon", root / "anon.log", aet="ANONSCP").start()
    try:
        with orthanc(root / "orthanc") as web:
            config = root / "dicomhub.toml"
            config.write_text(
                f'[[peer]]\nname = "web"\ndicomweb_url = "{web.dicomweb_url}"\n\n'
                f'[[peer]]\nname = "rle"\nae_title = "RLESCP"\nhost = "{HOST}"\nport = {rle.port}\n\n'
                f'[[peer]]\nname = "anon"\nae_title = "ANONSCP"\nhost = "{HOST}"\nport = {anon.port}\n\n'
                '[[route]]\nname = "web"\nwhen = { calling_ae = "WEB" }\nto = ["web"]\n\n'
                '[[route]]\nname = "rle"\nwhen = { calling_ae = "RLE" }\nto = ["rle"]\n'
                f'transfer_syntax = "{RLE_LOSSLESS}"\n\n'
                '[[route]]\nname = "anon"\nwhen = { calling_ae = "ANON" }\nto = ["anon"]\n'
                f'deidentify = "{PROJECT}"\n'
            )
            server = module_servers.start(args=["--config", str(config)], env=SECRET)
            yield Setup(server, config, web, rle, anon)
    finally:
        rle.stop()
        anon.stop()


def wait_for(what: str, found: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


def test_a_dicomweb_peer_gets_its_rules_instances_by_stow_rs(routed: Setup, tmp_path: Path) -> None:
    sent = {str(ds.SOPInstanceUID): ds for ds in datagen.write_ct_series(tmp_path / "web", 3, rows=16)}
    other = datagen.write_ct_series(tmp_path / "other", 1, rows=16)
    store_ok(routed.server, tmp_path / "other", expect=1)  # STORESCU: no rule takes it
    store_ok(routed.server, tmp_path / "web", expect=3, calling="WEB")
    study = str(next(iter(sent.values())).StudyInstanceUID)

    def at_orthanc() -> set[str]:
        r = httpx.get(f"{routed.web.dicomweb_url}/studies/{study}/instances", timeout=10)
        return {str(i["00080018"]["Value"][0]) for i in r.json()} if r.status_code == 200 else set()

    assert wait_for("the instances at Orthanc", lambda: at_orthanc() == set(sent) or None)
    r = httpx.get(f"{routed.web.dicomweb_url}/studies/{other[0].StudyInstanceUID}/instances", timeout=10)
    assert r.status_code in (200, 204, 404) and (r.status_code != 200 or r.json() == [])


def test_a_transfer_syntax_rule_sends_the_transcoded_syntax_with_the_same_pixels(
    routed: Setup, tmp_path: Path
) -> None:
    originals = {str(ds.SOPInstanceUID): ds for ds in datagen.write_ct_series(tmp_path / "rle", 2, rows=32)}
    store_ok(routed.server, tmp_path / "rle", expect=2, calling="RLE")
    got = wait_for(
        "two files at storescp", lambda: (lambda d: d if len(d) == 2 else None)(read_dir(routed.rle.out_dir))
    )
    assert set(got) == set(originals)
    for uid, ds in got.items():
        assert str(ds.file_meta.TransferSyntaxUID) == RLE_LOSSLESS
        assert np.array_equal(ds.pixel_array, originals[uid].pixel_array)


def test_a_deidentifying_rule_sends_no_identity_and_the_projects_replacements(
    routed: Setup, tmp_path: Path
) -> None:
    originals = datagen.write_ct_series(
        tmp_path / "anon", 2, rows=16, patient_id="ROUTE-PID-7", patient_name="Routed^Patient"
    )
    store_ok(routed.server, tmp_path / "anon", expect=2, calling="ANON")
    got = wait_for(
        "two files at storescp", lambda: (lambda d: d if len(d) == 2 else None)(read_dir(routed.anon.out_dir))
    )
    source = {str(ds.SOPInstanceUID) for ds in originals}
    assert not set(got) & source  # sent under replacement UIDs
    for ds in got.values():
        assert "ROUTE-PID-7" not in str(ds.get("PatientID", "")) and "Routed" not in str(
            ds.get("PatientName", "")
        )
        assert str(ds.StudyInstanceUID) != str(originals[0].StudyInstanceUID)
    # The project's export run recorded each source instance with the UID it was sent under.
    rc, out = routed.cli("deid-job", "list", "--json")
    assert rc == 0, out
    runs = [r for r in json.loads(out) if r["project"] == PROJECT]
    assert runs and all(r["kind"] == "export" for r in runs)
    mapped: dict[str, str] = {}
    for run in runs:
        rc, out = routed.cli("deid-job", "show", str(run["id"]), "--json")
        assert rc == 0, out
        mapped |= {
            i["source_sop_instance_uid"]: i["target_sop_instance_uid"] for i in json.loads(out)["items"]
        }
    assert {mapped[s] for s in source} == set(got)

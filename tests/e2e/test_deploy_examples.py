"""The deployment examples of docs/deploy/ as they are: the systemd unit verifies, and nginx with
the example configuration passes STOW-RS and WADO-RS of a large object through without
buffering them to disk, in front of a real ``dicomhub serve`` over HTTPS."""

from __future__ import annotations

import hashlib
import io
import os
import re
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import datagen
import httpx
import pytest
from pydicom.dataset import Dataset

from .helpers import HOST, ServerPool, dicomhub_command, free_port, wait_for_port
from .tlscerts import make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # systemd-analyze checks every key and value and that ExecStart's program exists: point it
    # at this environment's dicomhub instead of /opt/dicomhub.
    unit = (DEPLOY / "dicomhub.service").read_text()
    dicomhub = dicomhub_command()[0]
    (tmp_path / "dicomhub.service").write_text(unit.replace("/opt/dicomhub/bin/dicomhub", str(dicomhub)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./dicomhub.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Unknown keys and bad values are only warnings (exit code 0): there must be none.
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done
    for option in ("ProtectSystem=strict", "NoNewPrivileges=true", "PrivateTmp=true", "User=dicomhub"):
        assert option in unit


def _nginx_config(tmp_path: Path, upstream_port: int, ca: Path, cert: Path, key: Path) -> tuple[Path, int]:
    """The example, moved to free ports on 127.0.0.1 and the test's certificates, in a main config."""
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "nginx.conf").read_text()
    site = re.sub(r"^\s*listen \[::\]:.*$", "", site, flags=re.MULTILINE)  # no IPv6 needed here
    site = site.replace("listen 80;", f"listen {HOST}:{http_port};")
    site = site.replace("listen 443 ssl;", f"listen {HOST}:{https_port} ssl;")
    site = site.replace("server 127.0.0.1:8042;", f"server {HOST}:{upstream_port};")
    site = site.replace("/etc/dicomhub/tls/server.crt", str(cert))
    site = site.replace("/etc/dicomhub/tls/server.key", str(key))
    site = site.replace("/etc/ssl/certs/ca-certificates.crt", str(ca))
    site = site.replace("pacs.example.org", "localhost")
    (tmp_path / "dicomhub.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    # Root in CI: workers stay root, so they can use the test's private folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'} info;\nevents {{}}\n"
        "http {\n    access_log off;\n"
        f"    client_body_temp_path {temp['body']};\n    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {tmp_path / 'dicomhub.conf'};\n}}\n"
    )
    return main, https_port


@pytest.fixture
def nginx_front(servers: ServerPool, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    pki = make_pki(tmp_path / "pki")
    srv = servers.create("proxied")
    srv.args += ["--https", "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    srv.https_context = ssl.create_default_context(cafile=str(pki.ca))
    srv.start()
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    main, port = _nginx_config(conf_dir, srv.http_port, pki.ca, pki.server.cert, pki.server.key)
    test = subprocess.run(["nginx", "-t", "-c", str(main)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen(["nginx", "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=15, proc=proc)
        yield f"https://localhost:{port}", pki.ca, conf_dir / "error.log"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def test_nginx_example_streams_stow_and_wado(nginx_front: tuple[str, Path, Path]) -> None:
    base, ca, error_log = nginx_front
    ds = datagen.make_dataset(rows=3072, cols=3072, seed=7)  # 18 MB of pixel data: past every buffer
    data = _encode(ds)
    boundary = "deploy-" + uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        # A generator: httpx sends it chunked, as a client streaming a study does.
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=120) as client:
        r = client.post(
            f"{base}/dicomweb/studies",
            content=body(),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        assert r.status_code == 200, r.text
        # X-Forwarded-Proto and Host reached dicomhub: the retrieve URL is the proxy's.
        assert r.json()["00081190"]["Value"][0].startswith("https://localhost"), r.json()
        url = (
            f"{base}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        accept = 'multipart/related; type="application/dicom"'
        with client.stream("GET", url, headers={"Accept": accept}) as got:
            assert got.status_code == 200
            content_type = got.headers["content-type"]
            received = b"".join(got.iter_bytes())
    # The multipart answer holds the object byte for byte.
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match is not None, content_type
    parts = [
        payload.removesuffix(b"\r\n")
        for part in received.split(b"--" + match.group(1).encode())
        for _head, sep, payload in [part.partition(b"\r\n\r\n")]
        if sep
    ]
    assert [hashlib.sha256(p).hexdigest() for p in parts] == [hashlib.sha256(data).hexdigest()]
    # What nginx logs when it spools a request or a response to disk: the example must not.
    log = error_log.read_text()
    assert "buffered to a temporary file" not in log, log

"""Absolute URLs that DICOMweb responses hand out (BulkDataURI, RetrieveURL).

Behind a reverse proxy the request's own URL is the proxy's upstream
(``http://127.0.0.1:8042/dicomweb``), not what clients reach. The
``public_base_url`` setting names the DICOMweb root as clients see it; without
it the base is the request's scheme, ``Host`` and mount path. uvicorn applies
``X-Forwarded-Proto`` / ``X-Forwarded-For`` only from the addresses in its
``FORWARDED_ALLOW_IPS`` (default 127.0.0.1 and ::1), and ``X-Forwarded-Host`` is not
read at all: a client-supplied host must not decide where other clients are
sent.

References
----------
PS3.18 8.3.1 (base URL), 10.4.1.1.2 (BulkDataURI), 10.6.3.3 (RetrieveURL).
"""

from __future__ import annotations

from starlette.requests import Request

__all__ = ["dicomweb_base"]


def dicomweb_base(request: Request, public_base_url: str = "") -> str:
    """The absolute URL of the DICOMweb root for ``request``, without a trailing slash.

    Parameters
    ----------
    request : starlette.requests.Request
        A request to a route under the DICOMweb mount.
    public_base_url : str
        The configured public DICOMweb root (``Settings.public_base_url``);
        empty to derive the base from the request.

    Returns
    -------
    str
        For example ``https://pacs.example.org/dicom-web``.
    """
    if public_base_url:
        return public_base_url.rstrip("/")
    url = request.url
    # root_path is the mount ("/dicomweb") with anything uvicorn's --root-path adds before it.
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}"

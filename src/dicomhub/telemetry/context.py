"""The id of the HTTP request or DIMSE association a log line belongs to.

Context variables rather than thread-locals: the HTTP side sets the request
id in an ASGI middleware (a task per request) and Starlette copies the
context into the thread pool that runs ``def`` endpoints, so the id follows
the request across threads. A DIMSE association runs on a thread of its own,
which starts with an empty context.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

__all__ = ["association_id", "new_id", "request_id", "valid_request_id"]

#: The HTTP request being served (``X-Request-ID``), else None.
request_id: ContextVar[str | None] = ContextVar("dicomhub_request_id", default=None)
#: The DIMSE association being served, else None.
association_id: ContextVar[str | None] = ContextVar("dicomhub_association_id", default=None)

# What a client may pass as X-Request-ID: it ends up in log lines and a
# response header, so nothing that could forge a line or a header.
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_id() -> str:
    """A fresh id: 16 hex digits (64 random bits, unique enough to grep a day of logs)."""
    return secrets.token_hex(8)


def valid_request_id(text: str | None) -> str | None:
    """``text`` when it is usable as a request id (1-128 of ``A-Za-z0-9._:-``), else None.

    Parameters
    ----------
    text : str or None
        The ``X-Request-ID`` header a client sent, if any.

    Returns
    -------
    str or None
        The id to adopt, or None to generate one.
    """
    if text and _VALID.fullmatch(text):
        return text
    return None

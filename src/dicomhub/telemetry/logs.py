"""Log records for a terminal (text) or a log shipper (JSON lines).

One handler on the root logger, writing to standard error, with a
:class:`ContextFilter` that puts the HTTP request id or the DIMSE
association id on every record. ``extra={"fields": {...}}`` adds structured
fields to a record: the JSON formatter writes them as keys of the line, the
text formatter only shows the message (which says the same in words).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal

from dicomhub.telemetry.context import association_id, request_id

__all__ = [
    "LOG_FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")

# Attributes every LogRecord has: the JSON formatter leaves them out of the
# line unless it names them itself.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "ids", "fields"}


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``association_id`` and ``ids`` (their text form) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        req = getattr(record, "request_id", None) or request_id.get()
        assoc = getattr(record, "association_id", None) or association_id.get()
        record.request_id = req
        record.association_id = assoc
        ids = ""
        if req:
            ids += f" req={req}"
        if assoc:
            ids += f" assoc={assoc}"
        record.ids = ids
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [pid] req=... assoc=...: message``, for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d]%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "ids"):
            record.ids = ""  # a record that did not pass through ContextFilter
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (Loki, Elasticsearch, journald).

    Keys: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
    ``process``, ``thread``, ``message``, ``request_id`` / ``association_id``
    when set, ``exception`` (the formatted traceback) when there is one, and
    the record's ``fields`` and any other ``extra`` values.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key in ("request_id", "association_id"):
            value = getattr(record, key, None)
            if value:
                line[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            line.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in line and key not in ("request_id", "association_id"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a value JSON has no type for (a Path, a UID) is still written.
        return json.dumps(line, default=str, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (to find it again)."""


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every log record to standard error in ``log_format``, at ``level`` and above.

    Parameters
    ----------
    level : str
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (unknown names mean INFO).
    log_format : str
        ``text`` (for a terminal) or ``json`` (one object per line).

    Notes
    -----
    Replaces the handler an earlier call installed, so that calling it again
    never doubles lines; handlers others installed (a test runner's) stay. Python warnings
    are routed through logging, so that a JSON log stays all JSON.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _OurHandler):
            root.removeHandler(existing)
    handler = _OurHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)
    # pynetdicom logs every PDU at INFO; keep it at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

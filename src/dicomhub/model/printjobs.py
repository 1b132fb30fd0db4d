"""Print jobs as the archive keeps them: what each printed N-ACTION produced (PS3.4 H.4.5).

A job is written once, complete, after its films and its PDF are rendered
and stored.  Without an operating-system printer its Execution Status is
``DONE`` when it can be seen; with one it is ``PRINTING`` until the printer
command has taken the PDF (``DONE``) or refused it (``FAILURE``, with the
command's message as ``status_info``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["ExecutionStatus", "PrintDocument", "PrintFilmRecord", "PrintJob", "PrinterStatus"]


class ExecutionStatus(Enum):
    """Execution Status (2100,0020) of a Print Job (PS3.3 C.13.8)."""

    PENDING = "PENDING"
    PRINTING = "PRINTING"
    DONE = "DONE"
    FAILURE = "FAILURE"


@dataclass(frozen=True)
class PrinterStatus:
    """Printer Status (2110,0010) and Printer Status Info (2110,0020) (PS3.3 C.13.9)."""

    status: str = "NORMAL"  # NORMAL, WARNING, FAILURE
    info: str = "NORMAL"


@dataclass(frozen=True)
class PrintFilmRecord:
    """One film of a job: its film box, its picture (a blob) and its size in pixels."""

    number: int
    film_box_uid: str
    film_box: Mapping[str, str]
    images: int
    width: int
    height: int
    blob_key: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "film_box_uid": self.film_box_uid,
            "images": self.images,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "sha256": self.sha256,
            **{key: value for key, value in self.film_box.items()},
        }


@dataclass(frozen=True)
class PrintDocument:
    """The job's PDF (one page per film) as a blob."""

    blob_key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PrintJob:
    """A print job: the Print Job SOP Instance UID is its ``job_id``."""

    job_id: str
    state: ExecutionStatus
    calling_ae_title: str
    film_session_uid: str
    film_session: Mapping[str, str]
    color: bool
    created_at: dt.datetime
    films: tuple[PrintFilmRecord, ...]
    pdf: PrintDocument | None = None
    status_info: str | None = None
    archived_sop_instance_uid: str | None = None

    def as_json(self) -> dict[str, object]:
        """As ``GET /print/jobs`` and ``dicomhub print-jobs --json`` show it."""
        return {
            "id": self.job_id,
            "state": self.state.value,
            "source_ae": self.calling_ae_title,
            "film_session_uid": self.film_session_uid,
            "film_session": dict(self.film_session),
            "color": self.color,
            "created_at": self.created_at.isoformat(),
            "films": [film.as_json() for film in self.films],
            "pdf": None if self.pdf is None else {"size": self.pdf.size, "sha256": self.pdf.sha256},
            "status_info": self.status_info,
            "archived_sop_instance_uid": self.archived_sop_instance_uid,
        }

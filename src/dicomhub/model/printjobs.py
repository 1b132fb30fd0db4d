"""Print jobs as the archive keeps them: what each printed N-ACTION produced (PS3.4 H.4.5).

A job is written once, complete, after its films are rendered, so its
Execution Status is ``DONE`` when it can be seen; ``FAILURE`` is kept for jobs
a later printer back end could not print.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["ExecutionStatus", "PrintFilmRecord", "PrintJob"]


class ExecutionStatus(Enum):
    """Execution Status (2100,0020) of a Print Job (PS3.3 C.13.8)."""

    PENDING = "PENDING"
    PRINTING = "PRINTING"
    DONE = "DONE"
    FAILURE = "FAILURE"


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
        }

"""The repository of print jobs (tables in :mod:`dicomhub.index.schema.printing`).

A job and its films are inserted in one transaction: a job is listed with all
its films or not at all.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import print_film, print_job
from dicomhub.model.printjobs import ExecutionStatus, PrintDocument, PrintFilmRecord, PrintJob

__all__ = ["PrintJobRepository"]


class PrintJobRepository:
    """Print jobs in the index."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, job: PrintJob) -> None:
        """Insert `job` with its films, in one transaction."""
        with engines.write(self.engine) as conn:
            result = conn.execute(
                insert(print_job).values(
                    job_id=job.job_id,
                    state=job.state.value,
                    calling_ae_title=job.calling_ae_title[:16],
                    film_session_uid=job.film_session_uid,
                    film_session=json.dumps(dict(job.film_session)),
                    color=job.color,
                    created_at=job.created_at,
                    pdf_blob_key=None if job.pdf is None else job.pdf.blob_key,
                    pdf_size=None if job.pdf is None else job.pdf.size,
                    pdf_sha256=None if job.pdf is None else job.pdf.sha256,
                    status_info=job.status_info,
                    archived_sop_instance_uid=job.archived_sop_instance_uid,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            conn.execute(
                insert(print_film),
                [
                    {
                        "job_pk": int(key[0]),
                        "number": film.number,
                        "film_box_uid": film.film_box_uid,
                        "film_box": json.dumps(dict(film.film_box)),
                        "images": film.images,
                        "width": film.width,
                        "height": film.height,
                        "blob_key": film.blob_key,
                        "size": film.size,
                        "sha256": film.sha256,
                    }
                    for film in job.films
                ],
            )

    @staticmethod
    def _load(conn: Connection, row: Any) -> PrintJob:
        films = conn.execute(
            select(print_film).where(print_film.c.job_pk == row.pk).order_by(print_film.c.number)
        ).all()
        return PrintJob(
            job_id=row.job_id,
            state=ExecutionStatus(row.state),
            calling_ae_title=row.calling_ae_title,
            film_session_uid=row.film_session_uid,
            film_session=json.loads(row.film_session),
            color=bool(row.color),
            created_at=row.created_at,
            films=tuple(
                PrintFilmRecord(
                    number=film.number,
                    film_box_uid=film.film_box_uid,
                    film_box=json.loads(film.film_box),
                    images=film.images,
                    width=film.width,
                    height=film.height,
                    blob_key=film.blob_key,
                    size=film.size,
                    sha256=film.sha256,
                )
                for film in films
            ),
            pdf=(
                None
                if row.pdf_blob_key is None
                else PrintDocument(row.pdf_blob_key, int(row.pdf_size), str(row.pdf_sha256))
            ),
            status_info=row.status_info,
            archived_sop_instance_uid=row.archived_sop_instance_uid,
        )

    def set_state(self, job_id: str, state: ExecutionStatus, status_info: str | None = None) -> None:
        """Record what the printer made of a job (``status_info``: why it failed)."""
        with engines.write(self.engine) as conn:
            conn.execute(
                update(print_job)
                .where(print_job.c.job_id == job_id)
                .values(state=state.value, status_info=status_info)
            )

    def set_archived(self, job_id: str, sop_instance_uid: str) -> None:
        """Record the Encapsulated PDF instance a job was archived as."""
        with engines.write(self.engine) as conn:
            conn.execute(
                update(print_job)
                .where(print_job.c.job_id == job_id)
                .values(archived_sop_instance_uid=sop_instance_uid)
            )

    def get(self, job_id: str) -> PrintJob | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(select(print_job).where(print_job.c.job_id == job_id)).first()
            return None if row is None else self._load(conn, row)

    def jobs(self, limit: int = 100) -> list[PrintJob]:
        """The newest `limit` jobs, newest first."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(print_job).order_by(print_job.c.created_at.desc(), print_job.c.pk.desc()).limit(limit)
            ).all()
            return [self._load(conn, row) for row in rows]

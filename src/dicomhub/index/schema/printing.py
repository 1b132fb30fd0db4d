"""Print jobs (PS3.4 H): one row per printed N-ACTION and one per film it printed.

``print_job`` is written with its ``print_film`` rows in one transaction once
the films are rendered and their pictures stored, so a job is never half
there; ``print_film.blob_key`` names the PNG in the blob store and
``print_job.pdf_blob_key`` the job's PDF.  ``state`` and ``status_info`` change
afterwards only when an operating-system printer reports back.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["print_film", "print_job"]

print_job = Table(
    "print_job",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, unique=True),  # the Print Job SOP Instance UID
    Column("state", String(16), nullable=False),  # Execution Status: PENDING, PRINTING, DONE, FAILURE
    Column("calling_ae_title", String(16), nullable=False),
    Column("film_session_uid", String(64), nullable=False),
    Column("film_session", Text, nullable=False),  # JSON: copies, priority, medium, label
    Column("color", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # The job's PDF (one page per film); NULL for jobs printed before PDFs were made.
    Column("pdf_blob_key", String(64), nullable=True),
    Column("pdf_size", Integer, nullable=True),
    Column("pdf_sha256", String(64), nullable=True),
    # Why a job FAILED (the operating-system printer's message), else NULL.
    Column("status_info", Text, nullable=True),
    # The Encapsulated PDF instance the job was archived as, if archiving is on.
    Column("archived_sop_instance_uid", String(64), nullable=True),
    Index("ix_print_job_created", "created_at"),
)

print_film = Table(
    "print_film",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_pk", PK, ForeignKey("print_job.pk", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),  # 1-based, in print order
    Column("film_box_uid", String(64), nullable=False),
    Column("film_box", Text, nullable=False),  # JSON: layout, film size, orientation, densities...
    Column("images", Integer, nullable=False),  # image boxes with an image
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("blob_key", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Index("ix_print_film_job", "job_pk", "number", unique=True),
)

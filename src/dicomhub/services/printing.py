"""Print Management use cases: a printed film session or film box becomes a print job.

The DIMSE provider keeps the association's print session
(:class:`~dicomhub.model.printing.PrintSession`); when the SCU prints, it
hands the films here.  Each film is rendered to a PNG
(:mod:`dicomhub.services.printrender`) and a page of the job's PDF
(:mod:`dicomhub.services.printpdf`), all written to the blob store (durable),
and only then is the job indexed with all its films in one transaction, so
the N-ACTION is answered Success only for a job that is complete and
durable.  If anything fails on the way, the pictures already written are
removed and no job is listed.

With an operating-system printer configured (:mod:`dicomhub.services.osprinter`)
a job is stored ``PENDING`` and :meth:`PrintService.forward` hands its PDF to
the printer after the modality has its answer, recording ``PRINTING``, then
``DONE`` or ``FAILURE``; the printer's status follows the last attempt (``FAILURE`` /
``PRINTER DOWN`` after a failed one, ``NORMAL`` after one that worked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Sequence

from dicomhub.errors import NotFound
from dicomhub.index.printing import PrintJobRepository
from dicomhub.model.access import Action
from dicomhub.model.caller import Caller
from dicomhub.model.printing import PrintedFilm, PrintSession
from dicomhub.model.printjobs import (
    ExecutionStatus,
    PrintDocument,
    PrinterStatus,
    PrintFilmRecord,
    PrintJob,
)
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import Forbidden
from dicomhub.services.osprinter import OsPrinter
from dicomhub.services.printarchive import PrintArchive
from dicomhub.services.printpdf import FilmPdf
from dicomhub.services.printrender import render_film, to_png
from dicomhub.storage.base import BlobStore

__all__ = ["PrintService"]

LOGGER = logging.getLogger("dicomhub.printing")


class PrintService:
    """Print jobs: made from printed films, listed, their films read back.

    Parameters
    ----------
    repository : PrintJobRepository
    blobs : BlobStore
        Where the film pictures go.
    dpi : int
        Resolution films are rendered at (pixels per inch of the film size).
    printer : OsPrinter, optional
        Where each job's PDF is printed after the print is answered.
    archive : PrintArchive, optional
        Where each job's PDF is also stored as an Encapsulated PDF instance,
        before the print is answered.
    """

    def __init__(
        self,
        repository: PrintJobRepository,
        blobs: BlobStore,
        dpi: int = 150,
        printer: OsPrinter | None = None,
        archive: PrintArchive | None = None,
    ) -> None:
        self._repository = repository
        self._blobs = blobs
        self.dpi = dpi
        self._printer = printer
        self._archive = archive
        self._status = PrinterStatus()
        self._status_lock = threading.Lock()

    def new_session(self) -> PrintSession:
        """A print session for one association, at this service's resolution."""
        return PrintSession(self.dpi)

    def print_films(
        self, films: Sequence[PrintedFilm], calling_ae_title: str, film_session_uid: str
    ) -> PrintJob:
        """Render, store and index `films` as one print job.

        Raises
        ------
        StorageError
            When a picture cannot be written (nothing is indexed then).
        """
        written: list[str] = []
        records: list[PrintFilmRecord] = []
        pdf = FilmPdf()
        try:
            for number, film in enumerate(films, start=1):
                picture = render_film(film.film_box, film.color, self.dpi)
                pdf.add_film(picture, film.film_box.film_size_id, film.film_box.film_orientation)
                data = to_png(picture)
                key = self._blobs.new_key()
                sha256 = hashlib.sha256(data).hexdigest()
                info = self._blobs.put(key, data, sha256)
                written.append(key)
                records.append(
                    PrintFilmRecord(
                        number=number,
                        film_box_uid=film.film_box.sop_instance_uid,
                        film_box=film.film_box.attributes(),
                        images=sum(1 for image in film.film_box.image_boxes if image.image is not None),
                        width=picture.width,
                        height=picture.height,
                        blob_key=key,
                        size=info.size,
                        sha256=sha256,
                    )
                )
            data = pdf.finish()
            document = self._put(data, written)
            created_at = utc_now()
            archived = (
                None
                if self._archive is None
                # An archived PDF whose job then fails to be indexed stays: it is a whole
                # object of its own, found like any other.
                else self._archive.store(data, films, calling_ae_title, created_at)
            )
            job = PrintJob(
                job_id=f"2.25.{uuid.uuid4().int}",
                state=ExecutionStatus.DONE if self._printer is None else ExecutionStatus.PENDING,
                calling_ae_title=calling_ae_title,
                film_session_uid=film_session_uid,
                film_session=dict(films[0].film_session) if films else {},
                color=any(film.color for film in films),
                created_at=created_at,
                films=tuple(records),
                pdf=document,
                archived_sop_instance_uid=archived,
            )
            self._repository.add(job)
        except BaseException:
            for key in written:
                try:
                    self._blobs.delete(key)
                except Exception:  # noqa: BLE001 - garbage for reconciliation; the job is what matters
                    LOGGER.warning("film picture %s of a failed print job not removed", key)
            raise
        LOGGER.info("print job %s from %s: %d film(s)", job.job_id, calling_ae_title, len(records))
        return job

    def printer_status(self) -> PrinterStatus:
        """The printer's status as the Printer SOP Instance reports it (N-GET, N-EVENT-REPORT)."""
        with self._status_lock:
            return self._status

    def forward(self, job: PrintJob, started: Callable[[PrintJob], None] | None = None) -> PrintJob:
        """Print a ``PENDING`` job's PDF on the operating-system printer; the job as it ends.

        The job is ``PRINTING`` while the command runs (`started` is called with it
        then); a failure is recorded on the job (``FAILURE`` with the reason as
        ``status_info``) and in the printer's status.  Raises only what `started`
        raises, and then only once the job has been printed.
        """
        if self._printer is None or job.state is not ExecutionStatus.PENDING or job.pdf is None:
            return job
        printing = dataclasses.replace(job, state=ExecutionStatus.PRINTING)
        try:
            self._repository.set_state(job.job_id, ExecutionStatus.PRINTING)
        except Exception:  # noqa: BLE001 - printing matters more than this intermediate state
            LOGGER.exception("print job %s: state PRINTING not recorded", job.job_id)
        try:
            if started is not None:
                started(printing)
        except BaseException:
            self._print(job)  # the job is printed even when telling about it failed
            raise
        return self._print(job)

    def _print(self, job: PrintJob) -> PrintJob:
        assert self._printer is not None and job.pdf is not None
        try:
            reason = self._printer.print_pdf(self._blobs.read(job.pdf.blob_key))
        except Exception as exc:  # noqa: BLE001 - the PDF could not be read: the job failed
            reason = f"the job's PDF could not be read: {exc}"
        state = ExecutionStatus.DONE if reason is None else ExecutionStatus.FAILURE
        with self._status_lock:
            self._status = PrinterStatus() if reason is None else PrinterStatus("FAILURE", "PRINTER DOWN")
        try:
            self._repository.set_state(job.job_id, state, reason)
        except Exception:  # noqa: BLE001 - the job stays PRINTING in the index; the log says why
            LOGGER.exception("print job %s: state %s not recorded", job.job_id, state.value)
        if reason is not None:
            LOGGER.warning("print job %s failed on the printer: %s", job.job_id, reason)
        return dataclasses.replace(job, state=state, status_info=reason)

    def _put(self, data: bytes, written: list[str]) -> PrintDocument:
        key = self._blobs.new_key()
        sha256 = hashlib.sha256(data).hexdigest()
        info = self._blobs.put(key, data, sha256)
        written.append(key)
        return PrintDocument(key, info.size, sha256)

    @staticmethod
    def _may_read(caller: Caller) -> None:
        # Films show any patient's images: reading them takes querying the whole archive.
        if not caller.access.study_filter(Action.QUERY).everything:
            raise Forbidden(f"{caller.who} may not read print jobs (needs query at the archive scope)")

    def jobs(self, caller: Caller, limit: int = 100) -> list[PrintJob]:
        """The newest print jobs, newest first."""
        self._may_read(caller)
        return self._repository.jobs(limit)

    def job(self, job_id: str, caller: Caller) -> PrintJob:
        """One job; raises NotFound."""
        self._may_read(caller)
        found = self._repository.get(job_id)
        if found is None:
            raise NotFound(f"no print job {job_id[:64]}")
        return found

    def job_status(self, job_id: str) -> PrintJob:
        """A job as the printing modality asks for it (Print Job N-GET): by its id alone.

        Its id is a random UID the modality got in the N-ACTION response; what
        the status tells (state, times, the calling AE) shows no image.
        """
        found = self._repository.get(job_id)
        if found is None:
            raise NotFound(f"no print job {job_id[:64]}")
        return found

    def job_pdf(self, job_id: str, caller: Caller) -> bytes:
        """The PDF of a job (one page per film, at the film's size); raises NotFound."""
        job = self.job(job_id, caller)
        if job.pdf is None:
            raise NotFound(f"print job {job_id[:64]} was printed before PDFs were kept")
        return self._blobs.read(job.pdf.blob_key)

    def film_png(self, job_id: str, number: int, caller: Caller) -> bytes:
        """The PNG of film `number` (1-based) of a job; raises NotFound."""
        job = self.job(job_id, caller)
        for film in job.films:
            if film.number == number:
                return self._blobs.read(film.blob_key)
        raise NotFound(f"print job {job_id[:64]} has no film {number}")

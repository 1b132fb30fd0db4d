"""Print Management SCP (PS3.4 Annex H): the Basic Grayscale and Color Print Management Meta SOP Classes.

ONE provider serves both meta SOP classes, rather than one per contained
class, because the contained classes share one state: the film session, its
film boxes and their image boxes live as long as the association, and a
film box is printed from image boxes set through another SOP class.  The
provider is made per association (:func:`~dicomhub.dimse.association.default_providers`
runs for each), so that state is the association's and goes with it: an
aborted session leaves nothing half printed.  The rules are
:class:`~dicomhub.model.printing.PrintSession`; a print becomes a job through
:class:`~dicomhub.services.printing.PrintService`.

Messages come on the meta SOP class's presentation context and name a
contained class (PS3.4 H.3.1): :meth:`serves` tells the association which.

N-EVENT-REPORT (PS3.4 H.4.4.1.1, H.4.6.1.1) goes out on the printing
association once the N-ACTION response has been sent: the Print Job's
Execution Status when it changes after the answer, which it does only when an
operating-system printer takes the job (``PENDING`` when answered, then event
2 *Printing*, then 3 *Done* or 4 *Failure*; without one a job is ``DONE``
when answered and nothing follows), only to an SCU whose Print Job SOP
Class context was accepted (it asked for job reports by proposing it), and
the Printer's status (1 *Normal*, 2 *Warning*, 3 *Failure*) on the meta SOP
class context whenever it differs from what this association was last told
(``NORMAL`` at first, as N-GET says).  A print SCU reads them while it waits
for its next response (DCMTK's ``DVPSPrintMessageHandler``) or as they come
(pynetdicom); they are not waited for.

==========================================================  ======
answer                                                      status
==========================================================  ======
a second film session on the association                    0x0111
a film box before any film session                          0x0117
a layout, film size, density, position... not supported     0x0106
N-SET of a film box attribute fixed at its N-CREATE         0x0105
an instance this association does not hold                  0x0112
an instance of another SOP class than the one named         0x0119
an image larger than its box with Magnification Type NONE   0xC603
print of a film session without film boxes                  0xC600
more than 100 film boxes in one film session                0x0213
print of a film box without images (empty page)             0xB603
print of a film session without images                      0xB602
an image larger than its box, demagnified                   0xB604
==========================================================  ======
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from dicomhub.dimse import status as S
from dicomhub.dimse.messages import NRequest, NResponse
from dicomhub.dimse.providers.base import Provider
from dicomhub.errors import DicomhubError, NotFound
from dicomhub.model.presentationlut import PRESENTATION_LUT, InvalidPresentationLut
from dicomhub.model.printing import (
    BASIC_COLOR_IMAGE_BOX,
    BASIC_COLOR_PRINT_MANAGEMENT_META,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    META_SOP_CLASSES,
    PRINT_JOB,
    PRINTER,
    PRINTER_INSTANCE,
    ClassInstanceConflict,
    DuplicatePrintInstance,
    ImageLargerThanBox,
    InvalidPrintAttribute,
    NoFilmBoxes,
    NoFilmSession,
    NoSuchPrintAttribute,
    PrintedFilm,
    PrintSession,
    PrintViolation,
    PrintWarning,
    ResourceLimitation,
)
from dicomhub.model.printjobs import ExecutionStatus, PrinterStatus, PrintJob
from dicomhub.services.access import Forbidden

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association
    from dicomhub.services.printing import PrintService

__all__ = ["PRINT_STATUSES", "PrintManagementProvider"]

LOGGER = logging.getLogger("dicomhub.dimse")

NO_FILM_BOXES: Final = 0xC600  # PS3.4 H.4.1.2.4.2
IMAGE_LARGER_THAN_BOX: Final = 0xC603  # PS3.4 H.4.3.1.2.1.2
RESOURCE_LIMITATION: Final = 0x0213  # PS3.7 C.4.5 (N-CREATE)
EMPTY_FILM_SESSION: Final = 0xB602
EMPTY_FILM_BOX: Final = 0xB603
IMAGE_DEMAGNIFIED: Final = 0xB604

_PRINT_ACTION: Final = 1  # PS3.4 H.4.1.2.4 / H.4.2.2.4: Action Type ID 1 = Print

# Most specific first: the first class the error is an instance of decides.
_STATUSES: tuple[tuple[type[DicomhubError], int], ...] = (
    (Forbidden, S.NOT_AUTHORIZED),
    (DuplicatePrintInstance, S.DUPLICATE_SOP_INSTANCE),
    (NoFilmSession, S.INVALID_OBJECT_INSTANCE),
    (ClassInstanceConflict, S.CLASS_INSTANCE_CONFLICT),
    (ImageLargerThanBox, IMAGE_LARGER_THAN_BOX),
    (NoFilmBoxes, NO_FILM_BOXES),
    (ResourceLimitation, RESOURCE_LIMITATION),
    (NoSuchPrintAttribute, S.NO_SUCH_ATTRIBUTE),
    (InvalidPrintAttribute, S.INVALID_ATTRIBUTE_VALUE),
    (InvalidPresentationLut, S.INVALID_ATTRIBUTE_VALUE),
    (NotFound, S.NO_SUCH_SOP_INSTANCE),
)

_WARNINGS: Final = {
    PrintWarning.EMPTY_FILM_BOX: EMPTY_FILM_BOX,
    PrintWarning.EMPTY_FILM_SESSION: EMPTY_FILM_SESSION,
    PrintWarning.IMAGE_DEMAGNIFIED: IMAGE_DEMAGNIFIED,
}

#: For the conformance statement: (status, meaning, cause) of every answer on purpose.
PRINT_STATUSES: tuple[tuple[int, str, str], ...] = (
    (S.SUCCESS, "Success", "session, film box created; image box set; film(s) printed to a print job"),
    (EMPTY_FILM_SESSION, "Warning", "print of a film session whose film boxes hold no image"),
    (EMPTY_FILM_BOX, "Warning", "print of a film box holding no image (empty page)"),
    (IMAGE_DEMAGNIFIED, "Warning", "image larger than its image box: demagnified to fit"),
    (S.DUPLICATE_SOP_INSTANCE, "Duplicate SOP Instance", "a second film session on one association"),
    (S.INVALID_OBJECT_INSTANCE, "Invalid Object Instance", "a film box before any film session"),
    (
        S.INVALID_ATTRIBUTE_VALUE,
        "Invalid Attribute Value",
        "layout, film size, orientation, density, polarity, magnification, position, image or "
        "Presentation LUT not supported",
    ),
    (
        S.NO_SUCH_ATTRIBUTE,
        "No Such Attribute",
        "N-SET of a film box attribute fixed at N-CREATE (layout, film size, orientation...)",
    ),
    (S.NO_SUCH_SOP_INSTANCE, "No Such SOP Instance", "an instance the association does not hold"),
    (S.CLASS_INSTANCE_CONFLICT, "Class-Instance Conflict", "an instance of another SOP class"),
    (IMAGE_LARGER_THAN_BOX, "Failure", "image larger than its box with Magnification Type NONE"),
    (NO_FILM_BOXES, "Failure", "print of a film session without film boxes"),
    (RESOURCE_LIMITATION, "Resource Limitation", "more than 100 film boxes in one film session"),
    (S.NO_SUCH_ACTION, "No Such Action", "an Action Type ID other than 1 (Print)"),
    (S.PROCESSING_FAILURE, "Processing Failure", "the job could not be stored"),
)

# Event Type IDs of the Print Job (PS3.4 H.4.6.1.1) and Printer (H.4.4.1.1) reports.
JOB_EVENTS: Final = {
    ExecutionStatus.PENDING: 1,
    ExecutionStatus.PRINTING: 2,
    ExecutionStatus.DONE: 3,
    ExecutionStatus.FAILURE: 4,
}
PRINTER_EVENTS: Final = {"NORMAL": 1, "WARNING": 2, "FAILURE": 3}

# Printer attributes answered to N-GET (PS3.3 C.13.9); the status is the service's.
_PRINTER_ATTRIBUTES: Final = {
    "PrinterName": "DICOMHUB",
    "Manufacturer": "dicomhub",
    "ManufacturerModelName": "dicomhub print SCP",
    "DeviceSerialNumber": "",
    "SoftwareVersions": "",
}


def _refusal(exc: DicomhubError) -> NResponse:
    code = next((c for kind, c in _STATUSES if isinstance(exc, kind)), S.PROCESSING_FAILURE)
    tags = exc.tags if isinstance(exc, PrintViolation | InvalidPresentationLut) and exc.tags else None
    return NResponse(code, error_comment=str(exc)[:64], attribute_identifier_list=tags)


class PrintManagementProvider(Provider):
    """Print SCP for one association on :class:`PrintService`.

    Parameters
    ----------
    service : PrintService
    authorize : callable, optional
        Raises :class:`Forbidden` when the calling peer may not print (checked
        at the film session's creation and at each print).
    """

    # The Print Job SOP Class is in neither meta SOP class: negotiated on its own (PS3.4 H.4.6).
    # So are the Print Job and Presentation LUT SOP Classes (PS3.4 H.4.6, H.4.9).
    sop_classes = frozenset({*META_SOP_CLASSES, PRINT_JOB, PRESENTATION_LUT})
    name: ClassVar[str] = "print management"

    def __init__(self, service: PrintService, authorize: Callable[[], None] | None = None) -> None:
        self._service = service
        self._authorize = authorize or (lambda: None)
        self._session: PrintSession | None = None
        self._printer_told = PrinterStatus()  # what this association last heard (N-GET says NORMAL)

    @property
    def session(self) -> PrintSession:
        """This association's print session, made at its first use."""
        if self._session is None:
            self._session = self._service.new_session()
        return self._session

    def serves(self, abstract_syntax: str, sop_class_uid: str) -> bool:
        if abstract_syntax in (PRINT_JOB, PRESENTATION_LUT):
            return sop_class_uid == abstract_syntax
        return sop_class_uid in META_SOP_CLASSES.get(abstract_syntax, ())

    @staticmethod
    def _color(request: NRequest, assoc: Association) -> bool:
        context = assoc.contexts.get(request.context_id)
        return context is not None and context.abstract_syntax == BASIC_COLOR_PRINT_MANAGEMENT_META

    # -- N-GET: the Printer ---------------------------------------------------

    def n_get(self, assoc: Association, request: NRequest) -> NResponse:
        if request.sop_class_uid == PRINT_JOB:
            return self._print_job(request)
        if request.sop_class_uid != PRINTER:
            return NResponse(S.UNRECOGNIZED_OPERATION, error_comment="N-GET is for the Printer only here")
        if request.sop_instance_uid != PRINTER_INSTANCE:
            return NResponse(S.NO_SUCH_SOP_INSTANCE, error_comment="the Printer is 1.2.840.10008.5.1.1.17")
        answer = Dataset()
        wanted = request.attribute_identifier_list
        printer = self._service.printer_status()
        self._printer_told = printer
        attributes = {
            "PrinterStatus": printer.status,
            "PrinterStatusInfo": printer.info,
            **_PRINTER_ATTRIBUTES,
        }
        for keyword, value in attributes.items():
            if not wanted or int(Tag(keyword)) in wanted:
                setattr(answer, keyword, value)
        return NResponse(S.SUCCESS, dataset=answer)

    def _print_job(self, request: NRequest) -> NResponse:
        """N-GET of a Print Job (PS3.4 H.4.6): its Execution Status; the id is its only key."""
        assert request.sop_instance_uid is not None
        try:
            job = self._service.job_status(request.sop_instance_uid)
        except DicomhubError as exc:
            return _refusal(exc)
        attributes = {
            "ExecutionStatus": job.state.value,
            "ExecutionStatusInfo": "NORMAL" if job.state.value != "FAILURE" else "UNKNOWN",
            "CreationDate": job.created_at.strftime("%Y%m%d"),
            "CreationTime": job.created_at.strftime("%H%M%S"),
            "PrintPriority": job.film_session.get("PrintPriority") or "MED",
            "PrinterName": _PRINTER_ATTRIBUTES["PrinterName"],
            "Originator": job.calling_ae_title,
        }
        answer = Dataset()
        wanted = request.attribute_identifier_list
        for keyword, value in attributes.items():
            if not wanted or int(Tag(keyword)) in wanted:
                setattr(answer, keyword, value)
        return NResponse(S.SUCCESS, dataset=answer)

    # -- N-CREATE -------------------------------------------------------------

    def n_create(self, assoc: Association, request: NRequest) -> NResponse:
        attributes = request.dataset if request.dataset is not None else Dataset()
        try:
            if request.sop_class_uid == PRESENTATION_LUT:
                lut = self.session.create_presentation_lut(request.sop_instance_uid, attributes)
                return NResponse(S.SUCCESS, sop_instance_uid=lut.sop_instance_uid, dataset=attributes)
            if request.sop_class_uid == BASIC_FILM_SESSION:
                self._authorize()
                session = self.session.create_film_session(request.sop_instance_uid, attributes)
                return NResponse(S.SUCCESS, sop_instance_uid=session.sop_instance_uid, dataset=attributes)
            if request.sop_class_uid == BASIC_FILM_BOX:
                box = self.session.create_film_box(
                    request.sop_instance_uid, attributes, self._color(request, assoc)
                )
        except DicomhubError as exc:
            LOGGER.warning("print N-CREATE from %s refused: %s", assoc.calling_ae, exc)
            return _refusal(exc)
        else:
            if request.sop_class_uid != BASIC_FILM_BOX:
                return NResponse(S.UNRECOGNIZED_OPERATION, error_comment="no N-CREATE for this SOP class")
        # PS3.4 H.4.2.2.1.2: the response names the image boxes the film box made.
        reply = Dataset()
        for element in attributes:
            reply[element.tag] = element
        reply.ImageDisplayFormat = box.image_display_format
        reply.FilmOrientation = box.film_orientation
        reply.FilmSizeID = box.film_size_id
        reply.MagnificationType = box.magnification_type
        reply.BorderDensity = box.border_density
        reply.EmptyImageDensity = box.empty_image_density
        reply.Trim = box.trim
        items = []
        for image in box.image_boxes:
            item = Dataset()
            item.ReferencedSOPClassUID = image.sop_class_uid
            item.ReferencedSOPInstanceUID = image.sop_instance_uid
            items.append(item)
        reply.ReferencedImageBoxSequence = DicomSequence(items)
        return NResponse(S.SUCCESS, sop_instance_uid=box.sop_instance_uid, dataset=reply)

    # -- N-SET ----------------------------------------------------------------

    def n_set(self, assoc: Association, request: NRequest) -> NResponse:
        assert request.sop_instance_uid is not None  # the association checked it
        modifications = request.dataset if request.dataset is not None else Dataset()
        try:
            if request.sop_class_uid == BASIC_FILM_SESSION:
                self.session.set_film_session(request.sop_instance_uid, modifications)
                return NResponse(S.SUCCESS)
            if request.sop_class_uid == BASIC_FILM_BOX:
                self.session.set_film_box(request.sop_instance_uid, modifications)
                return NResponse(S.SUCCESS)
            if request.sop_class_uid in (BASIC_GRAYSCALE_IMAGE_BOX, BASIC_COLOR_IMAGE_BOX):
                warning = self.session.set_image_box(
                    request.sop_class_uid, request.sop_instance_uid, modifications
                )
                if warning is not None:
                    return NResponse(_WARNINGS[warning], error_comment=warning.value[:64])
                return NResponse(S.SUCCESS)
        except DicomhubError as exc:
            LOGGER.warning("print N-SET from %s refused: %s", assoc.calling_ae, exc)
            return _refusal(exc)
        return NResponse(S.UNRECOGNIZED_OPERATION, error_comment="no N-SET for this SOP class")

    # -- N-ACTION: print ------------------------------------------------------

    def n_action(self, assoc: Association, request: NRequest) -> NResponse:
        assert request.sop_instance_uid is not None
        if request.sop_class_uid not in (BASIC_FILM_SESSION, BASIC_FILM_BOX):
            return NResponse(S.UNRECOGNIZED_OPERATION, error_comment="no N-ACTION for this SOP class")
        if request.action_type_id != _PRINT_ACTION:
            return NResponse(S.NO_SUCH_ACTION, error_comment="only Action Type ID 1 (Print)")
        color = self._color(request, assoc)
        films: list[PrintedFilm]
        try:
            if request.sop_class_uid == BASIC_FILM_SESSION:
                films, warning = self.session.print_film_session(request.sop_instance_uid, color)
            else:
                films, warning = self.session.print_film_box(request.sop_instance_uid, color)
            self._authorize()
            session = self.session.film_session
            assert session is not None
            job = self._service.print_films(films, assoc.calling_ae, session.sop_instance_uid)
        except DicomhubError as exc:
            LOGGER.warning("print N-ACTION from %s refused: %s", assoc.calling_ae, exc)
            return _refusal(exc)
        # PS3.4 H.4.2.2.4.2: the reply references the Print Job made.
        reply = Dataset()
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.1.14"
        item.ReferencedSOPInstanceUID = job.job_id
        reply.ReferencedPrintJobSequence = DicomSequence([item])
        after = self._after_print(assoc, request.context_id, job)
        if warning is not None:
            return NResponse(_WARNINGS[warning], dataset=reply, error_comment=warning.value[:64], after=after)
        return NResponse(S.SUCCESS, dataset=reply, after=after)

    # -- N-EVENT-REPORT: job and printer status --------------------------------

    def _after_print(self, assoc: Association, context_id: int, job: PrintJob) -> Callable[[], None]:
        """What follows the N-ACTION response: the job to the printer, and the reports."""
        job_context = next(
            (cid for cid, context in assoc.contexts.items() if context.abstract_syntax == PRINT_JOB), None
        )

        def report_job(state: PrintJob) -> None:
            if job_context is None:
                return  # the SCU did not negotiate the Print Job SOP Class: no job reports
            information = Dataset()
            information.ExecutionStatusInfo = (
                "NORMAL" if state.state is not ExecutionStatus.FAILURE else "UNKNOWN"
            )
            information.FilmSessionLabel = state.film_session.get("FilmSessionLabel", "")
            information.PrinterName = _PRINTER_ATTRIBUTES["PrinterName"]
            assoc.send_n_event_report(
                job_context, PRINT_JOB, state.job_id, JOB_EVENTS[state.state], information
            )

        def after() -> None:
            # A job is DONE when its N-ACTION is answered unless an operating-system
            # printer takes it: only then does its state change, and only changes are
            # reported (PENDING -> PRINTING -> DONE or FAILURE).  Transport errors go up
            # to the association loop, as for any message sent; forward() prints the
            # job whether or not the peer is still there to hear of it.
            final = self._service.forward(job, report_job)
            if final is not job:
                report_job(final)
            printer = self._service.printer_status()
            if printer != self._printer_told:
                self._printer_told = printer
                information = Dataset()
                information.PrinterStatusInfo = printer.info
                information.PrinterName = _PRINTER_ATTRIBUTES["PrinterName"]
                assoc.send_n_event_report(
                    context_id, PRINTER, PRINTER_INSTANCE, PRINTER_EVENTS[printer.status], information
                )

        return after

    # -- N-DELETE -------------------------------------------------------------

    def n_delete(self, assoc: Association, request: NRequest) -> NResponse:
        assert request.sop_instance_uid is not None
        try:
            if request.sop_class_uid == BASIC_FILM_SESSION:
                self.session.delete_film_session(request.sop_instance_uid)
            elif request.sop_class_uid == BASIC_FILM_BOX:
                self.session.delete_film_box(request.sop_instance_uid)
            elif request.sop_class_uid == PRESENTATION_LUT:
                self.session.delete_presentation_lut(request.sop_instance_uid)
            else:
                return NResponse(S.UNRECOGNIZED_OPERATION, error_comment="no N-DELETE for this SOP class")
        except DicomhubError as exc:
            return _refusal(exc)
        return NResponse(S.SUCCESS)

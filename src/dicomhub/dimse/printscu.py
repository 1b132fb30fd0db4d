"""Print SCU: one film session on a DICOM printer over the requestor engine.

The sequence of PS3.4 H.4 on one association of the Basic Grayscale (or Color)
Print Management Meta SOP Class:

1. N-GET of the Printer's status: a printer in FAILURE is not printed to;
2. N-CREATE Basic Film Session (copies, medium, destination);
3. per film: N-CREATE Basic Film Box (layout, film size, orientation), N-SET
   of each of its image boxes with the Preformatted Grayscale (or Color) Image
   Sequence, N-ACTION print on the film box, N-DELETE of the film box (DCMTK's
   ``dcmprscp`` keeps one film box at a time);
4. N-DELETE Basic Film Session, and release.

A failure status anywhere ends the session (the film session is deleted so
the printer prints nothing more) and raises
:class:`~dicomhub.model.printclient.PrinterRefused` with the status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomhub.dimse.requestor import Association, AssociationError, Response
from dicomhub.model.printclient import (
    FilmImage,
    FilmOutcome,
    Printer,
    PrinterRefused,
    PrintOutcome,
    PrintRequest,
)
from dicomhub.model.printing import (
    BASIC_COLOR_IMAGE_BOX,
    BASIC_COLOR_PRINT_MANAGEMENT_META,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    BASIC_GRAYSCALE_PRINT_MANAGEMENT_META,
    META_SOP_CLASSES,
    PRINTER,
    PRINTER_INSTANCE,
)

__all__ = ["DimseFilmPrinter", "is_success_or_warning"]

LOGGER = logging.getLogger("dicomhub.dimse.printscu")

_PRINTER_STATUS: Final = 0x21100010
_PRINTER_STATUS_INFO: Final = 0x21100020
_PRINT_ACTION: Final = 1  # N-ACTION Action Type ID "print" (PS3.4 H.4.1.2.4, H.4.2.2.4)
# PS3.4 H.4: the warnings of the print SOP classes (0xB6xx: e.g. 0xB605 "requested
# Min/Max Density outside the printer's range", 0xB603 "empty film box printed").
_WARNINGS: Final = frozenset({0x0001, 0x0107, 0x0116})


def is_success_or_warning(status: int) -> bool:
    """True for Success and the Warning statuses (PS3.7 C.1, C.2; PS3.4 H.4)."""
    return status == 0x0000 or status in _WARNINGS or 0xB000 <= status <= 0xBFFF


class DimseFilmPrinter:
    """Prints films on a DICOM printer; the :class:`~dicomhub.services.printclient.FilmPrinter`
    the composition root hands the print service.

    Parameters
    ----------
    calling_ae_title
        dicomhub's AE title on the association.
    timeout
        Seconds for connecting, for the A-ASSOCIATE-AC and for each response.
    """

    def __init__(
        self,
        calling_ae_title: str,
        timeout: float = 30.0,
        open_association: Callable[..., Association] = Association.open,
    ) -> None:
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout
        self._open = open_association

    def __call__(
        self, printer: Printer, request: PrintRequest, films: Sequence[Sequence[FilmImage]], color: bool
    ) -> PrintOutcome:
        meta = BASIC_COLOR_PRINT_MANAGEMENT_META if color else BASIC_GRAYSCALE_PRINT_MANAGEMENT_META
        where = f"printer {printer.name} ({printer.ae_title}@{printer.host}:{printer.port})"
        try:
            assoc = self._open(
                printer.host,
                printer.port,
                printer.ae_title,
                self.calling_ae_title,
                [(meta, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])],
                connect_timeout=self.timeout,
                acse_timeout=self.timeout,
                dimse_timeout=self.timeout,
            )
        except AssociationError as exc:
            raise PrinterRefused(f"{where}: {exc}") from exc
        assoc.context_classes.update({uid: meta for uid in META_SOP_CLASSES[meta]})
        try:
            if (
                assoc.accepted(meta, ExplicitVRLittleEndian) is None
                and assoc.accepted(meta, ImplicitVRLittleEndian) is None
            ):
                kind = "colour" if color else "grayscale"
                raise PrinterRefused(
                    f"{where} does not accept the Basic {kind} Print Management Meta SOP Class"
                )
            outcome = _Session(assoc, printer, request, color, where).run(films)
        except AssociationError as exc:
            assoc.abort()
            raise PrinterRefused(f"{where}: {exc}") from exc
        except PrinterRefused:
            if assoc.is_open:
                assoc.release(self.timeout)
            raise
        assoc.release(self.timeout)
        return outcome


class _Session:
    """One film session's requests on an open association."""

    def __init__(
        self, assoc: Association, printer: Printer, request: PrintRequest, color: bool, where: str
    ) -> None:
        self.assoc = assoc
        self.printer = printer
        self.request = request
        self.color = color
        self.where = where
        self.image_box_class = BASIC_COLOR_IMAGE_BOX if color else BASIC_GRAYSCALE_IMAGE_BOX

    def _check(self, what: str, response: Response) -> Response:
        if not is_success_or_warning(response.status):
            comment = f": {response.error_comment}" if response.error_comment else ""
            raise PrinterRefused(
                f"{self.where} refused {what} with status 0x{response.status:04X}{comment}", response.status
            )
        return response

    def _attributes(self, what: str, response: Response) -> Dataset:
        """The response's data set; a printer answering one that does not decode is refused."""
        try:
            return response.dataset or Dataset()
        except Exception as exc:  # noqa: BLE001 - pydicom's decoder raises anything on garbage
            raise PrinterRefused(
                f"{self.where} answered {what} with an undecodable data set: {exc!r}"
            ) from exc

    def run(self, films: Sequence[Sequence[FilmImage]]) -> PrintOutcome:
        printer_status = self._printer_status()
        response = self._check(
            "N-CREATE Basic Film Session",
            self.assoc.send_n_create(BASIC_FILM_SESSION, None, self._film_session()),
        )
        session_uid = response.command.sop_instance_uid
        if not session_uid:
            raise PrinterRefused(
                f"{self.where} named no Basic Film Session instance in its N-CREATE response"
            )
        try:
            outcomes = [self._film(number, session_uid, images) for number, images in enumerate(films, 1)]
        except PrinterRefused:
            # The session goes with what it holds: nothing half-built stays on the printer.
            self.assoc.send_n_delete(BASIC_FILM_SESSION, session_uid)
            raise
        self._check("N-DELETE Basic Film Session", self.assoc.send_n_delete(BASIC_FILM_SESSION, session_uid))
        return PrintOutcome(self.printer.name, session_uid, self.color, tuple(outcomes), printer_status)

    def _printer_status(self) -> str | None:
        response = self.assoc.send_n_get(PRINTER, PRINTER_INSTANCE, (_PRINTER_STATUS, _PRINTER_STATUS_INFO))
        attributes = self._attributes("N-GET Printer", self._check("N-GET Printer", response))
        status = str(attributes.get("PrinterStatus", "") or "").strip().upper() or None
        info = str(attributes.get("PrinterStatusInfo", "") or "").strip()
        if status == "FAILURE":
            raise PrinterRefused(f"{self.where} reports Printer Status FAILURE ({info or 'no status info'})")
        return status

    def _film_session(self) -> Dataset:
        ds = Dataset()
        ds.NumberOfCopies = str(self.request.copies)
        ds.MediumType = self.request.medium
        if self.request.destination:
            ds.FilmDestination = self.request.destination
        return ds

    def _film(self, number: int, session_uid: str, images: Sequence[FilmImage]) -> FilmOutcome:
        box = Dataset()
        box.ImageDisplayFormat = self.request.layout
        box.FilmOrientation = self.request.orientation
        box.FilmSizeID = self.request.film_size
        reference = Dataset()
        reference.ReferencedSOPClassUID = BASIC_FILM_SESSION
        reference.ReferencedSOPInstanceUID = session_uid
        box.ReferencedFilmSessionSequence = DicomSequence([reference])
        response = self._check("N-CREATE Basic Film Box", self.assoc.send_n_create(BASIC_FILM_BOX, None, box))
        film_box_uid = response.command.sop_instance_uid
        created = self._attributes("N-CREATE Basic Film Box", response)
        image_boxes = [
            str(item.get("ReferencedSOPInstanceUID", "") or "")
            for item in created.get("ReferencedImageBoxSequence", None) or []
        ]
        if not all(image_boxes):
            raise PrinterRefused(f"{self.where} named an image box without its SOP Instance UID")
        if not film_box_uid or len(image_boxes) < len(images):
            raise PrinterRefused(
                f"{self.where} created a film box with {len(image_boxes)} image box(es) "
                f"for {len(images)} image(s)"
            )
        for position, (image_box_uid, image) in enumerate(zip(image_boxes, images, strict=False), 1):
            self._check(
                f"N-SET of image box {position}",
                self.assoc.send_n_set(self.image_box_class, image_box_uid, self._image_box(position, image)),
            )
        printed = self._check(
            "N-ACTION print", self.assoc.send_n_action(BASIC_FILM_BOX, film_box_uid, _PRINT_ACTION, None)
        )
        warning = None
        if printed.status != 0:
            warning = f"0x{printed.status:04X}" + (
                f": {printed.error_comment}" if printed.error_comment else ""
            )
        self._check("N-DELETE Basic Film Box", self.assoc.send_n_delete(BASIC_FILM_BOX, film_box_uid))
        LOGGER.info("film %d printed on %s: %d image(s)", number, self.where, len(images))
        return FilmOutcome(
            number, film_box_uid, tuple(i.sop_instance_uid for i in images), printed.status, warning
        )

    def _image_box(self, position: int, image: FilmImage) -> Dataset:
        picture = Dataset()
        picture.SamplesPerPixel = 3 if image.color else 1
        picture.PhotometricInterpretation = "RGB" if image.color else "MONOCHROME2"
        if image.color:
            picture.PlanarConfiguration = 0
        picture.Rows = image.rows
        picture.Columns = image.columns
        picture.PixelAspectRatio = [1, 1]
        picture.BitsAllocated = 8
        picture.BitsStored = 8
        picture.HighBit = 7
        picture.PixelRepresentation = 0
        picture.add_new(0x7FE00010, "OB", image.pixels)  # 8 bits: OB (PS3.5 A.2)
        ds = Dataset()
        ds.ImageBoxPosition = position
        if image.color:
            ds.BasicColorImageSequence = DicomSequence([picture])
        else:
            ds.BasicGrayscaleImageSequence = DicomSequence([picture])
        return ds

"""Print SCU use case: print a study, series or some instances to a configured DICOM printer.

The service finds the instances the caller may read, renders each as the
WADO-RS rendered resource does (:func:`dicomhub.services.display.to_display`:
Modality LUT, the header's VOI window, MONOCHROME1 inverted), scales an image
larger than its image box down to fit, groups the images into films of the
requested layout and hands them to a :class:`FilmPrinter` (the DIMSE requestor,
injected by the composition root, since services know no protocol).

References
----------
PS3.4 H.4 (the Print Management SOP classes); PS3.3 C.13.5 (Preformatted
Grayscale and Color Image Sequences: 8 bits, MONOCHROME2 or RGB).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.printclient import (
    FilmImage,
    Printer,
    PrinterRefused,
    PrintOutcome,
    PrintRequest,
    check_print_request,
)
from dicomhub.model.printing import MAXIMUM_FILM_BOXES, film_pixels, layout_boxes
from dicomhub.model.records import InstanceRow
from dicomhub.services.display import Window, to_display
from dicomhub.services.wado import CannotDecode, WadoService

__all__ = ["MAXIMUM_FILMS", "FilmPrinter", "PrintClientService", "box_pixels", "fit_to_box"]

LOGGER = logging.getLogger("dicomhub.services.printclient")

Array = np.ndarray[Any, Any]

#: Films one request may print: as many film boxes as one film session of dicomhub's own
#: Print SCP holds, and a bound on the images rendered in memory for one request.
MAXIMUM_FILMS = MAXIMUM_FILM_BOXES


class FilmPrinter(Protocol):
    """Prints films on a DICOM printer in one film session (the DIMSE requestor).

    Raises :class:`~dicomhub.model.printclient.PrinterRefused` when the printer
    cannot be reached, reports a Failure status or refuses a request.
    """

    def __call__(
        self, printer: Printer, request: PrintRequest, films: Sequence[Sequence[FilmImage]], color: bool
    ) -> PrintOutcome: ...


def box_pixels(request: PrintRequest, dpi: int) -> tuple[int, int]:
    """Columns and rows of the smallest image box of ``request``'s films at ``dpi``."""
    width, height = film_pixels(request.film_size, request.orientation, dpi)
    boxes = layout_boxes(request.layout)
    columns = min(round((right - left) * width) for left, _t, right, _b in boxes)
    rows = min(round((bottom - top) * height) for _l, top, _r, bottom in boxes)
    return max(1, columns), max(1, rows)


def fit_to_box(display: Array, box: tuple[int, int]) -> Array:
    """``display`` scaled down (aspect ratio kept) when larger than ``box`` (columns, rows)."""
    rows, columns = display.shape[:2]
    scale = min(box[0] / columns, box[1] / rows)
    if scale >= 1.0:
        return display
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    image = Image.fromarray(np.ascontiguousarray(display, dtype=np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


class PrintClientService:
    """Print from the archive to the configured DICOM printers."""

    def __init__(
        self,
        wado: WadoService,
        printers: Sequence[Printer],
        film_printer: FilmPrinter,
        audit: AuditRecorder | None = None,
    ) -> None:
        self.wado = wado
        self.printers = {p.name: p for p in printers}
        self.film_printer = film_printer
        self.audit = audit

    def printer(self, name: str) -> Printer:
        """The configured printer ``name`` (also found by its AE title).

        Raises
        ------
        NotFound
            When no printer has that name.
        """
        found = self.printers.get(name) or next(
            (p for p in self.printers.values() if p.ae_title == name), None
        )
        if found is None:
            known = ", ".join(sorted(self.printers)) or "none is configured"
            raise NotFound(f"unknown printer {name!r} (printers: {known})")
        return found

    def print_instances(self, request: PrintRequest, caller: Caller) -> PrintOutcome:
        """Render and print the instances ``request`` names; one film per layout's worth.

        Raises
        ------
        InvalidRequest
            For a malformed request or an instance with no printable image.
        NotFound
            For an unknown printer, or a study, series or instance the caller
            cannot read.
        PrinterRefused
            When the printer cannot be reached or refuses (its status in the message).
        """
        request = check_print_request(request)
        printer = self.printer(request.printer)
        rows = self._rows(request, caller)
        if request.color and not printer.color:
            raise InvalidRequest(f"printer {printer.name!r} is not configured for colour")
        per_film = len(layout_boxes(request.layout))
        if -(-len(rows) // per_film) > MAXIMUM_FILMS:
            raise InvalidRequest(
                f"{len(rows)} images make more than {MAXIMUM_FILMS} films of {request.layout}: "
                "print fewer instances or a larger layout"
            )
        box = box_pixels(request, printer.dpi)
        displays = [(row.sop_instance_uid, self._display(row)) for row in rows]
        # Colour when asked, else when the printer takes it and some image has it.
        wanted = request.color if request.color is not None else any(d.ndim == 3 for _u, d in displays)
        color = printer.color and wanted
        images = [_film_image(uid, display, box, color) for uid, display in displays]
        films = [images[i : i + per_film] for i in range(0, len(images), per_film)]
        LOGGER.info(
            "printing %d image(s) on %d film(s) of %s to %s (%s)",
            len(images), len(films), request.layout, printer.name, printer,
        )  # fmt: skip
        try:
            outcome = self.film_printer(printer, request, films, color)
        except PrinterRefused as exc:
            self._audit(caller, request, printer, rows, AuditOutcome.MAJOR_FAILURE, str(exc))
            raise
        self._audit(caller, request, printer, rows, AuditOutcome.SUCCESS, None)
        return outcome

    def _audit(
        self,
        caller: Caller,
        request: PrintRequest,
        printer: Printer,
        rows: Sequence[InstanceRow],
        outcome: AuditOutcome,
        reason: str | None,
    ) -> None:
        # Films carry the images out of the archive: an Export (PS3.15 A.5.3.6) to the printer.
        if self.audit is None:
            return
        series = tuple(dict.fromkeys(row.series_instance_uid for row in rows))
        detail: dict[str, object] = {"destination": printer.ae_title, "printer": printer.name}
        if reason is not None:
            detail["reason"] = reason
        study = AuditedStudy(request.study, series_instance_uids=series, number_of_instances=len(rows))
        self.audit.record(AuditEvent(AuditAction.EXPORT, outcome, caller, (study,), detail))

    def _rows(self, request: PrintRequest, caller: Caller) -> list[InstanceRow]:
        if request.instances and len(request.instances) == 1:
            return self.wado.instances(caller, request.study, request.series, request.instances[0])
        rows = self.wado.instances(caller, request.study, request.series)
        if not request.instances:
            return rows
        by_uid = {row.sop_instance_uid: row for row in rows}
        missing = [uid for uid in request.instances if uid not in by_uid]
        if missing:
            raise NotFound(f"no instance {missing[0]} in study {request.study}")
        return [by_uid[uid] for uid in dict.fromkeys(request.instances)]

    def _display(self, row: InstanceRow) -> Array:
        try:
            src = self.wado.render_source(row)
        except (NotFound, CannotDecode) as exc:
            raise InvalidRequest(f"instance {row.sop_instance_uid} has no printable image: {exc}") from exc
        default = None
        if src.window_center is not None and src.window_width is not None and src.window_width >= 1:
            default = Window(src.window_center, src.window_width)
        return to_display(
            src.pixels,
            src.photometric_interpretation,
            rescale_slope=src.rescale_slope,
            rescale_intercept=src.rescale_intercept,
            default_window=default,
            bits_stored=src.bits_stored,
        )


def _film_image(sop_instance_uid: str, display: Array, box: tuple[int, int], color: bool) -> FilmImage:
    if display.ndim == 3 and not color:
        # A grey film gets the luminance (ITU-R 601-2, as Pillow's "L").
        display = np.asarray(Image.fromarray(display).convert("L"))
    display = fit_to_box(display, box)
    if color and display.ndim == 2:
        display = np.repeat(display[:, :, None], 3, axis=2)
    rows, columns = display.shape[:2]
    return FilmImage(sop_instance_uid, rows, columns, display.astype(np.uint8).tobytes(), color)

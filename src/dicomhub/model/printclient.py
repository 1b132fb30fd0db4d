"""Printing from dicomhub (the Print SCU side of PS3.4 Annex H): printers, requests, outcomes.

A :class:`Printer` is a DICOM printer of the configuration (``[printers.NAME]``
tables, or ``NAME=AET@HOST:PORT[:color]``). A :class:`PrintRequest` names what
to print (a study, one of its series, or some of its instances) and how
(Image Display Format, Film Size ID, orientation, copies, medium); the service
renders the images and hands one :class:`FilmImage` per image box to the DIMSE
requestor, which answers with a :class:`PrintOutcome` (one :class:`FilmOutcome`
per film).

References
----------
PS3.4 H.4 (Basic Film Session, Basic Film Box, Image Box, Printer SOP classes);
PS3.3 C.13 (Film Session, Film Box and Image Box Presentation modules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dicomhub.errors import ConfigurationError, Conflict, InvalidRequest
from dicomhub.model.printing import FILM_SIZES, layout_boxes

__all__ = [
    "FILM_ORIENTATIONS",
    "MEDIUM_TYPES",
    "FilmImage",
    "FilmOutcome",
    "PrintOutcome",
    "PrintRequest",
    "Printer",
    "PrinterRefused",
    "check_print_request",
    "parse_printer",
    "printers_table",
]

FILM_ORIENTATIONS: Final = ("PORTRAIT", "LANDSCAPE")
#: Medium Type (PS3.3 C.13.1): the defined terms.
MEDIUM_TYPES: Final = ("PAPER", "CLEAR FILM", "BLUE FILM", "MAMMO CLEAR FILM", "MAMMO BLUE FILM")
#: Number of Copies: PS3.3 C.13.1 sets no bound; DCMTK's tools allow 1 to 100.
MAXIMUM_COPIES: Final = 100
_DEFAULT_DPI: Final = 150
_TABLE_KEYS: Final = frozenset({"aet", "ae_title", "host", "port", "color", "dpi"})


class PrinterRefused(Conflict):
    """The printer cannot be reached, or answered a request with a failure status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Printer:
    """A DICOM printer (a Print SCP) dicomhub may print to.

    ``color``: the printer takes the Basic Color Print Management Meta SOP Class
    (colour images go there as RGB); else everything prints in grey.
    ``dpi``: the resolution the image boxes are sized at (images larger than their
    box are scaled down to it).
    """

    name: str
    ae_title: str
    host: str
    port: int
    color: bool = False
    dpi: int = _DEFAULT_DPI

    def __str__(self) -> str:
        suffix = ":color" if self.color else ""
        return f"{self.name}={self.ae_title}@{self.host}:{self.port}{suffix}"


def _printer(name: str, ae_title: str, host: str, port: int, color: bool, dpi: int, text: str) -> Printer:
    if not name or not ae_title or len(ae_title) > 16 or not host or not 0 < port < 65536:
        raise ConfigurationError(
            f"printer {text!r}: a name, an AE title of 1-16 characters, a host and a port"
        )
    if not 25 <= dpi <= 600:
        raise ConfigurationError(f"printer {text!r}: dpi must be from 25 to 600")
    return Printer(name, ae_title, host, port, color, dpi)


def parse_printer(text: str) -> Printer:
    """Parse ``NAME=AET@HOST:PORT`` with an optional ``:color`` at the end.

    Raises
    ------
    ConfigurationError
        For any other form.
    """
    name, sep, rest = text.partition("=")
    color = rest.lower().endswith(":color")
    if color:
        rest = rest[: -len(":color")]
    aet, at, address = rest.partition("@")
    host, colon, port = address.rpartition(":")
    if not sep or not at or not colon or not port.isdigit():
        raise ConfigurationError(f"printer {text!r} is not of the form NAME=AET@HOST:PORT[:color]")
    return _printer(name.strip(), aet.strip(), host.strip().strip("[]"), int(port), color, _DEFAULT_DPI, text)


def printers_table(value: Mapping[str, Any]) -> tuple[Printer, ...]:
    """``[printers.NAME]`` tables (keys ``aet``, ``host``, ``port``, ``color``, ``dpi``).

    Raises
    ------
    ConfigurationError
        For an unknown key, a missing one or a value of the wrong type.
    """
    printers = []
    for name, table in value.items():
        where = f"printers.{name}"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where}: expected a table of aet, host, port (color, dpi)")
        unknown = set(table) - _TABLE_KEYS
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        aet, host, port = table.get("aet", table.get("ae_title")), table.get("host"), table.get("port")
        color, dpi = table.get("color", False), table.get("dpi", _DEFAULT_DPI)
        if not isinstance(aet, str) or not isinstance(host, str):
            raise ConfigurationError(f"{where}: aet and host are strings")
        if (
            isinstance(port, bool)
            or not isinstance(port, int)
            or isinstance(dpi, bool)
            or not isinstance(dpi, int)
        ):
            raise ConfigurationError(f"{where}: port and dpi are integers")
        if not isinstance(color, bool):
            raise ConfigurationError(f"{where}: color is true or false")
        printers.append(_printer(name, aet, host, port, color, dpi, where))
    return tuple(printers)


@dataclass(frozen=True, slots=True)
class PrintRequest:
    """What to print and how: the instances of ``study`` (only ``series``, only
    ``instances`` when given), in films of ``layout`` (``STANDARD\\C,R``, ``ROW\\...``,
    ``COL\\...``)."""

    printer: str
    study: str
    series: str | None = None
    instances: tuple[str, ...] = ()
    layout: str = "STANDARD\\1,1"
    film_size: str = "14INX17IN"
    orientation: str = "PORTRAIT"
    copies: int = 1
    medium: str = "PAPER"
    destination: str | None = None
    # None: colour when the printer takes colour and the image is colour.
    color: bool | None = None


def check_print_request(request: PrintRequest) -> PrintRequest:
    """``request`` with its words normalised, or :class:`InvalidRequest` saying what is wrong."""
    layout = request.layout.strip().upper()
    layout_boxes(layout)  # InvalidPrintAttribute (an InvalidRequest) names a bad layout
    film_size = request.film_size.strip().upper()
    if film_size not in FILM_SIZES:
        raise InvalidRequest(f"unknown film size {request.film_size!r} (one of {', '.join(FILM_SIZES)})")
    orientation = request.orientation.strip().upper()
    if orientation not in FILM_ORIENTATIONS:
        raise InvalidRequest(f"orientation must be PORTRAIT or LANDSCAPE, not {request.orientation!r}")
    medium = request.medium.strip().upper()
    if medium not in MEDIUM_TYPES:
        raise InvalidRequest(f"unknown medium {request.medium!r} (one of {', '.join(MEDIUM_TYPES)})")
    if not 1 <= request.copies <= MAXIMUM_COPIES:
        raise InvalidRequest(f"copies must be from 1 to {MAXIMUM_COPIES}")
    if not request.printer:
        raise InvalidRequest("no printer named")
    destination = request.destination.strip().upper() if request.destination else None
    return PrintRequest(
        request.printer, request.study, request.series, tuple(request.instances), layout,
        film_size, orientation, request.copies, medium, destination, request.color,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FilmImage:
    """One image box's picture: 8-bit pixels, grey (one byte a pixel) or RGB (three,
    interleaved), and the instance it was rendered from."""

    sop_instance_uid: str
    rows: int
    columns: int
    pixels: bytes
    color: bool = False


@dataclass(frozen=True, slots=True)
class FilmOutcome:
    """One film: its Basic Film Box, the instances on it and the N-ACTION status."""

    number: int
    film_box_uid: str
    instances: tuple[str, ...]
    status: int
    warning: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "film": self.number,
            "film_box_uid": self.film_box_uid,
            "images": len(self.instances),
            "instances": list(self.instances),
            "status": f"0x{self.status:04X}",
            "warning": self.warning,
        }


@dataclass(frozen=True, slots=True)
class PrintOutcome:
    """What the printer did with one request: a film session and its films."""

    printer: str
    film_session_uid: str
    color: bool
    films: Sequence[FilmOutcome] = field(default_factory=tuple)
    printer_status: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "printer": self.printer,
            "film_session_uid": self.film_session_uid,
            "color": self.color,
            "printer_status": self.printer_status,
            "films": [film.as_json() for film in self.films],
        }

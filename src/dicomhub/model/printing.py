"""Print Management (PS3.4 Annex H): one association's print session and its state rules.

A print SCU builds, on one association, a hierarchy the SCP keeps until the
association ends (PS3.4 H.2.1):

    Basic Film Session (at most one) -> Basic Film Boxes -> Image Boxes

The film box creates its image boxes itself (one per position of its Image
Display Format) and names them in the N-CREATE response; the SCU fills them
with N-SET and prints with N-ACTION on the film box or on the film session.
:class:`PrintSession` holds that hierarchy and applies the rules; each
refusal is a :class:`PrintViolation` subclass that the DIMSE provider turns
into its status, and each warning a :class:`PrintWarning`.  Nothing here is
stored: an association that ends without printing leaves nothing behind, and
a print hands a :class:`PrintedFilm` per film box to the service, which
writes the job in one transaction.

The statuses follow PS3.4 H.4 and DCMTK's reference print SCP (``dcmprscp``):
a second film session on one association is 0x0111 *Duplicate SOP
Instance*, a film box without a film session 0x0117 *Invalid Object
Instance* (both as ``dcmprscp`` answers), a layout or film size the printer
does not claim 0x0106 *Invalid Attribute Value*.

References
----------
PS3.4 Annex H (Print Management Service Class); PS3.3 C.13 (Print
Management Modules: Image Display Format, Film Size ID, densities).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from pydicom.dataset import Dataset

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.presentationlut import PRESENTATION_LUT, PresentationLut, presentation_lut_from

__all__ = [
    "BASIC_COLOR_IMAGE_BOX",
    "BASIC_COLOR_PRINT_MANAGEMENT_META",
    "BASIC_FILM_BOX",
    "BASIC_FILM_SESSION",
    "BASIC_GRAYSCALE_IMAGE_BOX",
    "BASIC_GRAYSCALE_PRINT_MANAGEMENT_META",
    "FILM_SIZES",
    "MAXIMUM_FILM_BOXES",
    "MAXIMUM_LAYOUT",
    "META_SOP_CLASSES",
    "PRINTER",
    "PRINTER_INSTANCE",
    "PRINT_JOB",
    "PRESENTATION_LUT",
    "ClassInstanceConflict",
    "DuplicatePrintInstance",
    "FilmBox",
    "FilmSession",
    "ImageBox",
    "ImageLargerThanBox",
    "InvalidPrintAttribute",
    "NoFilmBoxes",
    "NoFilmSession",
    "NoSuchPrintAttribute",
    "NoSuchPrintInstance",
    "PrintSession",
    "PrintViolation",
    "PrintWarning",
    "PrintedFilm",
    "ResourceLimitation",
    "FILM_BOX_SETTABLE",
    "density_level",
    "film_pixels",
    "layout_boxes",
]

BASIC_GRAYSCALE_PRINT_MANAGEMENT_META: Final = "1.2.840.10008.5.1.1.9"
BASIC_COLOR_PRINT_MANAGEMENT_META: Final = "1.2.840.10008.5.1.1.18"
BASIC_FILM_SESSION: Final = "1.2.840.10008.5.1.1.1"
BASIC_FILM_BOX: Final = "1.2.840.10008.5.1.1.2"
BASIC_GRAYSCALE_IMAGE_BOX: Final = "1.2.840.10008.5.1.1.4"
BASIC_COLOR_IMAGE_BOX: Final = "1.2.840.10008.5.1.1.4.1"
PRINTER: Final = "1.2.840.10008.5.1.1.16"
PRINT_JOB: Final = "1.2.840.10008.5.1.1.14"
PRINTER_INSTANCE: Final = "1.2.840.10008.5.1.1.17"

#: The SOP classes each meta SOP class groups (PS3.4 H.3.1, H.3.2); messages on a
#: meta SOP class's presentation context name one of these.
META_SOP_CLASSES: Final[Mapping[str, frozenset[str]]] = {
    BASIC_GRAYSCALE_PRINT_MANAGEMENT_META: frozenset(
        {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_GRAYSCALE_IMAGE_BOX, PRINTER}
    ),
    BASIC_COLOR_PRINT_MANAGEMENT_META: frozenset(
        {BASIC_FILM_SESSION, BASIC_FILM_BOX, BASIC_COLOR_IMAGE_BOX, PRINTER}
    ),
}

#: Film Size ID (PS3.3 C.13.3) -> (width, height) in inches, portrait.
FILM_SIZES: Final[Mapping[str, tuple[float, float]]] = {
    "8INX10IN": (8.0, 10.0),
    "8_5INX11IN": (8.5, 11.0),
    "10INX12IN": (10.0, 12.0),
    "10INX14IN": (10.0, 14.0),
    "11INX14IN": (11.0, 14.0),
    "11INX17IN": (11.0, 17.0),
    "14INX14IN": (14.0, 14.0),
    "14INX17IN": (14.0, 17.0),
    "24CMX24CM": (24 / 2.54, 24 / 2.54),
    "24CMX30CM": (24 / 2.54, 30 / 2.54),
    "A4": (210 / 25.4, 297 / 25.4),
    "A3": (297 / 25.4, 420 / 25.4),
}

#: Film boxes one film session may hold at once: what an association keeps in memory is
#: bounded (each image box holds its preformatted image until the session ends).
MAXIMUM_FILM_BOXES: Final = 100

#: The largest number of columns or rows (STANDARD), or of rows / columns and of
#: images in one of them (ROW, COL), a layout may have.
MAXIMUM_LAYOUT: Final = 10

_DEFAULT_FILM_SIZE: Final = "14INX17IN"
_ORIENTATIONS: Final = frozenset({"PORTRAIT", "LANDSCAPE"})
_MAGNIFICATIONS: Final = frozenset({"REPLICATE", "BILINEAR", "CUBIC", "NONE"})
_POLARITIES: Final = frozenset({"NORMAL", "REVERSE"})
_TRIMS: Final = frozenset({"YES", "NO"})
# PS3.3 C.13.5.1: densities are BLACK, WHITE or hundredths of optical density.
# A numeric density is mapped linearly from this range onto the gray levels.
_MAXIMUM_DENSITY: Final = 300

# Tags used in the rules (keywords on datasets, tags in violations).
_IMAGE_DISPLAY_FORMAT: Final = 0x20100010
_FILM_ORIENTATION: Final = 0x20100040
_FILM_SIZE_ID: Final = 0x20100050
_MAGNIFICATION_TYPE: Final = 0x20100060
_BORDER_DENSITY: Final = 0x20100100
_EMPTY_IMAGE_DENSITY: Final = 0x20100110
_TRIM: Final = 0x20100140
_SMOOTHING_TYPE: Final = 0x20100080
_MIN_DENSITY: Final = 0x20100120
_MAX_DENSITY: Final = 0x20100130
_CONFIGURATION_INFORMATION: Final = 0x20100150
_IMAGE_BOX_POSITION: Final = 0x20200010
_POLARITY: Final = 0x20200020
_PREFORMATTED_GRAYSCALE: Final = 0x20200110
_PREFORMATTED_COLOR: Final = 0x20200111
_NUMBER_OF_COPIES: Final = 0x20000010
_REFERENCED_PRESENTATION_LUT: Final = 0x20500500
_MAXIMUM_PRESENTATION_LUTS: Final = 100

#: What N-SET may change on a Basic Film Box (PS3.4 H.4.2.2.2, Table H.4-7), as DCMTK's
#: ``dcmprscp`` also accepts: anything else is 0x0105 No Such Attribute.
FILM_BOX_SETTABLE: Final = frozenset(
    {
        _MAGNIFICATION_TYPE,
        _SMOOTHING_TYPE,
        _BORDER_DENSITY,
        _EMPTY_IMAGE_DENSITY,
        _MIN_DENSITY,
        _MAX_DENSITY,
        _TRIM,
        _CONFIGURATION_INFORMATION,
        _REFERENCED_PRESENTATION_LUT,
        0x2010015E,  # Illumination (with a Presentation LUT)
        0x20100160,  # Reflected Ambient Light
    }
)


class PrintViolation(InvalidRequest):
    """A print request refused by the rules of PS3.4 H; ``tags``: the attributes concerned."""

    def __init__(self, message: str, tags: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.tags = tuple(tags)


class InvalidPrintAttribute(PrintViolation):
    """A value the printer does not support (layout, film size, position...): 0x0106."""


class DuplicatePrintInstance(PrintViolation):
    """A second Basic Film Session on one association, or an instance UID already used: 0x0111."""


class NoFilmSession(PrintViolation):
    """A film box asked for before any film session: 0x0117."""


class ClassInstanceConflict(PrintViolation):
    """The instance exists but belongs to another SOP class: 0x0119."""


class ImageLargerThanBox(PrintViolation):
    """Magnification NONE and an image larger than its box: 0xC603 (PS3.4 H.4.3.1.2.1.2)."""


class NoFilmBoxes(PrintViolation):
    """N-ACTION print of a film session without film boxes: 0xC600 (PS3.4 H.4.1.2.4.2)."""


class ResourceLimitation(PrintViolation):
    """More film boxes than :data:`MAXIMUM_FILM_BOXES` in one film session: 0x0213 (PS3.7 C.4.5)."""


class NoSuchPrintAttribute(PrintViolation):
    """An attribute the SOP class does not let N-SET change: 0x0105 (PS3.4 H.4.2.2.2)."""


class NoSuchPrintInstance(NotFound):
    """An instance this association does not hold: 0x0112."""


class PrintWarning(Enum):
    """Warnings of PS3.4 H.4, as their meaning; the provider knows the codes."""

    EMPTY_FILM_BOX = "film box has no image (empty page)"  # 0xB603
    EMPTY_FILM_SESSION = "film session has no image (empty page)"  # 0xB602
    IMAGE_DEMAGNIFIED = "image larger than its box: demagnified"  # 0xB604


def _text(dataset: Dataset, keyword: str, default: str) -> str:
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    return str(value).strip().upper()


def layout_boxes(image_display_format: str) -> list[tuple[float, float, float, float]]:
    """The image boxes of an Image Display Format as (left, top, right, bottom) film fractions.

    In Image Box Position order: left to right, then top to bottom.

    Raises
    ------
    InvalidPrintAttribute
        For formats other than ``STANDARD\\C,R``, ``ROW\\n,...`` and
        ``COL\\n,...`` with counts from 1 to :data:`MAXIMUM_LAYOUT`.

    References
    ----------
    PS3.3 C.13.5.1 (Image Display Format).
    """
    kind, _, numbers = image_display_format.strip().upper().partition("\\")
    try:
        counts = [int(part) for part in numbers.split(",")]
    except ValueError:
        counts = []
    bad = InvalidPrintAttribute(
        f"unsupported Image Display Format {image_display_format[:32]!r}", [_IMAGE_DISPLAY_FORMAT]
    )
    if not counts or not all(1 <= c <= MAXIMUM_LAYOUT for c in counts) or len(counts) > MAXIMUM_LAYOUT:
        raise bad
    if kind == "STANDARD":
        if len(counts) != 2:
            raise bad
        columns, rows = counts
        return [
            (c / columns, r / rows, (c + 1) / columns, (r + 1) / rows)
            for r in range(rows)
            for c in range(columns)
        ]
    if kind == "ROW":  # each number: the images of one row, rows top to bottom
        return [
            (i / n, r / len(counts), (i + 1) / n, (r + 1) / len(counts))
            for r, n in enumerate(counts)
            for i in range(n)
        ]
    if kind == "COL":  # each number: the images of one column, columns left to right
        boxes = [
            (c / len(counts), i / n, (c + 1) / len(counts), (i + 1) / n)
            for c, n in enumerate(counts)
            for i in range(n)
        ]
        # Positions run left to right, then top to bottom (PS3.3 C.13.5.1).
        return sorted(boxes, key=lambda b: (b[1], b[0]))
    raise bad


def film_pixels(film_size_id: str, orientation: str, dpi: int) -> tuple[int, int]:
    """Width and height in pixels of a film at `dpi`."""
    width, height = FILM_SIZES[film_size_id]
    if orientation == "LANDSCAPE":
        width, height = height, width
    return round(width * dpi), round(height * dpi)


def density_level(density: str) -> int:
    """The 8-bit gray level (0 black, 255 white) of a Border/Empty Image Density."""
    if density == "BLACK":
        return 0
    if density == "WHITE":
        return 255
    hundredths = min(max(int(density), 0), _MAXIMUM_DENSITY)
    return round(255 * (1 - hundredths / _MAXIMUM_DENSITY))


def _density(dataset: Dataset, keyword: str, tag: int, default: str) -> str:
    value = _text(dataset, keyword, default)
    if value in ("BLACK", "WHITE") or (value.isdigit() and int(value) <= _MAXIMUM_DENSITY):
        return value
    raise InvalidPrintAttribute(f"unsupported {keyword} {value[:16]!r}", [tag])


def _choice(dataset: Dataset, keyword: str, tag: int, allowed: frozenset[str], default: str) -> str:
    value = _text(dataset, keyword, default)
    if value not in allowed:
        raise InvalidPrintAttribute(f"unsupported {keyword} {value[:16]!r}", [tag])
    return value


def _new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class ImageBox:
    """One position of a film box; ``image`` is the preformatted image once N-SET."""

    sop_instance_uid: str
    sop_class_uid: str
    position: int
    polarity: str = "NORMAL"
    magnification_type: str | None = None
    image: Dataset | None = None
    presentation_lut: PresentationLut | None = None


@dataclass
class FilmBox:
    """A Basic Film Box: its layout and the image boxes it created."""

    sop_instance_uid: str
    image_display_format: str
    film_orientation: str
    film_size_id: str
    magnification_type: str
    border_density: str
    empty_image_density: str
    trim: str
    image_boxes: list[ImageBox]
    boxes: list[tuple[float, float, float, float]]
    presentation_lut: PresentationLut | None = None
    min_density: int = 0
    max_density: int = _MAXIMUM_DENSITY
    smoothing_type: str = ""
    configuration_information: str = ""

    def attributes(self) -> dict[str, str]:
        """The film box attributes kept with a print job."""
        lut = self.presentation_lut.attributes() if self.presentation_lut is not None else {}
        recorded = {
            keyword: value
            for keyword, value in (
                ("SmoothingType", self.smoothing_type),
                ("ConfigurationInformation", self.configuration_information),
            )
            if value
        }
        return {
            **lut,
            **recorded,
            "MinDensity": str(self.min_density),
            "MaxDensity": str(self.max_density),
            "ImageDisplayFormat": self.image_display_format,
            "FilmOrientation": self.film_orientation,
            "FilmSizeID": self.film_size_id,
            "MagnificationType": self.magnification_type,
            "BorderDensity": self.border_density,
            "EmptyImageDensity": self.empty_image_density,
            "Trim": self.trim,
        }


@dataclass
class FilmSession:
    """The Basic Film Session: copies, priority, medium, and its film boxes in creation order."""

    sop_instance_uid: str
    attributes: dict[str, str]
    film_boxes: list[FilmBox] = field(default_factory=list)


@dataclass(frozen=True)
class PrintedFilm:
    """What the renderer needs of one printed film box."""

    film_box: FilmBox
    film_session: Mapping[str, str]
    color: bool


class PrintSession:
    """One association's print hierarchy and the PS3.4 H rules on it.

    Parameters
    ----------
    dpi : int
        Resolution the films are rendered at: the size in pixels of each
        image box, against which :meth:`set_image_box` checks image sizes.
    """

    def __init__(self, dpi: int) -> None:
        self.dpi = dpi
        self.film_session: FilmSession | None = None
        self._film_boxes: dict[str, FilmBox] = {}
        self._image_boxes: dict[str, tuple[FilmBox, ImageBox]] = {}
        self._presentation_luts: dict[str, PresentationLut] = {}

    # -- lookup ---------------------------------------------------------------

    def kind_of(self, sop_instance_uid: str) -> str | None:
        """The SOP class of an instance this session holds (None: unknown)."""
        if self.film_session is not None and self.film_session.sop_instance_uid == sop_instance_uid:
            return BASIC_FILM_SESSION
        if sop_instance_uid in self._film_boxes:
            return BASIC_FILM_BOX
        if sop_instance_uid in self._presentation_luts:
            return PRESENTATION_LUT
        held = self._image_boxes.get(sop_instance_uid)
        return held[1].sop_class_uid if held is not None else None

    # -- presentation LUT (PS3.4 H.4.9) --------------------------------------

    def create_presentation_lut(self, sop_instance_uid: str | None, attributes: Dataset) -> PresentationLut:
        """N-CREATE of a Presentation LUT (no film session needed)."""
        if sop_instance_uid is not None and self.kind_of(sop_instance_uid) is not None:
            raise DuplicatePrintInstance(f"{sop_instance_uid[:64]} exists already")
        if len(self._presentation_luts) >= _MAXIMUM_PRESENTATION_LUTS:
            raise ResourceLimitation(f"at most {_MAXIMUM_PRESENTATION_LUTS} presentation LUTs")
        lut = presentation_lut_from(sop_instance_uid or _new_uid(), attributes)
        self._presentation_luts[lut.sop_instance_uid] = lut
        return lut

    def delete_presentation_lut(self, sop_instance_uid: str) -> None:
        """N-DELETE of a Presentation LUT; film and image boxes keep the one they referenced."""
        self._check(PRESENTATION_LUT, sop_instance_uid)
        del self._presentation_luts[sop_instance_uid]

    def _referenced_lut(self, attributes: Dataset, current: PresentationLut | None) -> PresentationLut | None:
        sequence = attributes.get("ReferencedPresentationLUTSequence")
        if sequence is None:
            return current
        if len(sequence) == 0:
            return None
        uid = str(sequence[0].get("ReferencedSOPInstanceUID", ""))
        lut = self._presentation_luts.get(uid)
        if len(sequence) != 1 or lut is None:
            raise InvalidPrintAttribute(
                f"no Presentation LUT {uid[:40]} on this association", [_REFERENCED_PRESENTATION_LUT]
            )
        return lut

    def _check(self, sop_class_uid: str, sop_instance_uid: str) -> None:
        kind = self.kind_of(sop_instance_uid)
        if kind is None:
            raise NoSuchPrintInstance(f"no {sop_instance_uid[:64]} in this print session")
        if kind != sop_class_uid:
            raise ClassInstanceConflict(f"{sop_instance_uid[:40]} is not of SOP class {sop_class_uid}")

    # -- film session (PS3.4 H.4.1) ------------------------------------------

    def create_film_session(self, sop_instance_uid: str | None, attributes: Dataset) -> FilmSession:
        """N-CREATE of the Basic Film Session."""
        if self.film_session is not None:
            raise DuplicatePrintInstance("a film session exists already on this association")
        kept = _film_session_attributes(attributes, {"NumberOfCopies": "1"})
        self.film_session = FilmSession(sop_instance_uid or _new_uid(), kept)
        return self.film_session

    def set_film_session(self, sop_instance_uid: str, modifications: Dataset) -> None:
        """N-SET of the Basic Film Session (copies, priority, medium, label)."""
        self._check(BASIC_FILM_SESSION, sop_instance_uid)
        assert self.film_session is not None
        self.film_session.attributes.update(
            _film_session_attributes(modifications, self.film_session.attributes)
        )

    def delete_film_session(self, sop_instance_uid: str) -> None:
        """N-DELETE of the Basic Film Session: its film and image boxes go with it."""
        self._check(BASIC_FILM_SESSION, sop_instance_uid)
        self.film_session = None
        self._film_boxes.clear()
        self._image_boxes.clear()

    def print_film_session(
        self, sop_instance_uid: str, color: bool
    ) -> tuple[list[PrintedFilm], PrintWarning | None]:
        """N-ACTION print of the film session: every film box, in creation order."""
        self._check(BASIC_FILM_SESSION, sop_instance_uid)
        assert self.film_session is not None
        boxes = self.film_session.film_boxes
        if not boxes:
            raise NoFilmBoxes("the film session has no film box")
        empty = all(image.image is None for box in boxes for image in box.image_boxes)
        films = [PrintedFilm(box, dict(self.film_session.attributes), color) for box in boxes]
        return films, PrintWarning.EMPTY_FILM_SESSION if empty else None

    # -- film box (PS3.4 H.4.2) ----------------------------------------------

    def create_film_box(self, sop_instance_uid: str | None, attributes: Dataset, color: bool) -> FilmBox:
        """N-CREATE of a Basic Film Box; creates its image boxes."""
        if self.film_session is None:
            raise NoFilmSession("no film session: create the Basic Film Session first")
        if len(self.film_session.film_boxes) >= MAXIMUM_FILM_BOXES:
            raise ResourceLimitation(f"at most {MAXIMUM_FILM_BOXES} film boxes per film session")
        if sop_instance_uid is not None and self.kind_of(sop_instance_uid) is not None:
            raise DuplicatePrintInstance(f"{sop_instance_uid[:64]} exists already")
        display_format = str(attributes.get("ImageDisplayFormat", "") or "")
        if not display_format:
            raise InvalidPrintAttribute("Image Display Format is required", [_IMAGE_DISPLAY_FORMAT])
        boxes = layout_boxes(display_format)
        presentation_lut = self._referenced_lut(attributes, None)
        film_size = _text(attributes, "FilmSizeID", _DEFAULT_FILM_SIZE)
        if film_size not in FILM_SIZES:
            raise InvalidPrintAttribute(f"unsupported Film Size ID {film_size[:16]!r}", [_FILM_SIZE_ID])
        image_class = BASIC_COLOR_IMAGE_BOX if color else BASIC_GRAYSCALE_IMAGE_BOX
        box = FilmBox(
            sop_instance_uid=sop_instance_uid or _new_uid(),
            image_display_format=display_format.strip().upper(),
            film_orientation=_choice(
                attributes, "FilmOrientation", _FILM_ORIENTATION, _ORIENTATIONS, "PORTRAIT"
            ),
            film_size_id=film_size,
            magnification_type=_choice(
                attributes, "MagnificationType", _MAGNIFICATION_TYPE, _MAGNIFICATIONS, "BILINEAR"
            ),
            border_density=_density(attributes, "BorderDensity", _BORDER_DENSITY, "BLACK"),
            empty_image_density=_density(attributes, "EmptyImageDensity", _EMPTY_IMAGE_DENSITY, "BLACK"),
            trim=_choice(attributes, "Trim", _TRIM, _TRIMS, "NO"),
            image_boxes=[
                ImageBox(_new_uid(), image_class, position) for position in range(1, len(boxes) + 1)
            ],
            boxes=boxes,
            presentation_lut=presentation_lut,
        )
        for name, value in _film_box_values(attributes, box).items():
            setattr(box, name, value)
        self.film_session.film_boxes.append(box)
        self._film_boxes[box.sop_instance_uid] = box
        for image in box.image_boxes:
            self._image_boxes[image.sop_instance_uid] = (box, image)
        return box

    def set_film_box(self, sop_instance_uid: str, modifications: Dataset) -> None:
        """N-SET of a Basic Film Box: only what PS3.4 H.4.2.2.2 lets change (:data:`FILM_BOX_SETTABLE`).

        All or nothing: a refused value leaves the film box as it was.

        Raises
        ------
        NoSuchPrintAttribute
            For an attribute fixed at N-CREATE (layout, film size, orientation...) or
            not a film box's.
        InvalidPrintAttribute
            For a value the printer does not support.
        """
        self._check(BASIC_FILM_BOX, sop_instance_uid)
        box = self._film_boxes[sop_instance_uid]
        fixed = [int(element.tag) for element in modifications if int(element.tag) not in FILM_BOX_SETTABLE]
        if fixed:
            names = ", ".join(f"({tag >> 16:04X},{tag & 0xFFFF:04X})" for tag in fixed[:3])
            raise NoSuchPrintAttribute(f"N-SET of a film box cannot change {names}", fixed)
        values = _film_box_values(modifications, box)
        values["presentation_lut"] = self._referenced_lut(modifications, box.presentation_lut)
        for name, value in values.items():
            setattr(box, name, value)

    def print_film_box(
        self, sop_instance_uid: str, color: bool
    ) -> tuple[list[PrintedFilm], PrintWarning | None]:
        """N-ACTION print of one film box (an empty one prints, with a warning)."""
        self._check(BASIC_FILM_BOX, sop_instance_uid)
        assert self.film_session is not None
        box = self._film_boxes[sop_instance_uid]
        empty = all(image.image is None for image in box.image_boxes)
        film = PrintedFilm(box, dict(self.film_session.attributes), color)
        return [film], PrintWarning.EMPTY_FILM_BOX if empty else None

    def delete_film_box(self, sop_instance_uid: str) -> None:
        """N-DELETE of a film box and its image boxes."""
        self._check(BASIC_FILM_BOX, sop_instance_uid)
        assert self.film_session is not None
        box = self._film_boxes.pop(sop_instance_uid)
        self.film_session.film_boxes.remove(box)
        for image in box.image_boxes:
            self._image_boxes.pop(image.sop_instance_uid, None)

    # -- image box (PS3.4 H.4.3) ---------------------------------------------

    def box_pixels(self, box: FilmBox, position: int) -> tuple[int, int]:
        """Width and height in pixels of an image box at the session's resolution."""
        width, height = film_pixels(box.film_size_id, box.film_orientation, self.dpi)
        left, top, right, bottom = box.boxes[position - 1]
        return round(right * width) - round(left * width), round(bottom * height) - round(top * height)

    def set_image_box(
        self, sop_class_uid: str, sop_instance_uid: str, modifications: Dataset
    ) -> PrintWarning | None:
        """N-SET of an image box: the preformatted image, position, polarity, magnification."""
        self._check(sop_class_uid, sop_instance_uid)
        box, image = self._image_boxes[sop_instance_uid]
        color = sop_class_uid == BASIC_COLOR_IMAGE_BOX
        position = modifications.get("ImageBoxPosition", image.position)
        if position != image.position:
            # PS3.4 H.4.3.1.2.1: the position is the one the film box gave the instance.
            raise InvalidPrintAttribute(
                f"Image Box Position {position} is not this image box's ({image.position} of "
                f"{len(box.image_boxes)})",
                [_IMAGE_BOX_POSITION],
            )
        polarity = _choice(modifications, "Polarity", _POLARITY, _POLARITIES, image.polarity)
        magnification = image.magnification_type
        if "MagnificationType" in modifications:
            magnification = _choice(
                modifications,
                "MagnificationType",
                _MAGNIFICATION_TYPE,
                _MAGNIFICATIONS,
                box.magnification_type,
            )
        keyword = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
        tag = _PREFORMATTED_COLOR if color else _PREFORMATTED_GRAYSCALE
        warning: PrintWarning | None = None
        sequence = modifications.get(keyword)
        picture: Dataset | None = image.image
        if sequence is not None:
            if len(sequence) != 1:
                raise InvalidPrintAttribute(f"{keyword} needs exactly one item", [tag])
            picture = sequence[0]
            _check_picture(picture, color, tag)
            width, height = self.box_pixels(box, image.position)
            larger = int(picture.Columns) > width or int(picture.Rows) > height
            if larger and (magnification or box.magnification_type) == "NONE":
                raise ImageLargerThanBox(
                    f"image {picture.Columns}x{picture.Rows} larger than its box {width}x{height} "
                    "and Magnification Type NONE",
                    [tag],
                )
            if larger:
                warning = PrintWarning.IMAGE_DEMAGNIFIED
        presentation_lut = self._referenced_lut(modifications, image.presentation_lut)
        image.polarity, image.magnification_type, image.image = polarity, magnification, picture
        image.presentation_lut = presentation_lut
        return warning


def _film_box_values(attributes: Dataset, box: FilmBox) -> dict[str, object]:
    """The film box fields `attributes` change, checked, with `box`'s values as the defaults."""
    values: dict[str, object] = {}
    if "MagnificationType" in attributes:
        values["magnification_type"] = _choice(
            attributes, "MagnificationType", _MAGNIFICATION_TYPE, _MAGNIFICATIONS, box.magnification_type
        )
    if "BorderDensity" in attributes:
        values["border_density"] = _density(attributes, "BorderDensity", _BORDER_DENSITY, box.border_density)
    if "EmptyImageDensity" in attributes:
        values["empty_image_density"] = _density(
            attributes, "EmptyImageDensity", _EMPTY_IMAGE_DENSITY, box.empty_image_density
        )
    if "Trim" in attributes:
        values["trim"] = _choice(attributes, "Trim", _TRIM, _TRIMS, box.trim)
    low = _hundredths(attributes, "MinDensity", _MIN_DENSITY, box.min_density)
    high = _hundredths(attributes, "MaxDensity", _MAX_DENSITY, box.max_density)
    if low >= high:
        raise InvalidPrintAttribute(
            f"Min Density {low} must be below Max Density {high}", [_MIN_DENSITY, _MAX_DENSITY]
        )
    values["min_density"], values["max_density"] = low, high
    # Recorded with the job; resampling is the Magnification Type's, and there are no
    # configuration options: both are accepted as a modality may always send them.
    if "SmoothingType" in attributes:
        values["smoothing_type"] = _text(attributes, "SmoothingType", "")[:16]
    if "ConfigurationInformation" in attributes:
        information = str(attributes.get("ConfigurationInformation") or "")
        if len(information) > 1024:  # ST
            raise InvalidPrintAttribute(
                "Configuration Information longer than 1024", [_CONFIGURATION_INFORMATION]
            )
        values["configuration_information"] = information
    return values


def _hundredths(dataset: Dataset, keyword: str, tag: int, default: int) -> int:
    """A Min/Max Density: hundredths of optical density within what this printer renders."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number <= _MAXIMUM_DENSITY:
        raise InvalidPrintAttribute(f"{keyword} must be 0 to {_MAXIMUM_DENSITY}", [tag])
    return number


def _film_session_attributes(attributes: Dataset, current: Mapping[str, str]) -> dict[str, str]:
    """The film session attributes kept, `current` updated with those `attributes` carry."""
    kept = dict(current)
    for keyword in ("PrintPriority", "MediumType", "FilmDestination", "FilmSessionLabel"):
        if keyword in attributes:
            kept[keyword] = str(attributes.get(keyword) or "")
    if "NumberOfCopies" in attributes:
        value = attributes.get("NumberOfCopies")
        try:
            copies = int(value) if value not in (None, "") else 1
        except (TypeError, ValueError):
            copies = 0
        if not 1 <= copies <= 99:
            raise InvalidPrintAttribute("Number of Copies must be 1 to 99", [_NUMBER_OF_COPIES])
        kept["NumberOfCopies"] = str(copies)
    return kept


def _check_picture(picture: Dataset, color: bool, tag: int) -> None:
    """A preformatted image the renderer can print (PS3.3 C.13.5 / C.13.6)."""
    interpretation = str(picture.get("PhotometricInterpretation", "")).upper()
    wanted = ("RGB",) if color else ("MONOCHROME1", "MONOCHROME2")
    try:
        rows, columns = int(picture.Rows), int(picture.Columns)
        bits = int(picture.BitsStored) if "BitsStored" in picture else int(picture.BitsAllocated)
        allocated = int(picture.BitsAllocated)
        samples = int(picture.get("SamplesPerPixel", 3 if color else 1))
        size = len(picture.PixelData)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidPrintAttribute(f"preformatted image incomplete: {exc}"[:64], [tag]) from exc
    if interpretation not in wanted:
        raise InvalidPrintAttribute(
            f"Photometric Interpretation {interpretation[:16]!r} not printable here", [tag]
        )
    allowed_bits = (8,) if color else (8, 12)
    if rows < 1 or columns < 1 or bits not in allowed_bits or allocated not in (8, 16) or bits > allocated:
        raise InvalidPrintAttribute("preformatted image: unsupported size or bit depth", [tag])
    if samples != (3 if color else 1) or size < rows * columns * samples * (allocated // 8):
        raise InvalidPrintAttribute("preformatted image: pixel data too short", [tag])

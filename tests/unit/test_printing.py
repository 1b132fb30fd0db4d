"""Print Management: the PS3.4 H state rules of one association's print session, and the renderer.

The renderer is checked by pixels: each image box's region of the film holds
the input image resampled into the box (aspect kept, centred) with its
polarity applied, within a tolerance of 2 gray levels on average and 8 at any
pixel away from the image's edges (interpolation at the edges blends with the
border).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.model.presentationlut import InvalidPresentationLut
from dicomhub.model.printing import (
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    MAXIMUM_FILM_BOXES,
    PRESENTATION_LUT,
    ClassInstanceConflict,
    DuplicatePrintInstance,
    ImageLargerThanBox,
    InvalidPrintAttribute,
    NoFilmBoxes,
    NoFilmSession,
    NoSuchPrintInstance,
    PrintSession,
    PrintWarning,
    ResourceLimitation,
    density_level,
    film_pixels,
    layout_boxes,
)
from dicomhub.services.printrender import image_pixels, placement, render_film

DPI = 20  # small films keep the tests fast: 14INX17IN = 280 x 340


def gradient(rows: int, columns: int, bits: int = 8) -> NDArray[np.uint16]:
    y, x = np.mgrid[0:rows, 0:columns]
    top = (1 << bits) - 1
    return ((x * 3 + y * 5) % (top + 1)).astype(np.uint16)


def picture(values: NDArray[np.uint16], bits: int = 8, interpretation: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = interpretation
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = values.astype(np.uint8 if bits == 8 else "<u2").tobytes()
    return ds


def image_set(item: Dataset, position: int, **extra: str) -> Dataset:
    ds = Dataset()
    ds.ImageBoxPosition = position
    ds.BasicGrayscaleImageSequence = Sequence([item])
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def film_box_attributes(layout: str, **extra: str) -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = layout
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def new_session() -> PrintSession:
    session = PrintSession(DPI)
    session.create_film_session(None, Dataset())
    return session


# -- layouts ------------------------------------------------------------------


def test_standard_layout_is_columns_then_rows() -> None:
    boxes = layout_boxes("STANDARD\\3,2")
    assert len(boxes) == 6
    assert boxes[0] == (0, 0, 1 / 3, 0.5)
    assert boxes[2] == (2 / 3, 0, 1, 0.5)  # first row ends at the right edge
    assert boxes[3] == (0, 0.5, 1 / 3, 1)


def test_row_and_col_layouts() -> None:
    rows = layout_boxes("ROW\\1,2")
    assert rows == [(0, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]
    cols = layout_boxes("COL\\2,1")
    # left column has two images, right one: positions left to right, then top to bottom
    assert cols == [(0, 0, 0.5, 0.5), (0.5, 0, 1, 1), (0, 0.5, 0.5, 1)]


@pytest.mark.parametrize(
    "layout", ["SLIDE", "STANDARD\\0,1", "STANDARD\\11,1", "STANDARD\\2", "CUSTOM\\1", "ROW\\a"]
)
def test_unsupported_layouts_are_invalid_attribute_values(layout: str) -> None:
    with pytest.raises(InvalidPrintAttribute) as caught:
        layout_boxes(layout)
    assert caught.value.tags == (0x20100010,)


def test_film_pixels_and_densities() -> None:
    assert film_pixels("14INX17IN", "PORTRAIT", 150) == (2100, 2550)
    assert film_pixels("14INX17IN", "LANDSCAPE", 150) == (2550, 2100)
    assert (density_level("BLACK"), density_level("WHITE"), density_level("150")) == (0, 255, 128)


# -- state rules --------------------------------------------------------------


def test_film_box_needs_a_film_session_and_one_session_per_association() -> None:
    session = PrintSession(DPI)
    with pytest.raises(NoFilmSession):
        session.create_film_box(None, film_box_attributes("STANDARD\\1,1"), False)
    session.create_film_session(None, Dataset())
    with pytest.raises(DuplicatePrintInstance):
        session.create_film_session(None, Dataset())


def test_film_box_creates_its_image_boxes_and_refuses_unsupported_values() -> None:
    session = new_session()
    box = session.create_film_box(None, film_box_attributes("STANDARD\\2,2", FilmSizeID="8INX10IN"), False)
    assert [image.position for image in box.image_boxes] == [1, 2, 3, 4]
    assert {session.kind_of(image.sop_instance_uid) for image in box.image_boxes} == {
        BASIC_GRAYSCALE_IMAGE_BOX
    }
    for bad in (
        {"FilmSizeID": "35MMX35MM"},
        {"FilmOrientation": "SIDEWAYS"},
        {"MagnificationType": "SINC"},
        {"BorderDensity": "GREEN"},
    ):
        with pytest.raises(InvalidPrintAttribute):
            session.create_film_box(None, film_box_attributes("STANDARD\\1,1", **bad), False)
    assert len(session.film_session.film_boxes) == 1  # type: ignore[union-attr]


def test_image_box_rules() -> None:
    session = new_session()
    box = session.create_film_box(None, film_box_attributes("STANDARD\\2,1"), False)
    first, second = box.image_boxes
    image = picture(gradient(16, 16))
    with pytest.raises(InvalidPrintAttribute):  # position outside this box's place
        session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, first.sop_instance_uid, image_set(image, 3))
    with pytest.raises(NoSuchPrintInstance):
        session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, "1.2.3.4", image_set(image, 1))
    with pytest.raises(ClassInstanceConflict):
        session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, box.sop_instance_uid, image_set(image, 1))
    with pytest.raises(InvalidPrintAttribute):  # color image in a grayscale box
        session.set_image_box(
            BASIC_GRAYSCALE_IMAGE_BOX, first.sop_instance_uid, image_set(picture(gradient(4, 4), 8, "RGB"), 1)
        )
    assert (
        session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, first.sop_instance_uid, image_set(image, 1)) is None
    )
    # 14INX17IN at 20 dpi in 2 columns: boxes 140 x 340 pixels
    assert session.box_pixels(box, 2) == (140, 340)
    large = picture(gradient(100, 200))
    assert (
        session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, second.sop_instance_uid, image_set(large, 2))
        is PrintWarning.IMAGE_DEMAGNIFIED
    )
    with pytest.raises(ImageLargerThanBox):
        session.set_image_box(
            BASIC_GRAYSCALE_IMAGE_BOX,
            second.sop_instance_uid,
            image_set(large, 2, MagnificationType="NONE"),
        )


def test_print_rules() -> None:
    session = new_session()
    assert session.film_session is not None
    with pytest.raises(NoFilmBoxes):
        session.print_film_session(session.film_session.sop_instance_uid, False)
    box = session.create_film_box(None, film_box_attributes("STANDARD\\1,2"), False)
    films, warning = session.print_film_box(box.sop_instance_uid, False)
    assert len(films) == 1 and warning is PrintWarning.EMPTY_FILM_BOX
    films, warning = session.print_film_session(session.film_session.sop_instance_uid, False)
    assert warning is PrintWarning.EMPTY_FILM_SESSION
    session.set_image_box(
        BASIC_GRAYSCALE_IMAGE_BOX, box.image_boxes[0].sop_instance_uid, image_set(picture(gradient(8, 8)), 1)
    )
    assert session.print_film_box(box.sop_instance_uid, False)[1] is None
    with pytest.raises(ClassInstanceConflict):
        session.print_film_box(session.film_session.sop_instance_uid, False)
    session.delete_film_box(box.sop_instance_uid)
    assert session.kind_of(box.sop_instance_uid) is None
    assert session.kind_of(box.image_boxes[0].sop_instance_uid) is None
    session.delete_film_session(session.film_session.sop_instance_uid)
    assert session.film_session is None


def test_film_session_copies() -> None:
    session = PrintSession(DPI)
    bad = Dataset()
    bad.NumberOfCopies = 0
    with pytest.raises(InvalidPrintAttribute):
        session.create_film_session(None, bad)
    made = session.create_film_session(None, Dataset())
    change = Dataset()
    change.NumberOfCopies = 3
    session.set_film_session(made.sop_instance_uid, change)
    assert made.attributes["NumberOfCopies"] == "3"
    with pytest.raises(ClassInstanceConflict):
        box = session.create_film_box(None, film_box_attributes("STANDARD\\1,1"), False)
        session.set_film_session(box.sop_instance_uid, change)
    assert {session.kind_of(made.sop_instance_uid)} == {BASIC_FILM_SESSION}
    assert session.kind_of(box.sop_instance_uid) == BASIC_FILM_BOX


# -- renderer -------------------------------------------------------------------


def expected_region(values: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.float64]:
    return np.asarray(Image.fromarray(values, "L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


@pytest.mark.parametrize(("layout", "polarity"), [("STANDARD\\2,2", "NORMAL"), ("ROW\\1,3", "REVERSE")])
def test_each_box_holds_its_image_resampled_with_polarity(layout: str, polarity: str) -> None:
    session = new_session()
    box = session.create_film_box(
        None, film_box_attributes(layout, BorderDensity="BLACK", EmptyImageDensity="WHITE"), False
    )
    inputs = []
    for n, image in enumerate(box.image_boxes[:-1]):  # the last box stays empty
        values = gradient(40 + 10 * n, 60, bits=12)
        inputs.append(values)
        session.set_image_box(
            BASIC_GRAYSCALE_IMAGE_BOX,
            image.sop_instance_uid,
            image_set(picture(values, 12), image.position, Polarity=polarity),
        )
    film = np.asarray(render_film(box, False, DPI), dtype=np.float64)
    height, width = film.shape
    assert (width, height) == film_pixels("14INX17IN", "PORTRAIT", DPI)
    for values, (x0, y0, x1, y1) in zip(inputs, box.boxes, strict=False):
        cell = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        eight = (values >> 4).astype(np.uint8)
        if polarity == "REVERSE":
            eight = 255 - eight
        left, top, w, h = placement(cell, (values.shape[1], values.shape[0]), "BILINEAR")
        # aspect kept: the image fills the cell in one dimension
        assert w == cell[2] - cell[0] or h == cell[3] - cell[1]
        assert abs(w / h - values.shape[1] / values.shape[0]) < 0.05
        region = film[top : top + h, left : left + w]
        want = expected_region(eight, (w, h))
        inner = (slice(1, -1), slice(1, -1))
        assert np.abs(region - want).mean() <= 2
        assert np.abs(region[inner] - want[inner]).max() <= 8
        # outside the image but inside the cell: border density (black)
        if top > cell[1]:
            assert film[cell[1], cell[0] : cell[2]].max() == 0
        if left > cell[0]:
            assert film[cell[1] : cell[3], cell[0]].max() == 0
    x0, y0, x1, y1 = box.boxes[-1]
    empty = film[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)]
    assert empty.min() == 255  # empty image density WHITE


def test_monochrome1_is_inverted_and_none_keeps_size() -> None:
    values = gradient(10, 12)
    ds = picture(values, 8, "MONOCHROME1")
    assert np.array_equal(image_pixels(ds, False, "NORMAL"), 255 - values.astype(np.uint8))
    assert np.array_equal(image_pixels(ds, False, "REVERSE"), values.astype(np.uint8))
    session = new_session()
    box = session.create_film_box(None, film_box_attributes("STANDARD\\1,1", MagnificationType="NONE"), False)
    session.set_image_box(
        BASIC_GRAYSCALE_IMAGE_BOX, box.image_boxes[0].sop_instance_uid, image_set(picture(values), 1)
    )
    film = np.asarray(render_film(box, False, DPI))
    left, top = (280 - 12) // 2, (340 - 10) // 2
    assert np.array_equal(film[top : top + 10, left : left + 12], values.astype(np.uint8))


def test_color_image_box_renders_rgb_with_planar_configuration() -> None:
    session = PrintSession(DPI)
    session.create_film_session(None, Dataset())
    box = session.create_film_box(None, film_box_attributes("STANDARD\\1,1", FilmSizeID="8INX10IN"), True)
    rgb = np.zeros((20, 16, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30
    rgb[:10, :, 2] = 250
    item = Dataset()
    item.Rows, item.Columns = 20, 16
    item.SamplesPerPixel = 3
    item.PhotometricInterpretation = "RGB"
    item.PlanarConfiguration = 1  # colour-by-plane: R plane, G plane, B plane
    item.BitsAllocated = item.BitsStored = 8
    item.HighBit = 7
    item.PixelRepresentation = 0
    item.PixelData = rgb.transpose(2, 0, 1).tobytes()
    change = Dataset()
    change.ImageBoxPosition = 1
    change.BasicColorImageSequence = Sequence([item])
    assert box.image_boxes[0].sop_class_uid == "1.2.840.10008.5.1.1.4.1"
    assert (
        session.set_image_box("1.2.840.10008.5.1.1.4.1", box.image_boxes[0].sop_instance_uid, change) is None
    )
    film = render_film(box, True, DPI)
    assert film.mode == "RGB" and film.size == (160, 200)
    pixels = np.asarray(film, dtype=np.int16)
    # 16x20 fills the 160x200 film exactly (x10): top half blue 250, bottom half blue 30
    assert np.abs(pixels[50, 80] - (200, 100, 250)).max() <= 2
    assert np.abs(pixels[150, 80] - (200, 100, 30)).max() <= 2


def test_film_boxes_per_session_are_bounded() -> None:
    session = new_session()
    for _ in range(MAXIMUM_FILM_BOXES):
        session.create_film_box(None, film_box_attributes("STANDARD\\1,1"), False)
    with pytest.raises(ResourceLimitation):
        session.create_film_box(None, film_box_attributes("STANDARD\\1,1"), False)
    first = session.film_session.film_boxes[0]  # type: ignore[union-attr]
    session.delete_film_box(first.sop_instance_uid)
    with pytest.raises(DuplicatePrintInstance):  # an image box's UID is taken
        session.create_film_box(
            session.film_session.film_boxes[0].image_boxes[0].sop_instance_uid,  # type: ignore[union-attr]
            film_box_attributes("STANDARD\\1,1"),
            False,
        )


def lut_attributes(table: list[int] | None = None, shape: str | None = None, bits: int = 12) -> Dataset:
    ds = Dataset()
    if shape is not None:
        ds.PresentationLUTShape = shape
    if table is not None:
        item = Dataset()
        item.LUTDescriptor = [len(table), 0, bits]
        item.LUTData = table
        ds.PresentationLUTSequence = Sequence([item])
    return ds


def referencing(uid: str) -> Sequence:
    item = Dataset()
    item.ReferencedSOPClassUID = PRESENTATION_LUT
    item.ReferencedSOPInstanceUID = uid
    return Sequence([item])


def test_presentation_lut_rules() -> None:
    session = PrintSession(DPI)
    assert session.create_presentation_lut(None, lut_attributes(shape="IDENTITY")).table is None
    assert session.create_presentation_lut(None, lut_attributes(shape="LIN OD")).shape == "LIN OD"
    for bad in (
        lut_attributes(shape="INVERSE"),  # softcopy only
        lut_attributes(),
        lut_attributes([0, 4095], shape="IDENTITY"),
        lut_attributes([0, 5000]),  # beyond 12 bits
        lut_attributes([0, 100], bits=8),
    ):
        with pytest.raises(InvalidPresentationLut):
            session.create_presentation_lut(None, bad)
    lut = session.create_presentation_lut("1.2.3.99", lut_attributes([0, 4095]))
    with pytest.raises(DuplicatePrintInstance):
        session.create_presentation_lut("1.2.3.99", lut_attributes([0, 4095]))
    session.create_film_session(None, Dataset())
    attributes = film_box_attributes("STANDARD\\1,1")
    attributes.ReferencedPresentationLUTSequence = referencing("1.2.3.4")
    with pytest.raises(InvalidPrintAttribute) as caught:
        session.create_film_box(None, attributes, False)
    assert caught.value.tags == (0x20500500,)
    attributes.ReferencedPresentationLUTSequence = referencing(lut.sop_instance_uid)
    box = session.create_film_box(None, attributes, False)
    session.delete_presentation_lut(lut.sop_instance_uid)
    assert box.presentation_lut is lut  # the film box keeps what it referenced
    assert box.attributes()["PresentationLUT"] == "2 entries of 12 bits"
    with pytest.raises(NoSuchPrintInstance):
        session.delete_presentation_lut(lut.sop_instance_uid)


def test_presentation_lut_maps_values_to_p_values() -> None:
    """A gamma table on the film box; an inverting one on one image box overrides it."""
    session = PrintSession(DPI)
    gamma = [round(4095 * (v / 255) ** 2) for v in range(256)]
    film_lut = session.create_presentation_lut(None, lut_attributes(gamma))
    invert = session.create_presentation_lut(None, lut_attributes([1023 - v for v in range(1024)], bits=10))
    session.create_film_session(None, Dataset())
    attributes = film_box_attributes("STANDARD\\2,1", MagnificationType="REPLICATE")
    attributes.ReferencedPresentationLUTSequence = referencing(film_lut.sop_instance_uid)
    box = session.create_film_box(None, attributes, False)
    values = gradient(17, 7)  # 7x17 into a 140x340 box: x20 exactly, REPLICATE keeps values
    left, right = box.image_boxes
    session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, left.sop_instance_uid, image_set(picture(values), 1))
    change = image_set(picture(values), 2)
    change.ReferencedPresentationLUTSequence = referencing(invert.sop_instance_uid)
    session.set_image_box(BASIC_GRAYSCALE_IMAGE_BOX, right.sop_instance_uid, change)
    film = np.asarray(render_film(box, False, DPI), dtype=np.int64)
    for placed, want in (
        (film[0:340, 0:140], np.round(255 * (values / 255.0) ** 2)),
        (film[0:340, 140:280], 255 - np.round(values.astype(np.float64) * 1023 / 255) * 255 / 1023),
    ):
        sampled = placed[10::20, 10::20]  # the centre of each replicated pixel
        assert sampled.shape == values.shape
        assert np.abs(sampled - want).max() <= 1

"""Film box N-SET (PS3.4 H.4.2.2.2) and what the renderer makes of the film box options.

Pixel checks, with their tolerances:

* Magnification Type REPLICATE at a whole scale and NONE reproduce the image exactly
  (tolerance 0); BILINEAR and CUBIC make values between the image's own (a two-level
  checkerboard comes out with intermediate levels), and differ from each other;
* an image box's own Magnification Type wins over its film box's;
* Min/Max Density map white and black to ``255 * (1 - density / 300)`` within 1 level,
  after Polarity;
* Border and Empty Image Density (BLACK, WHITE, hundredths) fill exactly their level;
* Trim YES frames each image with :func:`trim_width` pixels of black on a white border
  (exactly), Trim NO leaves the border as it is.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.model.printing import (
    InvalidPrintAttribute,
    NoSuchPrintAttribute,
    NoSuchPrintInstance,
    PrintSession,
)
from dicomhub.services.printrender import render_film, trim_width

DPI = 20  # 8INX10IN portrait: 160 x 200 pixels


def picture(values: NDArray[np.uint8]) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = values.astype(np.uint8).tobytes()
    return ds


def attributes(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def session_with_box(layout: str = "STANDARD\\1,1", **values: object) -> tuple[PrintSession, str]:
    session = PrintSession(DPI)
    session.create_film_session(None, Dataset())
    box = session.create_film_box(
        None, attributes(ImageDisplayFormat=layout, FilmSizeID="8INX10IN", **values), False
    )
    return session, box.sop_instance_uid


def put(session: PrintSession, box_uid: str, position: int, values: NDArray[np.uint8], **extra: str) -> None:
    box = session._film_boxes[box_uid]
    change = attributes(ImageBoxPosition=position, **extra)
    change.BasicGrayscaleImageSequence = Sequence([picture(values)])
    image = box.image_boxes[position - 1]
    session.set_image_box(image.sop_class_uid, image.sop_instance_uid, change)


def film(session: PrintSession, box_uid: str) -> NDArray[np.int16]:
    return np.asarray(render_film(session._film_boxes[box_uid], False, DPI), dtype=np.int16)


CHECKER = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)


# -- N-SET --------------------------------------------------------------------


def test_n_set_changes_what_h_4_2_2_2_allows() -> None:
    session, uid = session_with_box()
    session.set_film_box(
        uid,
        attributes(
            MagnificationType="CUBIC",
            SmoothingType="MEDIUM",
            BorderDensity="WHITE",
            EmptyImageDensity="120",
            MinDensity=20,
            MaxDensity=280,
            Trim="YES",
            ConfigurationInformation="no options",
            Illumination=2000,
        ),
    )
    kept = session._film_boxes[uid].attributes()
    assert kept["MagnificationType"] == "CUBIC" and kept["SmoothingType"] == "MEDIUM"
    assert (kept["BorderDensity"], kept["EmptyImageDensity"], kept["Trim"]) == ("WHITE", "120", "YES")
    assert (kept["MinDensity"], kept["MaxDensity"]) == ("20", "280")
    assert kept["ConfigurationInformation"] == "no options"


@pytest.mark.parametrize(
    ("change", "tags"),
    [
        ({"ImageDisplayFormat": "STANDARD\\2,2"}, (0x20100010,)),
        ({"FilmSizeID": "14INX17IN", "Trim": "YES"}, (0x20100050,)),
        ({"FilmOrientation": "LANDSCAPE"}, (0x20100040,)),
        ({"PatientID": "X"}, (0x00100020,)),
    ],
)
def test_n_set_of_attributes_fixed_at_n_create_is_no_such_attribute(
    change: dict[str, str], tags: tuple[int, ...]
) -> None:
    session, uid = session_with_box()
    before = session._film_boxes[uid].attributes()
    with pytest.raises(NoSuchPrintAttribute) as caught:
        session.set_film_box(uid, attributes(**change))
    assert caught.value.tags == tags
    assert session._film_boxes[uid].attributes() == before  # all or nothing


@pytest.mark.parametrize(
    "change",
    [
        {"MagnificationType": "SPLINE"},
        {"BorderDensity": "GRAY"},
        {"EmptyImageDensity": "301"},
        {"MaxDensity": 400},
        {"MinDensity": 200, "MaxDensity": 100},
        {"MinDensity": 300},  # above the default Max Density
        {"Trim": "MAYBE", "MagnificationType": "NONE"},
    ],
)
def test_n_set_of_unsupported_values_is_invalid_and_changes_nothing(change: dict[str, object]) -> None:
    session, uid = session_with_box()
    before = session._film_boxes[uid].attributes()
    with pytest.raises(InvalidPrintAttribute):
        session.set_film_box(uid, attributes(**change))
    assert session._film_boxes[uid].attributes() == before


def test_n_set_references_presentation_luts_of_the_association_only() -> None:
    session, uid = session_with_box()
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.1.23"
    reference.ReferencedSOPInstanceUID = "1.2.3.4"
    change = Dataset()
    change.ReferencedPresentationLUTSequence = Sequence([reference])
    with pytest.raises(InvalidPrintAttribute):
        session.set_film_box(uid, change)
    lut = session.create_presentation_lut("1.2.3.4", attributes(PresentationLUTShape="IDENTITY"))
    session.set_film_box(uid, change)
    assert session._film_boxes[uid].presentation_lut is lut
    with pytest.raises(NoSuchPrintInstance):
        session.set_film_box("1.2.3.5", attributes(Trim="YES"))


# -- rendering ----------------------------------------------------------------


def test_replicate_at_a_whole_scale_and_none_are_exact() -> None:
    session, uid = session_with_box(MagnificationType="REPLICATE", BorderDensity="WHITE")
    put(session, uid, 1, CHECKER)  # 8x8 into 160x200: scale 20, 160x160 centred at y 20
    pixels = film(session, uid)
    assert np.array_equal(pixels[20:180, :], np.kron(CHECKER, np.ones((20, 20), np.uint8)))
    assert (pixels[:20] == 255).all() and (pixels[180:] == 255).all()

    session, uid = session_with_box(MagnificationType="NONE", BorderDensity="WHITE")
    put(session, uid, 1, CHECKER)
    pixels = film(session, uid)
    assert np.array_equal(pixels[96:104, 76:84], CHECKER)  # own size, centred
    assert (pixels[:96] == 255).all()


def test_bilinear_and_cubic_interpolate() -> None:
    results = {}
    for magnification in ("BILINEAR", "CUBIC"):
        session, uid = session_with_box(MagnificationType=magnification)
        put(session, uid, 1, CHECKER)
        region = film(session, uid)[20:180, :]
        levels = np.unique(region)
        assert ((levels > 10) & (levels < 245)).sum() > 10, f"{magnification}: no intermediate levels"
        results[magnification] = region
    assert np.abs(results["BILINEAR"] - results["CUBIC"]).max() > 5


def test_image_box_magnification_wins_over_the_film_box() -> None:
    session, uid = session_with_box("STANDARD\\2,1", MagnificationType="REPLICATE")
    put(session, uid, 1, CHECKER)
    put(session, uid, 2, CHECKER, MagnificationType="BILINEAR")
    pixels = film(session, uid)  # two 80x200 cells: 8x8 at scale 10, 80x80 at y 60
    left, right = pixels[60:140, 0:80], pixels[60:140, 80:160]
    assert np.array_equal(left, np.kron(CHECKER, np.ones((10, 10), np.uint8)))
    assert set(np.unique(right).tolist()) - {0, 255}


@pytest.mark.parametrize("polarity", ["NORMAL", "REVERSE"])
def test_min_and_max_density(polarity: str) -> None:
    values = np.zeros((8, 8), np.uint8)
    values[:, 4:] = 255  # left half black, right half white
    session, uid = session_with_box(MagnificationType="REPLICATE", MinDensity=50, MaxDensity=250)
    put(session, uid, 1, values, Polarity=polarity)
    pixels = film(session, uid)[20:180, :]
    white, black = 255 * (1 - 50 / 300), 255 * (1 - 250 / 300)  # 212.5, 42.5
    left, right = (black, white) if polarity == "NORMAL" else (white, black)
    assert np.abs(pixels[:, :80] - left).max() <= 1
    assert np.abs(pixels[:, 80:] - right).max() <= 1


def test_border_and_empty_image_density() -> None:
    session, uid = session_with_box("STANDARD\\2,1", BorderDensity="150", EmptyImageDensity="WHITE")
    put(session, uid, 1, np.full((8, 8), 7, np.uint8))
    pixels = film(session, uid)
    assert (pixels[:20, :80] == 128).all()  # border around the image: 255 * (1 - 150/300)
    assert (pixels[:, 80:] == 255).all()  # the empty box
    session.set_film_box(uid, attributes(BorderDensity="BLACK", EmptyImageDensity="300"))
    pixels = film(session, uid)
    assert (pixels[:20, :80] == 0).all() and (pixels[:, 80:] == 0).all()


def test_trim_draws_a_box_around_each_image() -> None:
    width = trim_width(DPI)
    session, uid = session_with_box("STANDARD\\2,1", BorderDensity="WHITE", MagnificationType="NONE")
    put(session, uid, 1, np.full((80, 40), 200, np.uint8))  # own size in an 80x200 cell: at (20, 60)
    put(session, uid, 2, np.full((80, 40), 200, np.uint8))
    untrimmed = film(session, uid)
    assert (untrimmed[60 - width : 60, 20:60] == 255).all()
    session.set_film_box(uid, attributes(Trim="YES"))
    pixels = film(session, uid)
    for x in (20, 100):
        frame = pixels[60 - width : 140 + width, x - width : x + 40 + width]
        inside = frame[width:-width, width:-width]
        assert (inside == 200).all()  # the image is untouched
        assert (frame[:width] == 0).all() and (frame[-width:] == 0).all()
        assert (frame[:, :width] == 0).all() and (frame[:, -width:] == 0).all()
    changed = np.argwhere(pixels != untrimmed)
    assert len(changed) == 2 * 2 * width * (40 + 80 + 2 * width)  # nothing else drawn


def test_trim_of_an_image_filling_its_cell_stays_in_the_cell() -> None:
    width = trim_width(DPI)
    session, uid = session_with_box("STANDARD\\2,1", BorderDensity="WHITE", Trim="YES")
    put(session, uid, 1, np.full((4, 2), 200, np.uint8))  # fills the 80 columns: 80x160 at y 20
    pixels = film(session, uid)
    assert (pixels[20 - width : 20, 0:80] == 0).all() and (pixels[180 : 180 + width, 0:80] == 0).all()
    # at the cell's sides the frame covers the image's outermost columns
    assert (pixels[20:180, :width] == 0).all() and (pixels[20:180, 80 - width : 80] == 0).all()
    assert (pixels[20:180, width : 80 - width] == 200).all()

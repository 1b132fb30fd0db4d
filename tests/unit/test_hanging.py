"""Hanging protocols: choosing a protocol and laying a study out (pure), and reading
``[[hanging_protocol]]`` tables from the configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError
from dicomhub.model.hanging import (
    DisplaySet,
    HangingProtocol,
    ViewportSelector,
    hang,
    parse_hanging_protocols,
)


def ds(uid: str, modality: str, images: int = 1, **kw: object) -> DisplaySet:
    return DisplaySet("1.2.3", uid, modality, images=images, **kw)  # type: ignore[arg-type]


def shown(layout_viewports: tuple[DisplaySet | None, ...]) -> list[str | None]:
    return [(v.sop_instance_uid or v.series_instance_uid) if v else None for v in layout_viewports]


def test_ct_hangs_the_largest_series_first_and_a_prior_beside_it() -> None:
    scout, axial, mr = ds("scout", "CT", 2), ds("axial", "CT", 300), ds("mr", "MR", 20)
    layout = hang((), [scout, mr, axial])
    assert (layout.protocol, layout.rows, layout.columns) == ("ct", 1, 2)
    assert shown(layout.viewports) == ["axial", "mr"]
    old = ds("old-axial", "CT", 250, prior=True)
    with_prior = hang((), [axial], [ds("old-pet", "PT", 90, prior=True), old])
    assert (with_prior.rows, with_prior.columns) == (1, 2)
    assert shown(with_prior.viewports) == ["axial", "old-axial"]


def test_radiographs_one_per_image_up_to_2x2() -> None:
    one = hang((), [ds("s", "DX", sop_instance_uid="i1")])
    assert (one.protocol, one.rows, one.columns, shown(one.viewports)) == ("radiography", 1, 1, ["i1"])
    three = hang((), [ds("s", "CR", sop_instance_uid=f"i{n}") for n in range(1, 4)])
    assert (three.rows, three.columns) == (2, 2)
    assert shown(three.viewports) == ["i1", "i2", "i3", None]


def test_mammography_four_up_by_laterality_and_view() -> None:
    views = [("L", "MLO"), ("R", "CC"), ("L", "CC"), ("R", "MLO")]
    images = [ds("s", "MG", laterality=lat, view=v, sop_instance_uid=f"{lat}{v}") for lat, v in views]
    layout = hang((), images)
    assert (layout.protocol, layout.rows, layout.columns) == ("mammography", 2, 2)
    assert shown(layout.viewports) == ["RCC", "LCC", "RMLO", "LMLO"]
    # A missing view leaves its viewport empty rather than moving the others.
    assert shown(hang((), images[1:]).viewports) == ["RCC", "LCC", "RMLO", None]


def test_configured_protocols_come_first_and_match_descriptions() -> None:
    (brain,) = parse_hanging_protocols(
        [
            {
                "name": "brain-mr",
                "modalities": ["mr"],
                "rows": 1,
                "columns": 2,
                "viewports": [{"description": "*flair*"}, {"description": "T1*"}],
            }
        ]
    )
    assert brain.viewports == (ViewportSelector(description="*flair*"), ViewportSelector(description="T1*"))
    series = [
        ds("t1", "MR", 20, series_description="t1 mprage"),
        ds("dwi", "MR", 60, series_description="DWI"),
        ds("flair", "MR", 30, series_description="Ax FLAIR"),
    ]
    layout = hang((brain,), series)
    assert layout.protocol == "brain-mr"
    assert shown(layout.viewports) == ["flair", "t1"]
    # Without it, the built-in MR protocol: up to 2 x 2, largest first.
    assert shown(hang((), series).viewports) == ["dwi", "flair", "t1", None]
    assert hang((brain,), [ds("x", "CT")]).protocol == "ct"
    assert hang((), [ds("x", "US")]).protocol == "default"


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ({"modalities": ["CT"]}, "name is required"),
        ({"name": "a"}, "modalities must be a list"),
        ({"name": "a", "modalities": ["CT"], "rows": 5}, "rows must be a whole number from 1 to 4"),
        ({"name": "a", "modalities": ["CT"], "viewports": [{}, {}]}, "do not fit in 1 x 1"),
        ({"name": "a", "modalities": ["CT"], "viewports": [{"colour": "red"}]}, "unknown key 'colour'"),
        ({"name": "a", "modalities": ["CT"], "layout": "2x2"}, "unknown key 'layout'"),
    ],
)
def test_bad_tables_are_refused(table: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        parse_hanging_protocols([table])


def test_read_from_the_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text(
        '[[hanging_protocol]]\nname = "chest"\nmodalities = ["CR"]\nrows = 1\ncolumns = 2\n'
        'viewports = [{ view = "PA" }, { view = "LAT" }]\n'
    )
    settings = load_settings(config_file=config)
    assert settings.hanging_protocols == (
        HangingProtocol(
            "chest", ("CR",), 1, 2, (ViewportSelector(view="PA"), ViewportSelector(view="LAT")), False
        ),
    )

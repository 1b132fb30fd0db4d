"""The Print SCU without a network: printers of the configuration, request checks, the
JSON body of ``POST /print/requests``, box sizes and how the service fills films (with a
fake printer and a fake WADO service); the DIMSE sequence runs against DCMTK in
tests/e2e/test_print_dcmtk.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError, InvalidRequest, NotFound
from dicomhub.model.audit import AuditAction, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.printclient import (
    FilmImage,
    FilmOutcome,
    Printer,
    PrinterRefused,
    PrintOutcome,
    PrintRequest,
    check_print_request,
    parse_printer,
    printers_table,
)
from dicomhub.model.records import InstanceRow
from dicomhub.services.printclient import PrintClientService, box_pixels, fit_to_box
from dicomhub.services.wado import RenderSource
from dicomhub.web.printclient import print_request_from_json


def test_parse_printer() -> None:
    assert parse_printer("LASER=LASERCAM@10.0.0.2:104") == Printer("LASER", "LASERCAM", "10.0.0.2", 104)
    assert parse_printer("C=CP@host:11112:color").color is True
    assert str(parse_printer("C=CP@host:11112:color")) == "C=CP@host:11112:color"
    for bad in ("LASER", "LASER=@h:1", "L=A@h", "L=A@h:x", "L=A@h:0", "L=" + "A" * 17 + "@h:1"):
        with pytest.raises(ConfigurationError):
            parse_printer(bad)


def test_printers_table() -> None:
    (printer,) = printers_table({"LASER": {"aet": "LC", "host": "h", "port": 104, "color": True, "dpi": 100}})
    assert printer == Printer("LASER", "LC", "h", 104, True, 100)
    for bad in (
        {"aet": "LC", "host": "h"},
        {"aet": "LC", "host": "h", "port": "104"},
        {"aet": "LC", "host": "h", "port": 104, "colour": True},
        {"aet": "LC", "host": "h", "port": 104, "dpi": 5},
        {"aet": "LC", "host": "h", "port": 104, "color": "yes"},
    ):
        with pytest.raises(ConfigurationError):
            printers_table({"LASER": bad})


def test_printers_setting(tmp_path: Any) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text('[printers.LASER]\naet = "LC"\nhost = "127.0.0.1"\nport = 104\n')
    assert load_settings(config_file=config, environ={}).printers == (
        Printer("LASER", "LC", "127.0.0.1", 104),
    )
    environ = {"DICOMHUB_PRINTERS": "A=AA@h:1,B=BB@h:2:color"}
    assert [p.name for p in load_settings(environ=environ).printers] == ["A", "B"]
    with pytest.raises(ConfigurationError):
        load_settings(environ={"DICOMHUB_PRINTERS": "A=AA"})


def test_check_print_request() -> None:
    checked = check_print_request(
        PrintRequest("LASER", "1.2", layout="standard\\2,2", film_size="8inx10in", medium="blue film")
    )
    assert (checked.layout, checked.film_size, checked.medium) == ("STANDARD\\2,2", "8INX10IN", "BLUE FILM")
    for bad in (
        PrintRequest("LASER", "1.2", layout="STANDARD\\0,2"),
        PrintRequest("LASER", "1.2", film_size="1INX1IN"),
        PrintRequest("LASER", "1.2", orientation="SIDEWAYS"),
        PrintRequest("LASER", "1.2", medium="VELLUM"),
        PrintRequest("LASER", "1.2", copies=0),
        PrintRequest("", "1.2"),
    ):
        with pytest.raises(InvalidRequest):
            check_print_request(bad)


def test_print_request_from_json() -> None:
    request = print_request_from_json(
        {"printer": "LASER", "study": "1.2", "instances": ["1.2.3"], "copies": 2, "color": False}
    )
    assert request == PrintRequest("LASER", "1.2", instances=("1.2.3",), copies=2, color=False)
    for bad in (
        [],
        {"study": "1.2"},
        {"printer": "LASER"},
        {"printer": "LASER", "study": "1.2", "copies": "2"},
        {"printer": "LASER", "study": "1.2", "copies": True},
        {"printer": "LASER", "study": "1.2", "instances": "1.2.3"},
        {"printer": "LASER", "study": "1.2", "layout": 4},
        {"printer": "LASER", "study": "1.2", "colour": True},
    ):
        with pytest.raises(InvalidRequest):
            print_request_from_json(bad)


def test_box_pixels_and_fit() -> None:
    # 14INX17IN at 100 dpi: 1400 x 1700; STANDARD\2,2 boxes 700 x 850; landscape swaps.
    assert box_pixels(PrintRequest("P", "1", layout="STANDARD\\2,2"), 100) == (700, 850)
    assert box_pixels(PrintRequest("P", "1", layout="STANDARD\\2,2", orientation="LANDSCAPE"), 100) == (
        850,
        700,
    )
    assert box_pixels(PrintRequest("P", "1", layout="ROW\\1,3"), 100) == (467, 850)
    small = np.zeros((100, 200), dtype=np.uint8)
    assert fit_to_box(small, (700, 850)) is small
    large = np.full((1000, 2000, 3), 7, dtype=np.uint8)
    fitted = fit_to_box(large, (700, 850))
    assert fitted.shape == (350, 700, 3) and int(fitted.mean()) == 7


class FakeWado:
    def __init__(self, sources: dict[str, RenderSource]) -> None:
        self.sources = sources

    def instances(
        self, caller: Caller, study: str, series: str | None = None, instance: str | None = None
    ) -> list[InstanceRow]:
        rows = [
            InstanceRow(
                i, uid, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", f"k{i}", 1, "", "", study, "s"
            )
            for i, uid in enumerate(self.sources)
            if instance is None or uid == instance
        ]
        if study != "1.2" or not rows:
            raise NotFound(f"no study {study}")
        return rows

    def render_source(self, row: InstanceRow, frame: int = 1) -> RenderSource:
        return self.sources[row.sop_instance_uid]


def grey(value: int, window: tuple[float, float] | None = None) -> RenderSource:
    pixels = np.full((4, 6), value, dtype=np.uint16)
    center, width = window or (None, None)
    return RenderSource(pixels, "MONOCHROME2", 1.0, 0.0, center, width, 12, 0)


def rgb() -> RenderSource:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    return RenderSource(pixels, "RGB", 1.0, 0.0, None, None, 8, 0)


class FakePrinter:
    def __init__(self) -> None:
        self.calls: list[tuple[Printer, PrintRequest, Sequence[Sequence[FilmImage]], bool]] = []
        self.refuse: str | None = None

    def __call__(
        self, printer: Printer, request: PrintRequest, films: Sequence[Sequence[FilmImage]], color: bool
    ) -> PrintOutcome:
        self.calls.append((printer, request, films, color))
        if self.refuse:
            raise PrinterRefused(self.refuse, 0x0106)
        outcomes = tuple(
            FilmOutcome(n, f"fb{n}", tuple(i.sop_instance_uid for i in film), 0)
            for n, film in enumerate(films, 1)
        )
        return PrintOutcome(printer.name, "fs", color, outcomes)


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def service(
    sources: dict[str, RenderSource], printers: Sequence[Printer], audit: FakeAudit | None = None
) -> tuple[PrintClientService, FakePrinter]:
    fake = FakePrinter()
    return PrintClientService(FakeWado(sources), printers, fake, audit), fake  # type: ignore[arg-type]


GREY = Printer("GREY", "GP", "h", 104)
COLOR = Printer("COLOR", "CP", "h", 105, color=True)


def test_service_fills_films_in_order_with_windowed_images() -> None:
    sources = {f"1.2.{n}": grey(n * 100, (250.0, 501.0)) for n in range(5)}
    svc, fake = service(sources, [GREY])
    outcome = svc.print_instances(PrintRequest("GREY", "1.2", layout="STANDARD\\2,2"), Caller.cli())
    assert [len(f.instances) for f in outcome.films] == [4, 1]
    ((_printer, _request, films, color),) = fake.calls
    assert color is False
    images = [image for film in films for image in film]
    assert [i.sop_instance_uid for i in images] == list(sources)
    # window 250/501, ((v - 249.5) / 500 + 0.5) * 255 (PS3.3 C.11.2.1.2.1): 100 -> 51.25
    assert [i.pixels[0] for i in images] == [0, 51, 102, 153, 204]
    assert all((i.rows, i.columns, len(i.pixels)) == (4, 6, 24) for i in images)


def test_service_instances_and_printers() -> None:
    sources = {"1.2.1": grey(1), "1.2.2": grey(2), "1.2.3": grey(3)}
    svc, fake = service(sources, [GREY])
    outcome = svc.print_instances(PrintRequest("GP", "1.2", instances=("1.2.3", "1.2.1")), Caller.cli())
    assert [f.instances for f in outcome.films] == [("1.2.3",), ("1.2.1",)]  # by AE title, in the order given
    with pytest.raises(NotFound, match="unknown printer"):
        svc.print_instances(PrintRequest("NOSUCH", "1.2"), Caller.cli())
    with pytest.raises(NotFound, match="no instance 1.2.9"):
        svc.print_instances(PrintRequest("GREY", "1.2", instances=("1.2.1", "1.2.9")), Caller.cli())
    with pytest.raises(NotFound):
        svc.print_instances(PrintRequest("GREY", "9.9"), Caller.cli())
    with pytest.raises(InvalidRequest, match="colour"):
        svc.print_instances(PrintRequest("GREY", "1.2", color=True), Caller.cli())
    assert len(fake.calls) == 1


def test_service_colour() -> None:
    sources = {"1.2.1": rgb(), "1.2.2": grey(5)}
    svc, fake = service(sources, [GREY, COLOR])
    svc.print_instances(PrintRequest("COLOR", "1.2", layout="STANDARD\\2,1"), Caller.cli())
    ((_p, _r, films, color),) = fake.calls
    assert color is True
    first, second = films[0]
    assert first.color and len(first.pixels) == 4 * 6 * 3 and first.pixels[:3] == bytes([200, 0, 0])
    assert second.color and len(second.pixels) == 4 * 6 * 3  # grey sent as RGB on a colour film
    fake.calls.clear()
    svc.print_instances(PrintRequest("GREY", "1.2", layout="STANDARD\\2,1"), Caller.cli())
    ((_p, _r, films, color),) = fake.calls
    assert color is False and len(films[0][0].pixels) == 24
    assert films[0][0].pixels[0] == round(200 * 0.299)  # the luminance of (200, 0, 0)


def test_service_audits_an_export_to_the_printer() -> None:
    audit = FakeAudit()
    svc, fake = service({"1.2.1": grey(1), "1.2.2": grey(2)}, [GREY], audit)
    svc.print_instances(PrintRequest("GREY", "1.2", layout="STANDARD\\2,1"), Caller.cli())
    fake.refuse = "printer GREY refused N-CREATE Basic Film Box with status 0x0106"
    with pytest.raises(PrinterRefused):
        svc.print_instances(PrintRequest("GREY", "1.2"), Caller.cli())
    done, refused = audit.events
    assert done.action is AuditAction.EXPORT and done.outcome is AuditOutcome.SUCCESS
    assert done.detail["destination"] == "GP"
    assert done.studies[0].study_instance_uid == "1.2" and done.studies[0].number_of_instances == 2
    assert refused.outcome is AuditOutcome.MAJOR_FAILURE and "0x0106" in refused.detail["reason"]


def test_service_refuses_more_films_than_a_session_holds() -> None:
    sources = {f"1.2.{n}": grey(n) for n in range(101)}
    svc, fake = service(sources, [GREY])
    with pytest.raises(InvalidRequest, match="more than 100 films"):
        svc.print_instances(PrintRequest("GREY", "1.2"), Caller.cli())
    assert fake.calls == []
    outcome = svc.print_instances(PrintRequest("GREY", "1.2", layout="STANDARD\\2,1"), Caller.cli())
    assert len(outcome.films) == 51

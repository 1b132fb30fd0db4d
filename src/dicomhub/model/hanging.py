"""Hanging protocols: which series (or images) of a study go into which viewport.

A protocol applies to studies holding one of its modalities; it names a grid
(rows x columns) and, per viewport, what should hang there: a selector over
display sets (modality, series description wildcard, body part, laterality,
view position, current or prior study). :func:`hang` is a pure function from the
display sets of a study (and of its prior) to a :class:`Layout`, so that the
rules are unit-tested here and the page only draws what it is given.

A display set is a series, except for the projection modalities (CR, DX, DR, MG,
IO, PX, XA... listed in :data:`PER_IMAGE`), where each image is one: a
mammogram's four views are four images of one series, and only their own
Image Laterality and View Position tell them apart.

Protocols come from ``[[hanging_protocol]]`` tables of the configuration file,
tried in order before :data:`DEFAULT_PROTOCOLS`; the first whose ``modalities``
include one of the study's wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicomhub.errors import ConfigurationError
from dicomhub.model.query import Condition, Wildcard, matches
from dicomhub.model.tables import named_tables

__all__ = [
    "DEFAULT_PROTOCOLS",
    "PER_IMAGE",
    "DisplaySet",
    "HangingProtocol",
    "Layout",
    "ViewportSelector",
    "choose_protocol",
    "hang",
    "parse_hanging_protocols",
]

# Modalities whose images are each a display set of their own.
PER_IMAGE = frozenset({"CR", "DX", "DR", "MG", "IO", "PX", "RG"})
_MAX_GRID = 4


@dataclass(frozen=True, slots=True)
class DisplaySet:
    """What one viewport can show: a series, or one image of it (``sop_instance_uid``)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    series_description: str = ""
    body_part: str = ""
    laterality: str = ""  # Image Laterality, else Laterality
    view: str = ""  # View Position (CC, MLO, AP, PA, LAT...)
    images: int = 1
    series_number: int = 0
    sop_instance_uid: str | None = None
    prior: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "study": self.study_instance_uid,
            "series": self.series_instance_uid,
            "instance": self.sop_instance_uid,
            "modality": self.modality,
            "description": self.series_description,
            "laterality": self.laterality,
            "view": self.view,
            "images": self.images,
            "prior": self.prior,
        }


@dataclass(frozen=True, slots=True)
class ViewportSelector:
    """What one viewport wants; an empty field matches anything. ``description`` is a
    DICOM wildcard (``*``, ``?``), case-insensitive."""

    modality: str = ""
    description: str = ""
    body_part: str = ""
    laterality: str = ""
    view: str = ""
    prior: bool = False

    def accepts(self, item: DisplaySet) -> bool:
        if item.prior != self.prior:
            return False
        for wanted, have in (
            (self.modality, item.modality),
            (self.body_part, item.body_part),
            (self.laterality, item.laterality),
            (self.view, item.view),
        ):
            if wanted and wanted.upper() != have.upper():
                return False
        if self.description:
            condition = Condition("SeriesDescription", "PN", Wildcard(self.description))
            # PN: matched case-insensitively (the query model folds person names only).
            return matches(condition, item.series_description or "")
        return True


@dataclass(frozen=True, slots=True)
class HangingProtocol:
    """A grid of ``rows`` x ``columns`` viewports for studies of ``modalities``.

    ``viewports`` are filled in order, each with the first unused display set its
    selector accepts (a viewport without a selector takes the next unused current
    one, largest first); ``priors`` adds a right-hand column for the same patient's
    previous study of a matching modality."""

    name: str
    modalities: tuple[str, ...]
    rows: int = 1
    columns: int = 1
    viewports: tuple[ViewportSelector | None, ...] = ()
    priors: bool = False


@dataclass(frozen=True, slots=True)
class Layout:
    """The result: the protocol applied, the grid and what hangs in each viewport
    (row by row; None: left empty)."""

    protocol: str
    rows: int
    columns: int
    viewports: tuple[DisplaySet | None, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "rows": self.rows,
            "columns": self.columns,
            "viewports": [v.as_json() if v else None for v in self.viewports],
        }


def _mammo(laterality: str, view: str, prior: bool = False) -> ViewportSelector:
    return ViewportSelector(modality="MG", laterality=laterality, view=view, prior=prior)


DEFAULT_PROTOCOLS: tuple[HangingProtocol, ...] = (
    # Screening mammography, the customary 4-up: right views on the left, as if facing the patient.
    HangingProtocol(
        "mammography",
        ("MG",),
        2,
        2,
        (_mammo("R", "CC"), _mammo("L", "CC"), _mammo("R", "MLO"), _mammo("L", "MLO")),
    ),
    # Axial CT: the largest series alone, its neighbours beside it.
    HangingProtocol("ct", ("CT", "PT"), 1, 2, (None, None), priors=True),
    HangingProtocol("mr", ("MR",), 2, 2, (None, None, None, None)),
    HangingProtocol("radiography", ("CR", "DX", "DR", "RG"), 2, 2, (None, None, None, None), priors=False),
)
FALLBACK = HangingProtocol("default", (), 2, 2, (None, None, None, None))


def choose_protocol(protocols: Sequence[HangingProtocol], modalities: Sequence[str]) -> HangingProtocol:
    """The first of ``protocols`` then :data:`DEFAULT_PROTOCOLS` for a study of ``modalities``."""
    present = {m.upper() for m in modalities}
    for protocol in (*protocols, *DEFAULT_PROTOCOLS):
        if present & set(protocol.modalities):
            return protocol
    return FALLBACK


def _size_order(item: DisplaySet) -> tuple[int, int, str]:
    # Largest first (a CT's thin axial reconstruction before its scout), then by number.
    return (-item.images, item.series_number, item.sop_instance_uid or "")


def hang(
    protocols: Sequence[HangingProtocol],
    current: Sequence[DisplaySet],
    prior: Sequence[DisplaySet] = (),
) -> Layout:
    """Lay ``current`` (and the ``prior`` study's display sets) out by the protocol that
    applies to the current study's modalities.

    The grid keeps its shape when a study holds fewer display sets than it has
    viewports, except for selector-less protocols, which shrink to what there is
    (one radiograph: one viewport). Display sets left over are not shown: the
    study page lists every series.
    """
    protocol = choose_protocol(protocols, [d.modality for d in current])
    remaining = sorted((d for d in current if not d.prior), key=_size_order)
    chosen: list[DisplaySet | None] = []
    for selector in protocol.viewports:
        pick = next((d for d in remaining if selector is None or selector.accepts(d)), None)
        if pick is not None:
            remaining.remove(pick)
        chosen.append(pick)
    rows, columns = protocol.rows, protocol.columns
    if all(s is None for s in protocol.viewports):
        shown = [c for c in chosen if c is not None]
        count = max(1, len(shown))
        columns = min(columns, count)
        rows = min(rows, -(-count // columns))
        chosen = [*shown, *([None] * (rows * columns - len(shown)))][: rows * columns]
    if protocol.priors and prior:
        modalities = {d.modality for d in chosen if d is not None}
        candidates = sorted((d for d in prior if d.modality in modalities), key=_size_order)
        # One more column: row r's prior beside row r's current.
        grid: list[DisplaySet | None] = []
        for r in range(rows):
            grid += chosen[r * columns : (r + 1) * columns]
            grid.append(candidates[r] if r < len(candidates) else None)
        return Layout(protocol.name, rows, columns + 1, tuple(grid))
    return Layout(protocol.name, rows, columns, tuple(chosen))


# ---------------------------------------------------------------- configuration

_PROTOCOL_KEYS = frozenset({"name", "modalities", "rows", "columns", "viewports", "priors"})
_SELECTOR_KEYS = frozenset({"modality", "description", "body_part", "laterality", "view", "prior"})


def _text(table: Mapping[str, Any], key: str, where: str, size: int = 64) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or len(value) > size:
        raise ConfigurationError(f"{where}: {key} must be text of at most {size} characters")
    return value.strip()


def _selector(table: Any, where: str) -> ViewportSelector | None:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f'{where}: a viewport is a table such as {{ modality = "MG", view = "CC" }}')
    unknown = set(table) - _SELECTOR_KEYS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_SELECTOR_KEYS))})"
        )
    prior = table.get("prior", False)
    if not isinstance(prior, bool):
        raise ConfigurationError(f"{where}: prior must be true or false")
    selector = ViewportSelector(
        modality=_text(table, "modality", where, 16).upper(),
        description=_text(table, "description", where),
        body_part=_text(table, "body_part", where, 16).upper(),
        laterality=_text(table, "laterality", where, 1).upper(),
        view=_text(table, "view", where, 16).upper(),
        prior=prior,
    )
    return None if selector == ViewportSelector() else selector


def _protocol(table: Mapping[str, Any], where: str) -> HangingProtocol:
    unknown = set(table) - _PROTOCOL_KEYS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_PROTOCOL_KEYS))})"
        )
    name = _text(table, "name", where, 32)
    if not name:
        raise ConfigurationError(f"{where}: name is required")
    modalities = table.get("modalities")
    if (
        not isinstance(modalities, list)
        or not modalities
        or not all(isinstance(m, str) and m for m in modalities)
    ):
        raise ConfigurationError(f'{where}: modalities must be a list of modalities, such as ["CT"]')
    size = {}
    for key in ("rows", "columns"):
        value = table.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_GRID:
            raise ConfigurationError(f"{where}: {key} must be a whole number from 1 to {_MAX_GRID}")
        size[key] = value
    raw = table.get("viewports", [])
    if not isinstance(raw, list):
        raise ConfigurationError(f"{where}: viewports must be a list of tables")
    if len(raw) > size["rows"] * size["columns"]:
        raise ConfigurationError(
            f"{where}: {len(raw)} viewports do not fit in {size['rows']} x {size['columns']}"
        )
    viewports = tuple(_selector(v, f"{where} viewport {i + 1}") for i, v in enumerate(raw))
    # Viewports not described take the next series, largest first.
    viewports += (None,) * (size["rows"] * size["columns"] - len(viewports))
    priors = table.get("priors", False)
    if not isinstance(priors, bool):
        raise ConfigurationError(f"{where}: priors must be true or false")
    return HangingProtocol(
        name, tuple(m.strip().upper() for m in modalities), size["rows"], size["columns"], viewports, priors
    )


def parse_hanging_protocols(value: Any) -> tuple[HangingProtocol, ...]:
    """The ``[[hanging_protocol]]`` tables of a configuration file, checked (names unique).

    Raises
    ------
    ConfigurationError
        Naming the table and the key that is wrong.
    """
    return named_tables(value, HangingProtocol, _protocol, "hanging_protocol", "hanging protocols")

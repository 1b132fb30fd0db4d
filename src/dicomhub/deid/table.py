"""PS3.15 Table E.1-1, read once from the copy shipped in ``data/``, resolved per set of options.

The table gives, per attribute, the Basic Profile action and the action of
each option that concerns it. :func:`compile_actions` turns it into one
``tag -> action`` map for a given :class:`Options`, so de-identifying an
element is a dictionary look-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from dicomhub.deid.options import OPTION_COLUMNS, Options

__all__ = [
    "ActionMap",
    "TableRow",
    "compile_actions",
    "resolve_combined",
    "row_action",
    "table_rows",
]

# The standard's combined actions keep whichever alternative the attribute's
# Type in the IOD needs (Type 3: X, Type 2: Z, Type 1: D or U): the engine
# decides by Type where it knows the IOD (iod_types.py). Where it does not, it
# takes the last alternative, the one that keeps any IOD conformant: Z, D and
# U values carry nothing identifying, so this removes no less than X would.
_COMBINED: dict[str, str] = {
    "X/Z": "Z",
    "X/D": "D",
    "X/Z/D": "D",
    "Z/D": "D",
    "X/Z/U*": "U",
}


@dataclass(frozen=True, slots=True)
class TableRow:
    tag: str  # as printed in the standard, e.g. "(0010,0010)" or "(50XX,XXXX)"
    name: str
    basic: str  # the Basic Profile action, possibly combined ("X/Z/D")
    options: tuple[tuple[str, str], ...]  # (Options field, action) for the option columns it has

    @property
    def tag_int(self) -> int | None:
        """The tag as an int, or None for the table's patterns (50XX,XXXX), private groups."""
        t = self.tag
        try:
            return int(t[1:5] + t[6:10], 16)
        except ValueError:
            return None


@cache
def table_rows() -> tuple[TableRow, ...]:
    data = resources.files("dicomhub.deid").joinpath("data/confidentiality_profile_attributes.json")
    column_field = {v: k for k, v in OPTION_COLUMNS.items()}
    rows = []
    for entry in json.loads(data.read_text(encoding="utf-8")):
        opts = tuple((column_field[k], v) for k, v in entry.items() if k in column_field)
        rows.append(TableRow(entry["tag"], entry["name"], entry["basicProfile"], opts))
    return tuple(rows)


def resolve_combined(action: str) -> str:
    return _COMBINED.get(action, action)


def row_action(row: TableRow, options: Options) -> str:
    """The single action (D, Z, X, K, C or U) the table prescribes for ``row`` under ``options``."""
    chosen = [action for name, action in row.options if getattr(options, name)]
    if chosen:
        # Where two chosen options disagree (Retain Device Identity keeps a
        # calibration date, Modified Dates cleans it), the cleaning one wins:
        # both options are honoured, and C discloses less than K.
        return "C" if "C" in chosen else chosen[0]
    return resolve_combined(row.basic)


@dataclass(frozen=True, slots=True)
class ActionMap:
    """The resolved actions of one option set."""

    by_tag: dict[int, str]
    names: dict[int, str]
    # tag -> the table's combined action (X/Z, X/Z/D, ...) where no chosen option
    # overrides it: refined by the attribute's Type when the IOD is known
    combined: dict[int, str]
    curves: str  # (50xx,xxxx): every element of the curve groups
    overlay_data: str  # (60xx,3000)
    overlay_comments: str  # (60xx,4000)
    private: str  # odd groups: X, or C (Retain Safe Private: keep the safe-listed ones)


@lru_cache(maxsize=64)
def compile_actions(options: Options) -> ActionMap:
    by_tag: dict[int, str] = {}
    names: dict[int, str] = {}
    combined: dict[int, str] = {}
    patterns: dict[str, str] = {}
    for row in table_rows():
        action = row_action(row, options)
        tag = row.tag_int
        if tag is None:
            patterns[row.tag.upper()] = action
        else:
            by_tag[tag] = action
            names[tag] = row.name
            if row.basic in _COMBINED and action == resolve_combined(row.basic):
                if not any(getattr(options, name) for name, _ in row.options):
                    combined[tag] = row.basic
    return ActionMap(
        by_tag=by_tag,
        names=names,
        combined=combined,
        curves=patterns["(50XX,XXXX)"],
        overlay_data=patterns["(60XX,3000)"],
        overlay_comments=patterns["(60XX,4000)"],
        private=patterns["(GGGG,EEEE) WHERE GGGG IS ODD"],
    )

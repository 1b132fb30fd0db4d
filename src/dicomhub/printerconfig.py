"""Printers of the configuration: ``[printers.NAME]`` tables, or ``NAME=AET@HOST:PORT[:color]``.

Kept out of :mod:`dicomhub.config` (as :mod:`dicomhub.peerconfig` is) so that the
settings loader only gains a ``printers`` field::

    [printers.LASER]
    aet = "LASERCAM"
    host = "10.0.0.20"
    port = 104
    color = false      # true: the printer takes the Basic Color Print Management Meta SOP Class
    dpi = 150          # images larger than their image box at this resolution are scaled down
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dicomhub.errors import ConfigurationError
from dicomhub.model.printclient import Printer, parse_printer, printers_table

__all__ = ["Printer", "printer_item", "printers_table"]


def printer_item(item: Any) -> Printer:
    """One printer of a list-valued source: a :class:`Printer`, text or a table with a name."""
    if isinstance(item, Printer):
        return item
    if isinstance(item, str):
        return parse_printer(item.strip())
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        table = {k: v for k, v in item.items() if k != "name"}
        return printers_table({item["name"]: table})[0]
    raise ConfigurationError("printers are [printers.NAME] tables or NAME=AET@HOST:PORT[:color]")

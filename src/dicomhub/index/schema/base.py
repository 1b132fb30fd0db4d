"""The one ``MetaData`` every table of the index belongs to."""

from __future__ import annotations

from sqlalchemy import MetaData

__all__ = ["metadata"]

metadata = MetaData()

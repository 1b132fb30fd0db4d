"""Arrays of tables of the configuration file (``[[route]]``, ``[[webhook]]``,
``[[retention]]``): what reading any of them takes besides its own fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from dicomhub.errors import ConfigurationError

__all__ = ["named_tables"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def named_tables(
    value: Any, kind: type[T], build: Callable[[Mapping[str, Any], str], T], table: str, plural: str
) -> tuple[T, ...]:
    """The ``[[table]]`` tables in ``value``, each read by ``build(fields, where)``, their
    names unique. ``value`` may also hold items already read (settings made in code).

    Raises
    ------
    ConfigurationError
        When ``value`` is not tables, or two tables have the same name (``plural`` names
        them in the message: "routes", "retention rules").
    """
    if isinstance(value, kind):
        return (value,)
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(t, Mapping | kind) for t in value):
        raise ConfigurationError(f"{plural} are [[{table}]] tables of the configuration file")
    items = tuple(
        t if isinstance(t, kind) else build(t, f"[[{table}]] #{i + 1}") for i, t in enumerate(value)
    )
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"two [[{table}]] tables have the same name")
    return items

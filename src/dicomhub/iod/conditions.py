"""The conditions of Type 1C/2C attributes, parsed from the standard's own words.

PS3.3 states when a conditional attribute is required in a sentence of its
description: "Required if Samples per Pixel (0028,0002) has a value greater
than 1.", "Shall be present if Code Value (0008,0100) or Long Code Value
(0008,0119) is present.". Most of them follow a few forms, which this module
turns into something that can be evaluated against a data set:

* ``<attribute> is present`` / ``is not present`` / ``is absent``;
* ``<attribute> [Value N] is | equals | has a value of | has the value | is
  equal to <values>`` (values: quoted or upper-case words, joined by "or" and
  commas) and the negations ``is not`` / ``is other than`` / ``is not equal to``;
* ``<attribute> has a value greater than <number>`` / ``is greater than``;
* any number of those joined by "and" alone or by "or" alone.

An attribute is named as the standard writes it: its name and tag, the name
checked against pydicom's dictionary, so a sentence that mentions an attribute
in passing does not turn into a wrong check. A sentence with anything else
("Required if the image has been calibrated", a mix of "and" and "or", a
reference to another module) does not parse: :func:`parse_condition` returns
None and the validator counts the attribute as not evaluated rather than guess.

References
----------
PS3.3 Section 5.4 (Type 1C and 2C), PS3.5 Section 7.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["Atom", "Condition", "parse_condition"]

# "Name (0028,0002)": a tag as PS3.3 writes it; the name is checked against the dictionary.
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
_LEAD = re.compile(r"^(?:Required|Shall be present)(?: only)? if\s+", re.IGNORECASE)
# What ends the condition proper: "; may be present otherwise", ". May be present otherwise".
_TAIL = re.compile(r"(?:[;,.]\s*(?:may|shall not|otherwise|see|note)\b.*|\.)$", re.IGNORECASE | re.DOTALL)
_ARTICLE = re.compile(r"^(?:the value of(?: the)?|the|a|an|if)\s+$|^$", re.IGNORECASE)
_CONNECTOR = re.compile(r"^(.*?)[,\s]*\b(and|or)$", re.DOTALL)
_VALUE_N = re.compile(r"^Value (\d+)\s+(.*)$", re.DOTALL)
# A value as the standard spells an enumerated value or defined term: quoted, or upper case
# letters, digits, "_" and inner spaces ("PALETTE COLOR"); never lower-case prose.
_VALUE = re.compile(r'^(?:"([^"]+)"|([A-Z0-9_][A-Z0-9_ .\-]*))$')
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")

_PREDICATES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern + r"$", re.IGNORECASE), op)
    for pattern, op in (
        (r"(?:is|are) present", "present"),
        (r"is present (?:and|with) (?:has )?a value", "nonempty"),
        (r"is present and is not empty", "nonempty"),
        (r"(?:is not present|are not present|is absent|are absent)", "absent"),
        (r"(?:has a value greater than|is greater than|value is greater than) (?P<v>.+)", "gt"),
        (
            r"(?:is not equal to|is not|does not equal|is other than|has a value other than) (?P<v>.+)",
            "notin",
        ),
        (r"is present and (?:the value is|has a value of|equals) (?P<v>.+)", "in"),
        (
            r"(?:is present and )?(?:is equal to|equals|is|has a value of|has the value of|has the value|"
            r"has a value|value is|=) (?P<v>.+)",
            "in",
        ),
    )
)


@dataclass(frozen=True, slots=True)
class Atom:
    """One test on one attribute: ``op`` is present, nonempty, absent, in, notin or gt."""

    tag: int
    op: str
    values: frozenset[str] = frozenset()
    number: float = 0.0
    index: int | None = None  # "Value 1 is ORIGINAL": the 0-based value position

    def holds(self, ds: Dataset, also_present: frozenset[int] = frozenset()) -> bool:
        """Whether the test holds on ``ds`` (the data set or sequence item the attribute sits in).

        ``also_present``: tags to take as present although ``ds`` lacks them (the pixel
        data of a data set read without it); only presence is known of them.
        """
        if self.tag in also_present:
            return {"present": True, "nonempty": True, "absent": False}.get(self.op, False)
        present = self.tag in ds
        if self.op == "present":
            return present
        if self.op == "absent":
            return not present
        if not present:
            return False  # a value test on an absent attribute: no value to satisfy it
        values = _values(ds, self.tag)
        if self.index is not None:
            values = values[self.index : self.index + 1]
        if self.op == "nonempty":
            return bool(values)
        if self.op == "in":
            return any(v in self.values for v in values)
        if self.op == "notin":
            return bool(values) and all(v not in self.values for v in values)
        # gt
        for v in values:
            try:
                if float(v) > self.number:
                    return True
            except ValueError:
                continue
        return False


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: its atoms joined by "and" (``any_of`` False) or "or"."""

    text: str
    atoms: tuple[Atom, ...]
    any_of: bool

    @property
    def tags(self) -> frozenset[int]:
        """The attributes the condition looks at."""
        return frozenset(a.tag for a in self.atoms)

    def holds(self, ds: Dataset, also_present: frozenset[int] = frozenset()) -> bool:
        """Whether the attribute is required in ``ds`` (``also_present`` as for :meth:`Atom.holds`)."""
        if self.any_of:
            return any(a.holds(ds, also_present) for a in self.atoms)
        return all(a.holds(ds, also_present) for a in self.atoms)


def _values(ds: Dataset, tag: int) -> list[str]:
    try:
        value: Any = ds[tag].value
    except Exception:  # noqa: BLE001 - an undecodable value is reported by the element checks
        return []
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    out = []
    for item in items:
        text = str(item).strip("\x00 ")
        if text:
            out.append(text)
    return out


def parse_condition(text: str) -> Condition | None:
    """Parse a condition sentence of PS3.3, or None when it is not one of the known forms.

    Parameters
    ----------
    text
        The sentence, e.g. ``Required if Samples per Pixel (0028,0002) has a value
        greater than 1.``

    Returns
    -------
    Condition or None
        None for a sentence that is not made only of the forms in the module
        docstring: such a condition is not evaluated.
    """
    body = _LEAD.sub("", text.strip(), count=1)
    if body == text.strip():
        return None
    body = _TAIL.sub("", body).strip()
    refs = list(_TAG.finditer(body))
    if not refs:
        return None
    # Where each attribute's name starts: the dictionary name must stand right before its tag.
    starts = []
    tags = []
    for ref in refs:
        tag = int(ref.group(1), 16) << 16 | int(ref.group(2), 16)
        try:
            name = dictionary_description(tag)
        except KeyError:
            return None
        before = body[: ref.start()].rstrip()
        if not before.lower().endswith(name.lower()):
            return None
        starts.append(len(before) - len(name))
        tags.append(tag)
    if not _ARTICLE.match(body[: starts[0]]):
        return None
    atoms: list[Atom] = []
    connectors: set[str] = set()
    for i, ref in enumerate(refs):
        end = starts[i + 1] if i + 1 < len(refs) else len(body)
        piece = body[ref.end() : end].strip()
        if i + 1 < len(refs):
            # Text before the next name: "<predicate> or [the value of]".
            piece = re.sub(r"\s+(?:the value of(?: the)?|the)$", "", piece, flags=re.IGNORECASE)
            joined = _CONNECTOR.match(piece)
            if joined is None:
                return None
            piece, connector = joined.group(1).strip(), joined.group(2).lower()
            connectors.add(connector)
            if not piece:  # "A (x) or B (y) is present": the predicate comes after the last one
                atoms.append(Atom(tags[i], "pending"))
                continue
        atom = _atom(tags[i], piece)
        if atom is None:
            return None
        # Earlier atoms that share this predicate ("A or B is present").
        atoms = [
            Atom(a.tag, atom.op, atom.values, atom.number, atom.index) if a.op == "pending" else a
            for a in atoms
        ]
        atoms.append(atom)
    if len(connectors) > 1 or any(a.op == "pending" for a in atoms):
        return None  # "and" with "or": the standard's precedence is not written down
    return Condition(text=text.strip(), atoms=tuple(atoms), any_of=connectors == {"or"})


def _atom(tag: int, predicate: str) -> Atom | None:
    index = None
    numbered = _VALUE_N.match(predicate)
    if numbered:
        index = int(numbered.group(1)) - 1
        predicate = numbered.group(2)
    for pattern, op in _PREDICATES:
        match = pattern.match(predicate)
        if match is None:
            continue
        if op in ("present", "absent", "nonempty"):
            return None if index is not None else Atom(tag, op)
        raw = match.group("v").strip()
        if op == "gt":
            return Atom(tag, op, number=float(raw), index=index) if _NUMBER.match(raw) else None
        values = _parse_values(raw)
        if values is None:
            return None
        return Atom(tag, op, values=values, index=index)
    return None


def _parse_values(raw: str) -> frozenset[str] | None:
    """``"Y"``, ``PALETTE COLOR or RGB``, ``A, B or C`` -> the values; None for prose."""
    parts = re.split(r"\s*,\s*(?:or\s+)?|\s+or\s+", raw)
    out = set()
    for part in parts:
        match = _VALUE.match(part.strip())
        if match is None:
            return None
        out.add((match.group(1) or match.group(2)).strip())
    return frozenset(out) if out else None

"""Private attributes kept under the Retain Safe Private option.

Table E.1-1 has one row for all private attributes (X, or C under Retain Safe
Private) and leaves "safe" to PS3.15 E.3.10, whose Table E.3.10-1 lists
private attributes known to hold no identifying information. This is a small
subset of that table (diffusion acquisition parameters that research exports
most often need); a project recipe can keep others by tag. Only attributes
whose Private Creator matches exactly are kept.
"""

from __future__ import annotations

__all__ = ["SAFE_PRIVATE"]

# (private creator, group, element low byte) -> what the attribute holds
SAFE_PRIVATE: dict[tuple[str, int, int], str] = {
    ("SIEMENS MR HEADER", 0x0019, 0x0C): "B_value",
    ("SIEMENS MR HEADER", 0x0019, 0x0D): "DiffusionDirectionality",
    ("SIEMENS MR HEADER", 0x0019, 0x0E): "DiffusionGradientDirection",
    ("SIEMENS MR HEADER", 0x0019, 0x27): "B_matrix",
    ("GEMS_PARM_01", 0x0043, 0x39): "Slop_int_6... slop_int_9 (b-value)",
}
SAFE_PRIVATE_CREATORS: frozenset[tuple[str, int]] = frozenset((c, g) for c, g, _ in SAFE_PRIVATE)

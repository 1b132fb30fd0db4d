"""Validation of data sets against their IOD (PS3.3), from the standard's tables.

Sits beside :mod:`dicomhub.codec`: it knows pydicom and the tables, not the
index, the storage or any protocol.
"""

from __future__ import annotations

from dicomhub.iod.validate import Finding, Severity, validate_dataset, validate_encoded, validate_part10

__all__ = ["Finding", "Severity", "validate_dataset", "validate_encoded", "validate_part10"]

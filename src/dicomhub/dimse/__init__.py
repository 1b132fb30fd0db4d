"""DIMSE networking: pynetdicom handlers and the Storage/Verification fast path."""

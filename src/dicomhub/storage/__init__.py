"""DICOM-agnostic blob storage under opaque keys."""

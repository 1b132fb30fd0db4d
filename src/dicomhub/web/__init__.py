"""The HTTP side: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under /dicomweb, admin, health and metrics."""

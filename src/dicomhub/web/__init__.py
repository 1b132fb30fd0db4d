"""The HTTP side: health now, DICOMweb under /dicomweb later."""

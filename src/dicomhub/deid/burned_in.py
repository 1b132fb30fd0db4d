"""Heuristics for pixel data that may carry burned-in identifying text.

The Basic Profile does not clean pixel data (that is the Clean Pixel Data
option, which needs review or masking): these reasons tell an operator or an
export policy which objects need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import (
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VideoEndoscopicImageStorage,
    VideoMicroscopicImageStorage,
    VideoPhotographicImageStorage,
    VLEndoscopicImageStorage,
    VLPhotographicImageStorage,
)

__all__ = ["BurnedInRisk", "burned_in_risk"]

# SOP classes whose images are commonly screen captures, photographs or
# scanner displays with text (names, dates) drawn into the pixels.
_RISKY_CLASSES: dict[str, str] = {
    SecondaryCaptureImageStorage: "Secondary Capture",
    MultiFrameSingleBitSecondaryCaptureImageStorage: "Secondary Capture",
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "Secondary Capture",
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "Secondary Capture",
    MultiFrameTrueColorSecondaryCaptureImageStorage: "Secondary Capture",
    UltrasoundImageStorage: "Ultrasound",
    UltrasoundMultiFrameImageStorage: "Ultrasound",
    VLPhotographicImageStorage: "VL Photographic",
    VLEndoscopicImageStorage: "VL Endoscopic",
    VideoEndoscopicImageStorage: "Video Endoscopic",
    VideoMicroscopicImageStorage: "Video Microscopic",
    VideoPhotographicImageStorage: "Video Photographic",
}
_RISKY_MODALITIES = {"US": "Ultrasound", "OT": "Other", "SC": "Secondary Capture", "XC": "External-camera"}
_SCREEN_CAPTURE_TYPES = {"SCREEN SHOT", "SCREENSHOT", "SCREEN CAPTURE", "CAPTURE"}


@dataclass(frozen=True, slots=True)
class BurnedInRisk:
    reasons: tuple[str, ...]


def burned_in_risk(ds: Dataset) -> BurnedInRisk | None:
    """Why ``ds``'s pixel data may show identifying text, or None when nothing suggests it."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    reasons: list[str] = []
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        reasons.append("BurnedInAnnotation=YES")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    kind = _RISKY_CLASSES.get(sop_class) or _RISKY_MODALITIES.get(modality)
    if kind is not None and burned != "NO":
        # BurnedInAnnotation=NO is the creator's statement; absent, these
        # classes are captures of displays or photographs with text more often than not.
        reasons.append(f"{kind} image without BurnedInAnnotation=NO")
    image_type = {str(v).strip().upper() for v in (ds.get("ImageType") or [])}
    if image_type & _SCREEN_CAPTURE_TYPES:
        reasons.append("ImageType marks a screen capture")
    elif {"SECONDARY", "DERIVED"} <= image_type and kind is None and burned != "NO":
        reasons.append("DERIVED\\SECONDARY image (possibly a rendered capture)")
    if str(ds.get("ConversionType", "") or "").strip().upper() in {"WSD", "SD", "SI", "DF", "DV"}:
        reasons.append(f"ConversionType={ds.ConversionType} (scanned or digitized capture)")
    if any(0x6000 <= (tag >> 16) <= 0x601E and (tag & 0xFFFF) == 0x3000 for tag in ds.keys()):
        reasons.append("overlay data present (may hold text)")
    return BurnedInRisk(tuple(reasons)) if reasons else None

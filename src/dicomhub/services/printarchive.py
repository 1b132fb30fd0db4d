"""Archive each print job's PDF as an Encapsulated PDF instance (PS3.3 A.45.1).

Through :meth:`IngestService.store <dicomhub.services.ingest.service.IngestService.store>`,
the one ingest path, so a print is stored, indexed and queryable like any object
(QIDO-RS, C-FIND, WADO-RS), and it is durable before the print is answered.

Which study it goes to: preformatted images rarely carry their patient, but
some print SCUs send the Patient and General Study attributes with them.  When
a printed image carries a Study Instance UID, the PDF joins that study with
that image's patient and study attributes.  Otherwise it goes to the
configured study (``print_archive_study_uid``), or, with none configured, to
one study per calling AE title (its UID derived from the AE title, so a
modality's prints gather in one place), under the patient ``PRINTS``.  A
study per source AE rather than one for every print keeps what each modality
printed apart without any setting.

Each job is a series of its own (Modality ``DOC``) holding the one instance.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Sequence
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomhub.model.caller import Caller, Channel
from dicomhub.model.ingest import InstanceOrigin, OriginKind, Part10Object
from dicomhub.model.printing import PrintedFilm
from dicomhub.services.ingest.service import IngestService

__all__ = ["ENCAPSULATED_PDF", "PRINTS_PATIENT_ID", "PrintArchive", "encapsulated_pdf", "print_study_uid"]

ENCAPSULATED_PDF: Final = "1.2.840.10008.5.1.4.1.1.104.1"
PRINTS_PATIENT_ID: Final = "PRINTS"

# Patient and General Study attributes taken over from a printed image (PS3.3 C.7.1.1, C.7.2.1).
_IDENTITY: Final = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
)
_NAMESPACE: Final = uuid.UUID("6f1d2a8e-5c1b-4f0e-9d57-3b7e8a0c2f11")


def _new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def print_study_uid(calling_ae_title: str) -> str:
    """The study a calling AE's prints go to when none is configured (stable per AE title)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, calling_ae_title.strip()).int}"


def _identity(films: Sequence[PrintedFilm]) -> Dataset | None:
    for film in films:
        for image_box in film.film_box.image_boxes:
            image = image_box.image
            if image is not None and str(image.get("StudyInstanceUID", "") or ""):
                return image
    return None


def encapsulated_pdf(
    pdf: bytes,
    films: Sequence[PrintedFilm],
    calling_ae_title: str,
    created_at: dt.datetime,
    study_instance_uid: str | None,
) -> Dataset:
    """The Encapsulated PDF data set of a job (with its File Meta)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = _new_uid()
    source = _identity(films)
    if source is not None:
        for keyword in _IDENTITY:
            if keyword in source:
                setattr(ds, keyword, source.get(keyword))
    else:
        ds.PatientName = f"PRINTS^{calling_ae_title.strip()}"
        ds.PatientID = PRINTS_PATIENT_ID
        ds.StudyInstanceUID = study_instance_uid or print_study_uid(calling_ae_title)
        ds.StudyDescription = f"Films printed by {calling_ae_title.strip()}"[:64]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = _new_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Print job"
    ds.Manufacturer = "dicomhub"
    ds.ConversionType = "WSD"  # made on a workstation: the films a modality printed
    ds.InstanceNumber = 1
    local = created_at.astimezone(dt.UTC)
    ds.ContentDate = local.strftime("%Y%m%d")
    ds.ContentTime = local.strftime("%H%M%S")
    ds.AcquisitionDateTime = local.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # films show what the modality printed on them, names included
    label = str(films[0].film_session.get("FilmSessionLabel", "")) if films else ""
    ds.DocumentTitle = (f"Films: {label}" if label else f"Films from {calling_ae_title.strip()}")[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB needs an even length: pad with a NUL; the length says where the PDF ends.
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


class PrintArchive:
    """Stores job PDFs as Encapsulated PDF instances.

    Parameters
    ----------
    ingest : IngestService
    study_instance_uid : str, optional
        The study for prints whose images name none (else one per calling AE).
    """

    def __init__(self, ingest: IngestService, study_instance_uid: str | None = None) -> None:
        self._ingest = ingest
        self._study = study_instance_uid or None

    def store(
        self, pdf: bytes, films: Sequence[PrintedFilm], calling_ae_title: str, created_at: dt.datetime
    ) -> str:
        """Store the job's PDF (durable, indexed); its SOP Instance UID.

        Raises
        ------
        DicomhubError
            What the ingest raises (storage, index, a refusal by policy).
        """
        ds = encapsulated_pdf(pdf, films, calling_ae_title, created_at, self._study)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        # On behalf of the printing modality: its AE title is recorded as the source.
        caller = Caller(Channel.DIMSE, calling_ae_title)
        origin = InstanceOrigin(OriginKind.PRINT, calling_ae_title=calling_ae_title)
        result = self._ingest.store(Part10Object(out.getvalue()), origin, caller)
        return result.sop_instance_uid

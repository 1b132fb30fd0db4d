"""Modality Performed Procedure Step SOP Class SCP (PS3.4 Annex F.7): N-CREATE, N-SET, N-GET.

The rules are :mod:`dicomhub.model.mpps` and the use cases
:class:`~dicomhub.services.mpps.MppsService`; this module translates the
messages and turns each refusal into its PS3.4 F.7.2 status, with the tags
concerned in the response's Attribute Identifier List and the reason in its
Error Comment:

==========================================  ======
refusal                                     status
==========================================  ======
a required attribute missing or empty       0x0120 Missing Attribute
a bad status, an attribute N-SET may not    0x0106 Invalid Attribute Value
set
an attribute the MPPS IOD does not have     0x0105 No Such Attribute
an N-CREATE of an instance already held     0x0111 Duplicate SOP Instance
an N-SET or N-GET of an unknown instance    0x0112 No Such SOP Instance
an N-SET of a COMPLETED/DISCONTINUED step   0x0110 Processing Failure
a SOP Instance UID that is not a UID        0x0117 Invalid Object Instance
==========================================  ======

The modality acts as itself (its calling AE title): like an HL7 sender it
reports what it did, and the order moves accordingly. N-CREATE and N-SET
change the archive's records, so they need what sending objects needs: the
``authorize`` check the association gives (the ``store`` role of a registered
peer; 0x0124 Not Authorized otherwise). N-GET reads back what was reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomhub.dimse import status as S
from dicomhub.dimse.messages import NRequest, NResponse
from dicomhub.dimse.providers.base import Provider
from dicomhub.errors import DicomhubError, InvalidRequest, NotFound
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.mpps import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    DuplicatePerformedStep,
    InvalidAttributeValue,
    MissingAttribute,
    MppsViolation,
    NoSuchAttribute,
    PerformedStepFinal,
)
from dicomhub.services.access import Forbidden

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association
    from dicomhub.services.mpps import MppsService

__all__ = ["MPPS_STATUSES", "ModalityPerformedProcedureStepProvider"]

LOGGER = logging.getLogger("dicomhub.dimse")

# Most specific first: the first class the error is an instance of decides.
_STATUSES: tuple[tuple[type[DicomhubError], int], ...] = (
    (Forbidden, S.NOT_AUTHORIZED),
    (MissingAttribute, S.MISSING_ATTRIBUTE),
    (NoSuchAttribute, S.NO_SUCH_ATTRIBUTE),
    (InvalidAttributeValue, S.INVALID_ATTRIBUTE_VALUE),
    (DuplicatePerformedStep, S.DUPLICATE_SOP_INSTANCE),
    (PerformedStepFinal, S.PROCESSING_FAILURE),
    (NotFound, S.NO_SUCH_SOP_INSTANCE),
    (InvalidRequest, S.INVALID_OBJECT_INSTANCE),
)


#: For the conformance statement: (status, meaning, cause) of every answer on purpose.
MPPS_STATUSES: tuple[tuple[int, str, str], ...] = (
    (S.SUCCESS, "Success", "N-CREATE recorded (the step IN PROGRESS), N-SET applied, N-GET answered"),
    (
        S.MISSING_ATTRIBUTE,
        "Missing Attribute",
        "a Type 1/2 attribute of N-CREATE, or one the final state requires",
    ),
    (
        S.INVALID_ATTRIBUTE_VALUE,
        "Invalid Attribute Value",
        "a status not allowed; an attribute N-SET may not set",
    ),
    (S.NO_SUCH_ATTRIBUTE, "No Such Attribute", "N-SET of an attribute the MPPS IOD does not have"),
    (S.DUPLICATE_SOP_INSTANCE, "Duplicate SOP Instance", "N-CREATE of a step already held"),
    (S.NO_SUCH_SOP_INSTANCE, "No Such SOP Instance", "N-SET or N-GET of an unknown step"),
    (S.PROCESSING_FAILURE, "Processing Failure", "N-SET of a COMPLETED or DISCONTINUED step; index failure"),
    (S.INVALID_OBJECT_INSTANCE, "Invalid Object Instance", "a SOP Instance UID that is not a UID"),
)


def _refusal(exc: DicomhubError) -> NResponse:
    code = next((c for kind, c in _STATUSES if isinstance(exc, kind)), S.PROCESSING_FAILURE)
    tags = exc.tags if isinstance(exc, MppsViolation) and exc.tags else None
    return NResponse(code, error_comment=str(exc)[:64], attribute_identifier_list=tags)


class ModalityPerformedProcedureStepProvider(Provider):
    """MPPS SCP on :class:`MppsService`."""

    sop_classes = frozenset({MODALITY_PERFORMED_PROCEDURE_STEP})
    name: ClassVar[str] = "modality performed procedure step"

    def __init__(self, service: MppsService, authorize: Callable[[], None] | None = None) -> None:
        """``authorize``: raises :class:`Forbidden` when the calling peer may not report steps."""
        self._service = service
        self._authorize = authorize or (lambda: None)

    @staticmethod
    def _caller(assoc: Association) -> Caller:
        return Caller(Channel.DIMSE, assoc.calling_ae, assoc.host)

    def n_create(self, assoc: Association, request: NRequest) -> NResponse:
        if request.dataset is None:
            return NResponse(S.MISSING_ATTRIBUTE, error_comment="N-CREATE without an Attribute List")
        try:
            self._authorize()
            step = self._service.create(request.dataset, request.sop_instance_uid, self._caller(assoc))
        except DicomhubError as exc:
            LOGGER.warning("MPPS N-CREATE from %s refused: %s", assoc.calling_ae, exc)
            return _refusal(exc)
        # PS3.4 F.7.2.1.1.2: the response carries the instance (the SCP may have made it).
        return NResponse(S.SUCCESS, sop_instance_uid=step.sop_instance_uid)

    def n_set(self, assoc: Association, request: NRequest) -> NResponse:
        if request.dataset is None:
            return NResponse(S.MISSING_ATTRIBUTE, error_comment="N-SET without a Modification List")
        assert request.sop_instance_uid is not None  # the association checked it
        try:
            self._authorize()
            self._service.set(request.sop_instance_uid, request.dataset, self._caller(assoc))
        except DicomhubError as exc:
            LOGGER.warning("MPPS N-SET from %s refused: %s", assoc.calling_ae, exc)
            return _refusal(exc)
        return NResponse(S.SUCCESS)

    def n_get(self, assoc: Association, request: NRequest) -> NResponse:
        assert request.sop_instance_uid is not None
        try:
            stored = self._service.get(request.sop_instance_uid).dataset()
        except DicomhubError as exc:
            return _refusal(exc)
        wanted = request.attribute_identifier_list
        if not wanted:
            return NResponse(S.SUCCESS, dataset=stored)
        answer = Dataset()
        for tag in wanted:
            if Tag(tag) in stored:
                answer[tag] = stored[tag]
        return NResponse(S.SUCCESS, dataset=answer)

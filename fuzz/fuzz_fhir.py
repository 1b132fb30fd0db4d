"""Fuzz target: the FHIR reader (``dicomhub.web.fhir.resources``).

Byte 0 picks the resource the body is read as (even: Patient, odd:
ServiceRequest), the rest is the request body. It goes the way the FHIR
routes take it: ``web.errors.decode_json_object``, then ``parse_patient`` and
``patient_from_fhir``, or ``parse_service_request``, ``subject_of`` and
``order_from_fhir`` (for a fixed patient, and as an update of an order when
bit 1 is set); what is accepted is written back with ``patient_to_fhir`` /
``order_to_fhir``, as the route answers.

Property: the only error is :class:`dicomhub.errors.InvalidRequest` (its
subclass ``Unprocessable`` included): a 400 or 422 OperationOutcome; what
is accepted is answered with a resource the R4B models accept; memory stays
within :class:`MemoryBound`.
"""

from __future__ import annotations

import dataclasses

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.errors import InvalidRequest
    from dicomhub.model.orders import (
        Order,
        Patient,
        PatientRef,
        RequestedProcedure,
        ScheduledProcedureStep,
    )
    from dicomhub.web.errors import decode_json_object
    from dicomhub.web.fhir.resources import (
        order_from_fhir,
        order_to_fhir,
        parse_patient,
        parse_service_request,
        patient_from_fhir,
        patient_to_fhir,
        subject_of,
    )

from fuzzing import MemoryBound, PropertyViolation, main

_PATIENT = Patient(PatientRef("P1", "HOSP"), patient_name="Doe^Jane", patient_birth_date="19700102")
_EXISTING = Order(
    "A1",
    _PATIENT.ref,
    procedures=(RequestedProcedure("A1", steps=(ScheduledProcedureStep("A1", "CT"),)),),
    order_id="o1",
)


def test_one_input(data: bytes) -> None:
    """Read ``data[1:]`` as the body of a Patient or ServiceRequest (``data[0]``)."""
    if not data:
        return
    with MemoryBound(len(data), per_byte=2048, fixed=1 << 20):
        try:
            body = decode_json_object(data[1:])
            if data[0] % 2 == 0:
                patient = patient_from_fhir(parse_patient(body))
                # the route answers with the stored patient, which has its resource id
                answer = patient_to_fhir(dataclasses.replace(patient, resource_id="p1"))
                kind = "Patient"
            else:
                resource = parse_service_request(body)
                subject_of(resource)
                order = order_from_fhir(resource, _PATIENT, _EXISTING if data[0] & 2 else None)
                answer = order_to_fhir(dataclasses.replace(order, order_id=order.order_id or "o2"), "p1")
                kind = "ServiceRequest"
        except InvalidRequest:
            return
    if answer.get("resourceType") != kind:
        raise PropertyViolation(f"answered a {answer.get('resourceType')!r} for a {kind}")


if __name__ == "__main__":
    main(test_one_input)

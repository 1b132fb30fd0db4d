"""FHIR R4 (JSON) under ``/fhir``: Patient and ServiceRequest, the order context in
(docs/orders.md). Validated with the R4B models of ``fhir.resources``."""

from dicomhub.web.fhir.routes import FHIR_JSON, routes

__all__ = ["FHIR_JSON", "routes"]

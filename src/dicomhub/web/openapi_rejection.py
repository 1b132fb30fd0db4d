"""The OpenAPI description of the reject resources and of ``includerejected`` (merged into
:func:`dicomhub.web.openapi.openapi_document`; see :mod:`dicomhub.web.dicomweb.rejection`)."""

from __future__ import annotations

from typing import Any

from dicomhub.model.rejection import RejectionReason
from dicomhub.web.dicomweb.rejection import INCLUDE_REJECTED

__all__ = ["include_rejected_parameter", "reject_paths"]

Json = dict[str, Any]

_STUDY = "/dicomweb/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_UID = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
_ERROR: Json = {"$ref": "#/components/schemas/Error"}


def include_rejected_parameter() -> Json:
    """The ``includerejected`` query parameter of QIDO-RS and WADO-RS."""
    return {
        "name": INCLUDE_REJECTED,
        "in": "query",
        "description": (
            "Also return instances rejected by a rejection note (IHE IOCM), and the series and "
            "studies holding only those; hidden by default (docs/rejection.md)."
        ),
        "schema": {"type": "boolean"},
    }


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _reject(path: str, operation_id: str, what: str) -> Json:
    names = [n for n in ("study", "series", "instance") if "{" + n + "}" in path]
    params: list[Json] = [
        {"name": n, "in": "path", "required": True, "description": _UID[n], "schema": {"type": "string"}}
        for n in names
    ]
    params.append(
        {
            "name": "reason",
            "in": "query",
            "required": True,
            "description": (
                "The rejection title (CID 7011): quality (113001), safety (113037), worklist "
                "(113038), retention (113039, which also deletes the instances)."
            ),
            "schema": {"type": "string", "enum": [r.value for r in RejectionReason]},
        }
    )
    note = {
        "type": "object",
        "properties": {
            "StudyInstanceUID": {"type": "string"},
            "SeriesInstanceUID": {"type": "string"},
            "SOPInstanceUID": {"type": "string"},
            "outcome": {"type": "string"},
        },
    }
    return {
        "post": {
            "tags": ["Delete"],
            "operationId": operation_id,
            "summary": f"Reject {what} with a rejection note (IHE IOCM)",
            "description": (
                "Makes a Key Object Selection document with the reason's rejection title and stores "
                "it; the rejected instances are then hidden from queries and retrievals. Needs the "
                "delete right on the study."
            ),
            "parameters": params,
            "responses": {
                "201": {
                    "description": "The rejection note, stored.",
                    "content": {"application/json": {"schema": note}},
                },
                "400": _error("An unknown reason or a malformed UID."),
                "403": _error("The caller may not delete in the study."),
                "404": _error("Nothing (not yet rejected) to reject there."),
            },
        }
    }


def reject_paths() -> Json:
    """The reject resources, by path."""
    return {
        _STUDY + "/reject": _reject(_STUDY, "rejectStudy", "a study"),
        _SERIES + "/reject": _reject(_SERIES, "rejectSeries", "a series"),
        _INSTANCE + "/reject": _reject(_INSTANCE, "rejectInstance", "an instance"),
    }

"""``/trash``: the deleted studies kept for ``trash_keep`` seconds, their restore and purge.

``GET /trash`` lists the studies in the trash (counts, who deleted them, when, and when
the purge starts on them); ``POST /trash/{study}/restore`` brings a study's trashed
instances back (409 when instances of it were stored again since); ``DELETE
/trash/{study}`` purges them for good now. Each needs the DELETE right on the study,
as the delete did. Restores and purges are audited by the trash service.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.timestamps import iso_utc
from dicomhub.services.archive import Archive
from dicomhub.services.trash import PurgeResult, TrashedStudy
from dicomhub.web.auth import caller_of

__all__ = ["routes", "trash_paths"]

_NO_STORE = {"Cache-Control": "no-store"}


def _study(study: TrashedStudy, archive: Archive) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "accession_number": study.accession_number,
        "modalities": list(study.modalities),
        "series": study.series,
        "instances": study.instances,
        "size": study.size,
        "deleted_by": list(study.deleted_by),
        "reasons": list(study.reasons),
        "first_deleted_at": iso_utc(study.first_deleted_at),
        "deleted_at": iso_utc(study.last_deleted_at),
        "purge_at": iso_utc(archive.trash.purge_at(study)),
    }


def _purged(result: PurgeResult) -> dict[str, Any]:
    return {"studies": list(result.studies), "instances": result.instances,
            "blobs_not_removed": result.blobs_not_removed}  # fmt: skip


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes of the trash, at the root of the HTTP server."""

    async def listing(request: Request) -> JSONResponse:
        raw = request.query_params.get("limit", "1000")
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            raise InvalidRequest("limit must be an integer from 1 to 10000")
        found = await run_in_threadpool(archive.trash.studies, caller_of(request), int(raw))
        return JSONResponse([_study(s, archive) for s in found], headers=_NO_STORE)

    async def restore(request: Request) -> JSONResponse:
        study = str(request.path_params["study"])
        result = await run_in_threadpool(archive.trash.restore, study, caller_of(request))
        return JSONResponse(result.as_json(), headers=_NO_STORE)

    async def purge(request: Request) -> JSONResponse:
        study = str(request.path_params["study"])
        result = await run_in_threadpool(archive.trash.purge, study, caller_of(request))
        return JSONResponse(_purged(result), headers=_NO_STORE)

    return [
        Route("/trash", listing, methods=["GET"]),
        Route("/trash/{study}/restore", restore, methods=["POST"]),
        Route("/trash/{study}", purge, methods=["DELETE"]),
    ]


# ---------------------------------------------------------------- OpenAPI

_ERROR = {"$ref": "#/components/schemas/Error"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_TIME = {"type": "string", "format": "date-time"}
_STUDY_PARAMETER = {
    "name": "study",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The Study Instance UID.",
}
_LEFT = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["sop_instance_uid", "reason"],
        "properties": {"sop_instance_uid": {"type": "string"}, "reason": {"type": "string"}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_REFUSED = {
    "401": _error("No valid credentials."),
    "403": _error("The caller may not delete (this study)."),
}


def trash_paths() -> dict[str, Any]:
    """The OpenAPI path items of the trash."""
    trashed = {
        "type": "object",
        "required": ["study_instance_uid", "patient_id", "series", "instances", "deleted_by", "deleted_at",
                     "purge_at"],
        "properties": {
            "study_instance_uid": {"type": "string"},
            "patient_id": {"type": "string"},
            "patient_name": {"type": "string"},
            "study_date": {"type": "string"},
            "study_description": {"type": "string"},
            "accession_number": {"type": "string"},
            "modalities": _STRINGS,
            "series": {"type": "integer"},
            "instances": {"type": "integer"},
            "size": {"type": "integer", "description": "Bytes of the blobs kept."},
            "deleted_by": _STRINGS,
            "reasons": _STRINGS,
            "first_deleted_at": _TIME,
            "deleted_at": {**_TIME, "description": "The latest delete of the study's trashed instances."},
            "purge_at": {**_TIME, "description": "When the purge starts on it (first delete + trash_keep)."},
        },
    }  # fmt: skip
    return {
        "/trash": {
            "get": {
                "tags": ["Trash"],
                "operationId": "listTrash",
                "summary": "The studies in the trash the caller may delete, the most recently deleted first.",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "One object per study.",
                        "content": {"application/json": {"schema": {"type": "array", "items": trashed}}},
                    },
                    "400": _error("A bad limit."),
                    **_REFUSED,
                },
            }
        },
        "/trash/{study}/restore": {
            "post": {
                "tags": ["Trash"],
                "operationId": "restoreFromTrash",
                "summary": "Index a study's trashed instances again, with their UIDs (announced as created).",
                "parameters": [_STUDY_PARAMETER],
                "responses": {
                    "200": {
                        "description": "Restored; what could not be is listed, and stays in the trash.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["study_instance_uid", "restored", "conflicts", "failed"],
                                    "properties": {
                                        "study_instance_uid": {"type": "string"},
                                        "restored": _STRINGS,
                                        "conflicts": _LEFT,
                                        "failed": _LEFT,
                                    },
                                }
                            }
                        },
                    },
                    "404": _error("Nothing of the study is in the trash."),
                    "409": _error("Instances of it were stored again since: nothing restored."),
                    **_REFUSED,
                },
            }
        },
        "/trash/{study}": {
            "delete": {
                "tags": ["Trash"],
                "operationId": "purgeFromTrash",
                "summary": "Remove a study's trashed instances and their blobs for good, now.",
                "parameters": [_STUDY_PARAMETER],
                "responses": {
                    "200": {
                        "description": "Purged.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["studies", "instances", "blobs_not_removed"],
                                    "properties": {
                                        "studies": _STRINGS,
                                        "instances": {"type": "integer"},
                                        "blobs_not_removed": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                    "404": _error("Nothing of the study is in the trash."),
                    **_REFUSED,
                },
            }
        },
    }

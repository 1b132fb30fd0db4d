"""Building blocks of the OpenAPI document (:mod:`dicomhub.web.openapi`): media
types, the DICOMweb path templates, and the parameter, error and reference objects
every part of the document uses."""

from __future__ import annotations

from typing import Any

__all__ = [
    "DICOM_JSON",
    "DICOM_XML",
    "FRAMES",
    "IMAGE_TYPES",
    "INSTANCE",
    "Json",
    "OCTET_STREAM",
    "SERIES",
    "STUDY",
    "UID_PARAMS",
    "binary",
    "error",
    "path_param",
    "query_param",
    "ref",
    "scope",
    "uid_params",
]

Json = dict[str, Any]

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"
IMAGE_TYPES = ("image/jpeg", "image/png")

STUDY = "/dicomweb/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
FRAMES = INSTANCE + "/frames/{frames}"


# ---------------------------------------------------------------- building blocks


def ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def path_param(name: str, description: str, pattern: str | None = None) -> Json:
    schema: Json = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query_param(name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    param: Json = {"name": name, "in": "query", "description": description, "schema": schema}
    if required:
        param["required"] = True
    return param


def error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": ref("schemas", "Error")}}}


def binary(*media_types: str) -> Json:
    # OpenAPI 3.1 4.8.14.3: binary content is described by its media type alone.
    return {media_type: {} for media_type in media_types}


UID_PARAMS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def uid_params(*names: str) -> list[Json]:
    return [ref("parameters", UID_PARAMS[name]) for name in names]


def scope(path: str) -> list[str]:
    return [name for name in ("study", "series", "instance") if "{" + name + "}" in path]

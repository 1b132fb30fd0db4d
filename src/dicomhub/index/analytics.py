"""The indexed attributes of instances, patient to instance level in one row each, as
the metadata export writes them (:mod:`dicomhub.services.analytics`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Engine, select

from dicomhub.index import engine as engines
from dicomhub.index.schema import instance, patient, series, study

__all__ = ["METADATA_COLUMNS", "MetadataRows"]

_COLUMNS = (
    instance.c.pk.label("instance_pk"),
    patient.c.patient_id,
    patient.c.patient_name,
    patient.c.patient_birth_date,
    patient.c.patient_sex,
    study.c.study_instance_uid,
    study.c.study_date,
    study.c.study_time,
    study.c.accession_number,
    study.c.study_id,
    study.c.study_description,
    study.c.referring_physician_name,
    study.c.modalities_in_study,
    series.c.series_instance_uid,
    series.c.modality,
    series.c.series_number,
    series.c.series_description,
    series.c.body_part_examined,
    series.c.series_date,
    series.c.series_time,
    instance.c.sop_instance_uid,
    instance.c.sop_class_uid,
    instance.c.instance_number,
    instance.c.transfer_syntax_uid,
    instance.c.size,
    instance.c.sha256,
    instance.c.source_ae_title,
    instance.c.received_at,
)
#: The exported attribute columns, in order (the instance's key is not exported).
METADATA_COLUMNS: Final = tuple(c.name for c in _COLUMNS[1:])
_JOINED = (
    instance.join(series, instance.c.series_pk == series.c.pk)
    .join(study, series.c.study_pk == study.c.pk)
    .join(patient, study.c.patient_pk == patient.c.pk)
)


class MetadataRows:
    """Reads the export rows of instances by SOP Instance UID or by study."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def instances(self, sop_instance_uids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of the instances still held (the others are left out), in no order."""
        found: list[dict[str, Any]] = []
        with engines.read(self.engine) as conn:
            for start in range(0, len(sop_instance_uids), 500):
                chunk = list(sop_instance_uids[start : start + 500])
                query = select(*_COLUMNS).select_from(_JOINED).where(instance.c.sop_instance_uid.in_(chunk))
                found += [dict(r) for r in conn.execute(query).mappings()]
        return found

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The rows of every instance of a study."""
        query = select(*_COLUMNS).select_from(_JOINED).where(study.c.study_instance_uid == study_instance_uid)
        with engines.read(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

"""``dicomhub study set-patient``: file a study that arrived under the wrong patient
under the right one (docs/orders.md, "Patient updates in the archive").

The stored objects stay as received; copies that leave the archive carry the
corrected Patient module and the old values in Original Attributes Sequence.
Works on the index directly, while the server runs or not; audited as the
operator at the command line.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.caller import Caller
from dicomhub.model.orders import PatientRef

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []

group("study", help="corrections to stored studies")


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "study set-patient",
    help="file a stored study under another patient (coerced on the way out)",
    shared=ARCHIVE,
    args=(
        arg("study", metavar="STUDY_UID"),
        arg("--patient-id", required=True),
        arg("--issuer", default="", help="Issuer of Patient ID"),
        arg("--patient-name", help="DICOM PN (default: the patient of record's, else the archive's)"),
        arg("--birth-date", help="YYYYMMDD (default as for the name)"),
        arg("--sex", choices=["", "M", "F", "O"], help="(default as for the name)"),
    ),
)
def _set_patient(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        done = archive.patients.set_patient(
            args.study,
            PatientRef(args.patient_id, args.issuer),
            Caller.cli(),
            patient_name=args.patient_name,
            patient_birth_date=args.birth_date,
            patient_sex=args.sex,
        )
    print(json.dumps({"study_instance_uid": done.study_instance_uid, **done.values()}, indent=2))
    return 0

"""Regenerate ``src/dicomhub/model/data/storage_sop_classes.json``.

Usage: ``python scripts/make_storage_sop_classes.py /work/shared/dicom-standard/sops.json``

The storage SOP classes of the standard, current and retired, as one table
(UID, name, retired), merged from three sources because none has them all:

* the innolitics/dicom-standard ``sops.json`` (PS3.4 and PS3.3, MIT licence):
  every current SOP class with a composite IOD, but no retired one;
* pydicom's UID dictionary (PS3.6 Table A-1, MIT licence): every registered
  UID with its name and whether it is retired, so also the retired storage
  classes (Ultrasound Image Storage (Retired), Standalone Overlay, ...) and
  the DICOS/DICONDE storage classes registered there;
* pynetdicom's list of storage SOP classes, which knows a few classes newer
  than either, so that dicomhub accepts at least what pynetdicom does.

A SOP class is a storage SOP class when it is stored with C-STORE: its PS3.6
name ends in "Storage" (possibly followed by " - For Presentation",
" - For Processing" or " - Trial"). Storage Commitment (a service, not a
storable object) and Media Storage Directory Storage (the DICOMDIR, which
exists on media only, PS3.10) are not.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydicom._uid_dict import UID_dictionary
from pynetdicom.sop_class import _STORAGE_CLASSES

OUT = Path(__file__).resolve().parent.parent / "src/dicomhub/model/data/storage_sop_classes.json"

# Not storage SOP classes although "Storage" is in their names.
_NOT_STORAGE = {
    "1.2.840.10008.1.3.10",  # Media Storage Directory Storage (DICOMDIR, media only)
    "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
    "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model (Retired)
}
_STORAGE_NAME = re.compile(r"Storage( - (For Presentation|For Processing|Trial))?$")
# pynetdicom 3.0.4 knows these (DICOM 2024 supplements), pydicom 3.0.2 does not yet.
_NEWER = {
    "1.2.840.10008.5.1.4.1.1.9.100.1": "Waveform Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.9.100.2": "Waveform Acquisition Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
}


def _key(uid: str) -> list[int]:
    return [int(part) for part in uid.split(".")]


def main(sops_json: str) -> None:
    table: dict[str, dict[str, object]] = {}
    for sop in json.loads(Path(sops_json).read_text()):
        uid = sop["id"]
        if uid not in _NOT_STORAGE:
            table[uid] = {"uid": uid, "name": sop["name"], "retired": False}
    for uid, (name, kind, _info, retired, _keyword) in UID_dictionary.items():
        name = name.removesuffix(" SOP Class")
        if kind != "SOP Class" or uid in _NOT_STORAGE or not _STORAGE_NAME.search(name):
            continue
        # PS3.6 names win: sops.json shortens a few (Macular Grid ... Report).
        table[uid] = {"uid": uid, "name": name, "retired": retired == "Retired"}
    for uid in _STORAGE_CLASSES.values():
        if uid not in table:
            if uid not in _NEWER:
                raise SystemExit(f"pynetdicom storage class {uid} has no name here: add it to _NEWER")
            table[uid] = {"uid": uid, "name": _NEWER[uid], "retired": False}
    rows = sorted(table.values(), key=lambda row: _key(str(row["uid"])))
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    retired = sum(1 for row in rows if row["retired"])
    print(f"{OUT}: {len(rows)} storage SOP classes ({retired} retired)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/dicom-standard/sops.json")
